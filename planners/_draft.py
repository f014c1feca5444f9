"""The LLM planner's pure half: what the model is shown and asked for, and how its draft becomes a Plan.

A language model drafts the plan DAG from the criteria and the tool descriptions (the agent makes the
call). The draft is held to everything the deterministic plan is held to (``validate_plan``), and more:
it must account for every indicator, measure each with the quantity its criteria name, and may not
declare not assessable an indicator that the registry can measure on this case.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.core import (
    Binding,
    Case,
    ImageRef,
    NotAssessable,
    Plan,
    PlannedIndicator,
    ToolCall,
    image_selection,
)
from dxgraph.criteria_kb import LoadedCriteria
from dxgraph.errors import PlanError
from dxgraph.planners._validate import validate_plan
from dxgraph.tools import ToolRegistry, ToolSpec

PLANNER_NAME = "llm"
"""``Plan.planner`` of an accepted draft."""


class DraftStep(BaseModel):
    """One tool call of a drafted plan."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    step_id: str = Field(pattern=r"^s[0-9]+$")
    """Unique id such as ``s1``; steps run in list order."""
    tool: str
    """Registered tool name."""
    inputs: dict[str, Binding]
    """Tool input name -> binding (image, earlier step's output, case field, or fixed value)."""
    purpose: str
    """Why the step is in the plan."""


class PlanDraft(BaseModel):
    """What the model must answer: steps, and for every indicator where its value comes from or why not."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    steps: list[DraftStep]
    """Tool calls in execution order."""
    indicators: list[PlannedIndicator]
    """Indicator -> the step and output field that measure it."""
    not_assessable: list[NotAssessable] = []
    """Indicators no registered tool can measure on this case, with the reason."""


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split())


def _field_type(info: Any) -> str:
    ann = info.annotation
    name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
    return "image" if ann is ImageRef or "ImageRef" in str(ann) else name


def describe_tools(registry: ToolRegistry, modalities: set[str]) -> str:
    """The registry as the planner sees it: each tool's description, inputs and outputs with types."""
    lines = []
    spec: ToolSpec
    for spec in registry:
        if not modalities & set(spec.modalities):
            continue
        ins = ", ".join(
            f"{n}: {_field_type(f)}{_wants(f)}{'' if f.is_required() else ' (optional)'}"
            for n, f in spec.input_model.model_fields.items()
        )
        outs = ", ".join(f"{n}: {_field_type(f)}" for n, f in spec.output_model.model_fields.items())
        lines.append(
            f"- {spec.name} v{spec.version} [{'/'.join(spec.modalities)}; {'/'.join(spec.dims)}]: "
            f"{_first_paragraph(spec.description)}\n  inputs: {ins}\n  outputs: {outs}"
        )
    return "\n".join(lines)


SYSTEM_PROMPT = """You are the planner of dxgraph, a traced medical-image diagnosis workflow.
Draft the plan: the tool calls that measure every indicator of the criteria on this case's images.
Bind each tool input to one of: {{"kind": "image", "image_id": ID}} (a case image), {{"kind": "step",
"step_id": ID, "field": NAME}} (an output of an EARLIER step, same type), {{"kind": "case", "field":
"laterality"|"clinical_text"|"case_id"}}, or {{"kind": "value", "value": V}}. Bind every required input.
For each indicator give the step and the output field named exactly as its quantity; list an indicator as
not_assessable (with the reason) only when no listed tool can measure it on these images.
Answer with one JSON object and nothing else, following this JSON schema:
{schema}"""


def _wants(f: Any) -> str:
    """How an image input selects its image, for the prompt (`` = the t1ce image of the prior study``)."""
    sequence, timepoint = image_selection(f)
    if sequence is None and timepoint == "current":
        return ""
    return " = the " + " ".join(w for w in (sequence, "image of the", timepoint, "study") if w)


def case_modalities(criteria: list[LoadedCriteria], case: Case) -> set[str]:
    """The case's declared modalities, else those the criteria measure on."""
    return {im.modality for im in case.images if im.modality} or {
        ind.modality for c in criteria for ind in c.document.indicators
    }


