"""The Plan: a typed DAG of tool calls, and its validation against the registry and the case."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from dxgraph.agent.case import Case
from dxgraph.errors import PlanError
from dxgraph.tools._registry import ToolRegistry, ToolSpec
from dxgraph.tools._types import ImageRef, image_selection


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ImageInput(_Frozen):
    """Bind a tool input to one of the case's images."""

    kind: Literal["image"] = "image"
    """Discriminator."""
    image_id: str
    """The case image."""
    assumed_modality: str | None = None
    """Set when the image's modality was not declared and the plan assumes this one."""


class StepOutput(_Frozen):
    """Bind a tool input to an output field of an earlier step."""

    kind: Literal["step"] = "step"
    """Discriminator."""
    step_id: str
    """The earlier step."""
    field: str
    """Its output field."""


class CaseField(_Frozen):
    """Bind a tool input to a field of the case, such as its laterality."""

    kind: Literal["case"] = "case"
    """Discriminator."""
    field: Literal["laterality", "clinical_text", "case_id"]
    """The case field."""


class FixedValue(_Frozen):
    """Bind a tool input to a fixed value."""

    kind: Literal["value"] = "value"
    """Discriminator."""
    value: JsonValue
    """The value."""


Binding = Annotated[ImageInput | StepOutput | CaseField | FixedValue, Field(discriminator="kind")]


class ToolCall(_Frozen):
    """One step of a plan: a tool, how each of its inputs is bound, and what it is for."""

    step_id: str
    """Unique id in the plan, such as ``s1``."""
    tool: str
    """Registered tool name."""
    tool_version: str
    """Tool version the plan was made for."""
    inputs: dict[str, Binding]
    """Input field name -> where its value comes from; unbound fields take their defaults."""
    purpose: str
    """Why the step is in the plan."""


class PlannedIndicator(_Frozen):
    """Which step's output measures an indicator."""

    criteria_id: str
    """Criteria document."""
    indicator: str
    """Indicator id."""
    step_id: str
    """Step whose output holds the value."""
    quantity: str
    """Output field holding the value."""


class NotAssessable(_Frozen):
    """An indicator the plan cannot measure, and why."""

    criteria_id: str
    """Criteria document."""
    indicator: str
    """Indicator id."""
    reason: str
    """Why it cannot be measured for this case."""


class Plan(_Frozen):
    """A DAG of tool calls in execution order, with the indicators it measures and those it cannot."""

    planner: str
    """Who made it: ``deterministic`` or an LLM planner."""
    steps: tuple[ToolCall, ...]
    """Tool calls; each depends only on earlier ones."""
    indicators: tuple[PlannedIndicator, ...]
    """Measured indicators."""
    not_assessable: tuple[NotAssessable, ...] = ()
    """Indicators that cannot be measured, with reasons."""

    def step(self, step_id: str) -> ToolCall:
        """The step with this id."""
        for s in self.steps:
            if s.step_id == step_id:
                return s
        raise KeyError(step_id)

    def upstream(self, step_id: str) -> set[str]:
        """Every step the given step depends on, transitively."""
        seen: set[str] = set()
        todo = [step_id]
        while todo:
            for b in self.step(todo.pop()).inputs.values():
                if isinstance(b, StepOutput) and b.step_id not in seen:
                    seen.add(b.step_id)
                    todo.append(b.step_id)
        return seen


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def annotations_compatible(produced: Any, wanted: Any) -> bool:
    """Whether an output field's annotation can feed an input field's annotation."""
    produced, wanted_core = _strip_optional(produced), _strip_optional(wanted)
    if produced == wanted_core or produced == wanted:
        return True
    if isinstance(produced, type) and isinstance(wanted_core, type):
        return issubclass(produced, wanted_core)
    return False


