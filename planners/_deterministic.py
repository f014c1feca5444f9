"""The deterministic planner: from criteria indicators to a DAG of registered tools, by type."""

from __future__ import annotations

from dataclasses import dataclass, field

from dxgraph.core import (
    Binding,
    Case,
    CaseField,
    CaseImage,
    FixedValue,
    ImageInput,
    ImageRef,
    NotAssessable,
    Plan,
    PlannedIndicator,
    RegionOfInterest,
    StepOutput,
    ToolCall,
    image_selection,
)
from dxgraph.criteria_kb import Indicator, LoadedCriteria
from dxgraph.planners._validate import annotations_compatible
from dxgraph.tools import ToolRegistry, ToolSpec

VIEW_TOOL = "crop_zoom"
"""Tool planned on every region of interest the plan finds, to give the report and MLLM a view."""

CASE_FIELDS = ("laterality", "clinical_text", "case_id")


class _Unplannable(Exception):
    pass


@dataclass
class _Step:
    call_tool: ToolSpec
    inputs: dict[str, Binding]
    image_id: str
    serves: list[str] = field(default_factory=list)
    feeds: list[str] = field(default_factory=list)
    view_of: str | None = None


class _Builder:
    def __init__(self, case: Case, registry: ToolRegistry, prefer: tuple[str, ...] = ()) -> None:
        self.case = case
        self.registry = registry
        rank = {name: i for i, name in enumerate(prefer)}
        self.ordered = sorted(registry, key=lambda s: (rank.get(s.name, len(rank)), s.name))
        self.steps: dict[str, _Step] = {}
        self.memo: dict[tuple[str, str], str] = {}

    def pick_image(
        self, modality: str, spec: ToolSpec, selection: tuple[str | None, str] | None = None
    ) -> tuple[CaseImage, str | None]:
        """The case image a tool's image field gets: of this modality (or undeclared), dims, spacing,
        and the (sequence, timepoint) the field selects (default: what the tool's primary image field selects)."""
        sequence, timepoint = primary_selection(spec) if selection is None else selection
        usable = [
            im
            for im in self.case.images
            if im.dims in spec.dims
            and not (spec.requires_spacing and im.spacing_mm is None)
            and im.timepoint == timepoint
            and (sequence is None or im.sequence == sequence)
        ]
        fitting = [im for im in usable if im.modality == modality]
        undeclared = [im for im in usable if im.modality is None]
        plausible = [im for im in fitting if modality not in im.implausible]
        if plausible:
            return plausible[0], None
        plausible_undeclared = [im for im in undeclared if modality not in im.implausible]
        if plausible_undeclared:
            return plausible_undeclared[0], modality
        if fitting or undeclared:  # there is an image, but its pixels do not look like this modality
            im = (fitting or undeclared)[0]
            raise _Unplannable(
                f"image {im.image_id} does not look like a {modality} image: {im.implausible[modality]}"
            )
        have = ", ".join(_describe_image(im) for im in self.case.images)
        spacing = " with pixel spacing" if spec.requires_spacing else ""
        which = " ".join(w for w in ("prior" if timepoint == "prior" else "", sequence or "") if w)
        raise _Unplannable(
            f"the case has no {which + ' ' if which else ''}{modality} image in {'/'.join(spec.dims)}{spacing}"
            f" ({have})"
        )

    def measure(self, ind: Indicator) -> str:
        candidates = [
            s
            for s in self.ordered
            if ind.quantity in s.output_model.model_fields and ind.modality in s.modalities
        ]
        if not candidates:
            raise _Unplannable(f"no registered tool measures {ind.quantity!r} on {ind.modality} images")
        reasons = []
        for spec in candidates:
            try:
                image, assumed = self.pick_image(ind.modality, spec)
                return self.resolve(spec, image, assumed, stack=())
            except _Unplannable as e:
                reasons.append(f"{spec.name}: {e}")
        raise _Unplannable("; ".join(reasons))

    def resolve(self, spec: ToolSpec, image: CaseImage, assumed: str | None, stack: tuple[str, ...]) -> str:
        key = (spec.name, image.image_id)
        if key in self.memo:
            return self.memo[key]
        inputs: dict[str, Binding] = {}
        primary = primary_image_field(spec)
        for name, info in spec.input_model.model_fields.items():
            if annotations_compatible(ImageRef, info.annotation):
                if name == primary:
                    inputs[name] = ImageInput(image_id=image.image_id, assumed_modality=assumed)
                    continue
                try:
                    other, other_assumed = self.pick_image(
                        image.modality or assumed or "", spec, image_selection(info)
                    )
                except _Unplannable:
                    if info.is_required():
                        raise
                    continue
                inputs[name] = ImageInput(image_id=other.image_id, assumed_modality=other_assumed)
            elif name in CASE_FIELDS:
                inputs[name] = CaseField(field=name)
            else:
                step_id = self.provider(name, info.annotation, image, assumed, (*stack, spec.name))
                if step_id is not None:
                    inputs[name] = StepOutput(step_id=step_id, field=name)
                    self.steps[step_id].feeds.append(spec.name)
                elif info.is_required():
                    raise _Unplannable(f"no registered tool provides the input {name!r} of {spec.name}")
        step_id = f"s{len(self.steps) + 1}"
        self.steps[step_id] = _Step(spec, inputs, image.image_id)
        self.memo[key] = step_id
        return step_id

    def provider(
        self, name: str, annotation: object, image: CaseImage, assumed: str | None, stack: tuple[str, ...]
    ) -> str | None:
        modality = image.modality or assumed
        for spec in self.ordered:
            produced = spec.output_model.model_fields.get(name)
            if (
                produced is None
                or spec.name == VIEW_TOOL  # views are added by add_views, never as providers
                or spec.name in stack
                or modality not in spec.modalities
                or not annotations_compatible(produced.annotation, annotation)
            ):
                continue
            try:
                return self.resolve(spec, image, assumed, stack)
            except _Unplannable:
                continue
        return None

    def free_step_id(self) -> str:
        """The first ``s<n>`` not yet taken (``s<len+1>`` when ids are sequential)."""
        n = len(self.steps) + 1
        while f"s{n}" in self.steps:
            n += 1
        return f"s{n}"

    def add_views(self, window_factor: float) -> None:
        if VIEW_TOOL not in self.registry:
            return
        view = self.registry.get(VIEW_TOOL)
        viewed = {
            b.step_id
            for s in self.steps.values()
            if s.call_tool.name == VIEW_TOOL
            for b in s.inputs.values()
            if isinstance(b, StepOutput)
        }
        for step_id, step in list(self.steps.items()):
            image = next((b for b in step.inputs.values() if isinstance(b, ImageInput)), None)
            if step.call_tool.name == VIEW_TOOL or step_id in viewed or image is None:
                continue
            for name, info in step.call_tool.output_model.model_fields.items():
                if info.annotation is not RegionOfInterest:
                    continue
                new_id = self.free_step_id()
                inputs: dict[str, Binding] = {
                    "image": image,
                    "roi": StepOutput(step_id=step_id, field=name),
                    "window_factor": FixedValue(value=window_factor),
                }
                self.steps[new_id] = _Step(view, inputs, step.image_id, view_of=f"{step_id}.{name}")