def case_prompt(criteria: list[LoadedCriteria], case: Case, registry: ToolRegistry) -> str:
    """The user message: images, indicators, tools."""
    modalities = case_modalities(criteria, case)
    images = "\n".join(
        f"- {im.image_id}: {im.modality or 'modality not declared'}, {im.dims}, shape {list(im.shape)}"
        + (f", sequence {im.sequence}" if im.sequence else "")
        + (", PRIOR study" if im.timepoint == "prior" else "")
        + (f", spacing {list(im.spacing_mm)} mm" if im.spacing_mm else ", no pixel spacing")
        for im in case.images
    )
    indicators = "\n".join(
        f"- criteria_id {c.document.id}, indicator {ind.id}: quantity {ind.quantity} ({ind.name}, "
        f"unit {ind.unit}) on {ind.modality} images"
        for c in criteria
        for ind in c.document.indicators
    )
    return (
        f"Question: {case.question}\nCase images:\n{images}\nIndicators to measure:\n{indicators}\n"
        f"Tools:\n{describe_tools(registry, modalities)}\nReply with the JSON object only."
    )


def draft_schema(criteria: list[LoadedCriteria], case: Case, tools: list[str]) -> dict[str, Any]:
    """PlanDraft's JSON schema narrowed to this case: its tools, images, criteria, indicators and quantities.

    Constrained decoders then cannot name what does not exist; binding kinds are made required so
    each binding carries its discriminator.
    """
    schema = PlanDraft.model_json_schema()
    defs = schema["$defs"]
    indicators = [(c.document.id, ind) for c in criteria for ind in c.document.indicators]
    criteria_ids = sorted({cid for cid, _ in indicators})
    defs["DraftStep"]["properties"]["tool"] = {"type": "string", "enum": tools}
    defs["ImageInput"]["properties"]["image_id"] = {
        "type": "string",
        "enum": [im.image_id for im in case.images],
    }
    for name in ("PlannedIndicator", "NotAssessable"):
        props = defs[name]["properties"]
        props["criteria_id"] = {"type": "string", "enum": criteria_ids}
        props["indicator"] = {"type": "string", "enum": sorted({ind.id for _, ind in indicators})}
    defs["PlannedIndicator"]["properties"]["quantity"] = {
        "type": "string",
        "enum": sorted({ind.quantity for _, ind in indicators}),
    }
    for name in ("ImageInput", "StepOutput", "CaseField", "FixedValue"):
        defs[name]["required"] = ["kind", *defs[name].get("required", [])]
    return schema


def plan_from_draft(
    draft: PlanDraft,
    criteria: list[LoadedCriteria],
    case: Case,
    registry: ToolRegistry,
    measurable: set[tuple[str, str]],
) -> Plan:
    """The draft as a validated Plan; PlanError with a model-readable reason when it falls short.

    ``measurable`` holds the (criteria id, indicator) pairs the deterministic planner can measure on
    this case: the draft may not call those not assessable.
    """
    wanted = {(c.document.id, ind.id): ind.quantity for c in criteria for ind in c.document.indicators}
    for s in draft.steps:
        if s.tool not in registry:
            raise PlanError(f"step {s.step_id}: no tool named {s.tool!r}; use a listed tool")
    plan = Plan(
        planner=PLANNER_NAME,
        steps=tuple(
            ToolCall(
                step_id=s.step_id,
                tool=s.tool,
                tool_version=registry.get(s.tool).version,
                inputs=s.inputs,
                purpose=s.purpose,
            )
            for s in draft.steps
        ),
        indicators=tuple(draft.indicators),
        not_assessable=tuple(draft.not_assessable),
    )
    validate_plan(plan, registry, case)
    covered: list[tuple[str, str]] = []
    for p in plan.indicators:
        key = (p.criteria_id, p.indicator)
        if key not in wanted:
            raise PlanError(f"indicator {p.criteria_id}/{p.indicator} is not in the criteria")
        if p.quantity != wanted[key]:
            raise PlanError(
                f"indicator {p.indicator} is measured by quantity {wanted[key]!r}, not {p.quantity!r}"
            )
        covered.append(key)
    for n in plan.not_assessable:
        key = (n.criteria_id, n.indicator)
        if key in measurable:
            raise PlanError(f"indicator {n.indicator} can be measured on this case; plan a tool for it")
        covered.append(key)
    missing = sorted(set(wanted) - set(covered))
    if missing:
        raise PlanError("indicators not accounted for: " + ", ".join(f"{c}/{i}" for c, i in missing))
    twice = sorted({k for k in covered if covered.count(k) > 1})
    if twice:
        raise PlanError("indicators accounted for twice: " + ", ".join(f"{c}/{i}" for c, i in twice))
    return plan