def validate_plan(plan: Plan, registry: ToolRegistry, case: Case) -> None:
    """Raise PlanError naming the step and the reason when the plan cannot run on this case.

    Checks: known tools, unique step ids, bindings to known images and to *earlier* steps only
    (so no cycles), type-compatible step-to-step bindings, required inputs bound, and the image's
    modality and dimensionality accepted by the tool, and spacing present where the tool needs it.
    """
    images = {im.image_id: im for im in case.images}
    done: dict[str, Any] = {}
    for step in plan.steps:
        where = f"step {step.step_id} ({step.tool})"
        if step.step_id in done:
            raise PlanError(f"{where}: duplicate step id")
        if step.tool not in registry:
            raise PlanError(f"{where}: no tool named {step.tool!r} is registered")
        spec = registry.get(step.tool)
        fields = spec.input_model.model_fields
        for name, binding in step.inputs.items():
            if name not in fields:
                raise PlanError(f"{where}: the tool has no input {name!r}")
            wanted = fields[name].annotation
            if isinstance(binding, ImageInput):
                _check_image(where, spec, binding, images)
                _check_selection(where, name, fields[name], images[binding.image_id])
                if not annotations_compatible(ImageRef, wanted):
                    raise PlanError(f"{where}: input {name!r} is not an image input")
            elif isinstance(binding, StepOutput):
                if binding.step_id not in done:
                    raise PlanError(
                        f"{where}: input {name!r} reads step {binding.step_id}, which does not run before it"
                        " (unknown step or a cycle)"
                    )
                produced = done[binding.step_id].output_model.model_fields.get(binding.field)
                if produced is None:
                    raise PlanError(f"{where}: step {binding.step_id} has no output {binding.field!r}")
                if not annotations_compatible(produced.annotation, wanted):
                    raise PlanError(
                        f"{where}: input {name!r} wants {_type_name(wanted)} but step {binding.step_id}"
                        f".{binding.field} gives {_type_name(produced.annotation)}"
                    )
        missing = [n for n, f in fields.items() if f.is_required() and n not in step.inputs]
        if missing:
            raise PlanError(f"{where}: required inputs not bound: {', '.join(missing)}")
        done[step.step_id] = spec
    for ind in plan.indicators:
        if ind.step_id not in done:
            raise PlanError(f"indicator {ind.indicator}: step {ind.step_id} is not in the plan")
        if ind.quantity not in done[ind.step_id].output_model.model_fields:
            raise PlanError(f"indicator {ind.indicator}: step {ind.step_id} has no output {ind.quantity!r}")


def _check_image(where: str, spec: ToolSpec, binding: ImageInput, images: dict[str, Any]) -> None:
    tool, modalities, dims = spec.name, spec.modalities, spec.dims
    im = images.get(binding.image_id)
    if im is None:
        raise PlanError(f"{where}: the case has no image {binding.image_id!r}")
    modality = im.modality or binding.assumed_modality
    if modality is None:
        raise PlanError(f"{where}: image {im.image_id} has no modality and the plan assumes none")
    if im.modality is not None and binding.assumed_modality not in (None, im.modality):
        raise PlanError(f"{where}: image {im.image_id} is {im.modality}, not {binding.assumed_modality}")
    if modality not in modalities:
        raise PlanError(
            f"{where}: {tool} accepts {', '.join(modalities)} images; image {im.image_id} is {modality}"
        )
    if im.dims not in dims:
        raise PlanError(f"{where}: {tool} accepts {', '.join(dims)} images; image {im.image_id} is {im.dims}")
    if spec.requires_spacing and im.spacing_mm is None:
        raise PlanError(
            f"{where}: {tool} measures in physical units and needs pixel spacing; image {im.image_id}"
            " has none (give a DICOM or NIfTI file, or declare the spacing)"
        )
    if modality in im.implausible:
        raise PlanError(
            f"{where}: image {im.image_id} does not look like a {modality} image: {im.implausible[modality]}"
        )


def _check_selection(where: str, name: str, info: Any, image: Any) -> None:
    sequence, timepoint = image_selection(info)
    if image.timepoint != timepoint:
        raise PlanError(
            f"{where}: input {name!r} wants the {timepoint} study; image {image.image_id} is {image.timepoint}"
        )
    if sequence is not None and image.sequence != sequence:
        raise PlanError(
            f"{where}: input {name!r} wants a {sequence} image; image {image.image_id} is {image.sequence or 'unspecified'}"
        )


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)
