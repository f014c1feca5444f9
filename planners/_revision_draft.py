"""What a language-model planner is shown and asked for when it may propose review revisions.

Pure planning, like ``_draft``: the agent makes the call. The model sees each indicator's measurements
(value, uncertainty, method, flags, failures) and, for each, the other tools that could measure it
independently; it may ask for some of those. Every proposal is planned by ``alternative_measurement`` and
held to ``validate_plan``: a model can choose among valid revisions, never make an invalid one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.core import Case, Evidence, Plan, PlannedIndicator, ToolCall
from dxgraph.criteria_kb import LoadedCriteria
from dxgraph.errors import PlanError
from dxgraph.planners._revise import alternative_measurement, measured_too, measuring_tools
from dxgraph.tools import ToolRegistry

REVISION_SYSTEM_PROMPT = """You review the evidence of a traced medical-image diagnosis before it is decided.
For each indicator you see its measurements and the other registered tools that could measure it
independently. Ask for another measurement only where it can change or firm up the decision: a failed
measurement (reason "fallback"), a tool that flagged its input as unlike its training data
("out_of_domain"), or a value whose uncertainty reaches a decision threshold ("second_opinion").
Thresholds are fixed data; you never change them. Answer with only a JSON object following this schema
(an empty list when nothing more is needed):
{schema}"""


class ProposedRevision(BaseModel):
    """One measurement the model asks for."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    indicator: str
    """Indicator id to measure again."""
    tool: str
    """The tool, among the indicator's options, that should measure it."""
    reason: Literal["fallback", "second_opinion", "out_of_domain"]
    """Why another measurement is needed."""
    why: str = Field(max_length=400)
    """One sentence, for the trace."""


class RevisionDraft(BaseModel):
    """The model's answer: the measurements it asks for (none is a valid answer)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    revisions: list[ProposedRevision] = Field(default_factory=list, max_length=8)
    """Requested measurements, most important first."""


Options = dict[tuple[str, str], tuple[str, ...]]
"""(criteria id, indicator) -> the measuring tools of the independent measurements that could be added."""


def revision_options(
    plan: Plan,
    case: Case,
    registry: ToolRegistry,
    criteria: list[LoadedCriteria],
    skip: set[tuple[str, str]],
    max_per_indicator: int = 3,
) -> Options:
    """For each indicator not in ``skip``, the independent measurements the registry could add."""
    docs = {c.document.id: c for c in criteria}
    options: Options = {}
    for cid, ind in dict.fromkeys((p.criteria_id, p.indicator) for p in plan.indicators):
        if (cid, ind) in skip or cid not in docs:
            continue
        tried = {t for m in plan.measurements(cid, ind) for t in measuring_tools(plan, m.step_id, registry)}
        found: list[str] = []
        while len(found) < max_per_indicator:
            alt = alternative_measurement(plan, case, registry, docs[cid], ind, tried)
            if alt is None:
                break
            steps, _ = alt
            new = measuring_tools(
                plan.model_copy(update={"steps": (*plan.steps, *steps)}), alt[1].step_id, registry
            )
            fresh = [t for t in new if t not in tried]
            if not fresh:
                break
            found.append(fresh[0])
            tried |= set(fresh)
        if found:
            options[(cid, ind)] = tuple(found)
    return options


def revision_prompt(plan: Plan, evidence: list[Evidence], failures: dict[str, str], options: Options) -> str:
    """The user message: every indicator's measurements or failures, and its options."""
    lines = ["Indicators (measurements; options for another, independent measurement):"]
    for (cid, ind), found in options.items():
        shown = []
        for e in evidence:
            if (e.criteria_id, e.indicator) != (cid, ind) or e.combined_from:
                continue
            sd = f" ± {e.uncertainty_sd:.3g}" if e.uncertainty_sd is not None else ""
            flags = f" flags {', '.join(e.quality_flags)}" if e.quality_flags else ""
            shown.append(f"{e.evidence_id} = {e.value}{sd} ({e.method or 'unknown'} method){flags}")
        for m in plan.measurements(cid, ind):
            if m.step_id in failures:
                shown.append(f"{m.step_id} failed: {failures[m.step_id]}")
        lines.append(f"- {ind} ({cid}): {'; '.join(shown) or 'no measurement'}; options: {', '.join(found)}")
    return "\n".join(lines)


def revision_schema(options: Options) -> dict[str, Any]:
    """The JSON schema of the answer, with indicators and tools narrowed to the options."""
    schema = RevisionDraft.model_json_schema()
    item = schema["$defs"]["ProposedRevision"]["properties"]
    item["indicator"]["enum"] = sorted({ind for _, ind in options})
    item["tool"]["enum"] = sorted({t for found in options.values() for t in found})
    return schema


def plan_proposal(
    proposal: ProposedRevision,
    options: Options,
    plan: Plan,
    case: Case,
    registry: ToolRegistry,
    criteria: list[LoadedCriteria],
) -> tuple[str, tuple[ToolCall, ...], PlannedIndicator]:
    """The criteria id, new steps and binding of a proposal, planned on ``plan`` as it stands (earlier
    accepted proposals included); PlanError when it is not one of the options or no longer plannable."""
    key = next((k for k in options if k[1] == proposal.indicator), None)
    if key is None:
        raise PlanError(f"{proposal.indicator} has no option for another measurement")
    if proposal.tool not in options[key]:
        raise PlanError(
            f"{proposal.tool} is not an option for {proposal.indicator}; the options are {', '.join(options[key])}"
        )
    cid, ind = key
    doc = next(c for c in criteria if c.document.id == cid)
    tried = {t for m in plan.measurements(cid, ind) for t in measuring_tools(plan, m.step_id, registry)}
    others = {t for t in options[key] if t != proposal.tool}
    alt = alternative_measurement(plan, case, registry, doc, ind, tried | others, prefer=(proposal.tool,))
    if alt is None:
        raise PlanError(f"{proposal.indicator} can no longer be measured with {proposal.tool}")
    return cid, alt[0], alt[1]


def proposal_measurements(
    steps: tuple[ToolCall, ...],
    registry: ToolRegistry,
    criteria: list[LoadedCriteria],
    cid: str,
    added: PlannedIndicator,
) -> tuple[PlannedIndicator, ...]:
    """The proposal's measurement, then the other indicators its new step measures for free."""
    doc = next(c for c in criteria if c.document.id == cid)
    return (added, *measured_too(steps, registry, doc, added))