def primary_image_field(spec: ToolSpec) -> str | None:
    """The image input the planner picks first (the first required one, else the first)."""
    fields = [
        (n, f)
        for n, f in spec.input_model.model_fields.items()
        if annotations_compatible(ImageRef, f.annotation)
    ]
    required = [n for n, f in fields if f.is_required()]
    return required[0] if required else (fields[0][0] if fields else None)


def primary_selection(spec: ToolSpec) -> tuple[str | None, str]:
    """The (sequence, timepoint) the tool's primary image field selects."""
    name = primary_image_field(spec)
    return image_selection(spec.input_model.model_fields[name]) if name else (None, "current")


def _describe_image(im: CaseImage) -> str:
    extra = " ".join(x for x in (im.sequence, "prior" if im.timepoint == "prior" else None) if x)
    return f"{im.image_id}: {im.modality or 'unspecified'}{' ' + extra if extra else ''} {im.dims}"


def plan_from_criteria(
    criteria: list[LoadedCriteria], case: Case, registry: ToolRegistry, prefer: tuple[str, ...] = ()
) -> Plan:
    """Plan the tools that measure every indicator of the criteria on this case.

    For each indicator the planner picks a registered tool whose output has a field named like the
    indicator's quantity and that accepts the indicator's modality, then binds each of its inputs:
    images to the case image of that modality, ``laterality``/``clinical_text`` to the case, and
    anything else to the same-named, type-compatible output of another tool, recursively.
    Where several tools fit, those named in ``prefer`` come first, in that order, then the rest by name.
    Indicators that cannot be planned are listed as not assessable, with the reason.
    """
    b = _Builder(case, registry, prefer)
    planned: list[PlannedIndicator] = []
    missing: list[NotAssessable] = []
    for c in criteria:
        doc = c.document
        for ind in doc.indicators:
            try:
                step_id = b.measure(ind)
            except _Unplannable as e:
                missing.append(NotAssessable(criteria_id=doc.id, indicator=ind.id, reason=str(e)))
                continue
            b.steps[step_id].serves.append(ind.id)
            planned.append(
                PlannedIndicator(criteria_id=doc.id, indicator=ind.id, step_id=step_id, quantity=ind.quantity)
            )
        b.add_views(doc.crop_window_factor)
    return Plan(
        planner="deterministic",
        steps=tuple(_tool_call(step_id, s) for step_id, s in b.steps.items()),
        indicators=tuple(planned),
        not_assessable=tuple(missing),
    )


def _tool_call(step_id: str, s: _Step) -> ToolCall:
    if s.view_of:
        purpose = f"zoomed view of {s.view_of} for the report and the aggregator"
    elif s.serves:
        purpose = "measures " + ", ".join(s.serves)
    else:
        purpose = "provides inputs to " + ", ".join(dict.fromkeys(s.feeds))
    return ToolCall(
        step_id=step_id,
        tool=s.call_tool.name,
        tool_version=s.call_tool.version,
        inputs=s.inputs,
        purpose=purpose,
    )


def with_views(plan: Plan, case: Case, registry: ToolRegistry, window_factor: float) -> Plan:
    """The plan plus a zoomed view (``crop_zoom``) of every region of interest its steps output and no
    step views yet: the same views the deterministic planner adds, for plans drafted elsewhere."""
    b = _Builder(case, registry)
    for step in plan.steps:
        image = next((x for x in step.inputs.values() if isinstance(x, ImageInput)), None)
        b.steps[step.step_id] = _Step(
            registry.get(step.tool), dict(step.inputs), image.image_id if image else ""
        )
    b.add_views(window_factor)
    added = [
        _tool_call(i, s) for i, s in b.steps.items() if s.view_of and i not in {x.step_id for x in plan.steps}
    ]
    return plan.model_copy(update={"steps": (*plan.steps, *added)})
