"""The review step: after each dispatch, read the evidence against the criteria and ask for more.

For every planned indicator it looks at what the tools found and, where another registered tool can
measure the same quantity on the case, adds a measurement:

- ``fallback``: every measurement failed, or the image makes the value unreliable;
- ``out_of_domain``: the tool that measured it says its input is unlike its training data;
- ``second_opinion``: the value, within ``SECOND_OPINION_Z`` standard uncertainties (its tools'
  measured error), could read on either side of a decision threshold, so the label could flip, and the
  indicator was measured by one method only.

The new measurement leaves out every classical or learned tool already tried for that indicator, so it
is independent. Revisions go through the plan validator; the graph dispatches the new steps and reviews
again, at most ``MAX_REVIEW_ROUNDS`` times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dxgraph.agent._dispatch import StepResult, failure_reason
from dxgraph.agent._measurements import numeric, reliable, standard_uncertainty
from dxgraph.agent._rules import label_of, quality_penalty
from dxgraph.core import Case, Evidence, Plan, PlanRevision, RevisionReason
from dxgraph.criteria_kb import BandsRule, CriteriaDocument, LoadedCriteria
from dxgraph.imaging import flagged_quality
from dxgraph.planners import alternative_measurement, measured_too, measuring_tools, validate_plan
from dxgraph.tools import OUT_OF_DOMAIN_FLAG, ToolRegistry

MAX_REVIEW_ROUNDS = 2
"""Most review rounds a run takes (each may add measurements and dispatch them)."""
SECOND_OPINION_Z = 1.645
"""A value is on a threshold when moving it this many standard uncertainties (its tools' measured
error, widened by image quality) either way changes the label: a 1-in-20 chance each side."""


def review(
    plan: Plan,
    case: Case,
    results: dict[str, StepResult],
    evidence: Sequence[Evidence],
    criteria: Sequence[LoadedCriteria],
    registry: ToolRegistry,
    round_: int,
    prefer: tuple[str, ...] = (),
) -> tuple[Plan, tuple[PlanRevision, ...]]:
    """The plan with the measurements this round adds, and those revisions (none: the plan unchanged)."""
    docs = {c.document.id: c for c in criteria}
    main_doc = criteria[0].document.id if criteria else None
    revisions: list[PlanRevision] = []
    revised = plan
    for cid, ind in dict.fromkeys((p.criteria_id, p.indicator) for p in plan.indicators):
        if len(revised.measurements(cid, ind)) > len(plan.measurements(cid, ind)):
            continue  # measured again already, by a step added for another indicator this round
        finding = _finding(plan, results, evidence, docs[cid].document, ind, registry, cid == main_doc)
        if finding is None:
            continue
        reason, trigger, detail = finding
        tried = {
            t for m in revised.measurements(cid, ind) for t in measuring_tools(revised, m.step_id, registry)
        }
        alternative = alternative_measurement(revised, case, registry, docs[cid], ind, tried, prefer)
        if alternative is None:
            continue
        steps, measurement = alternative
        measurements = (measurement, *measured_too(steps, registry, docs[cid], measurement))
        revision = PlanRevision(
            round=round_,
            reason=reason,
            criteria_id=cid,
            indicator=ind,
            trigger_step_id=trigger,
            detail=detail,
            added_steps=tuple(s.step_id for s in steps),
            measurements=measurements,
        )
        revised = revised.with_revision(steps, revision)
        revisions.append(revision)
    if revisions:
        validate_plan(revised, registry, case)
    return revised, tuple(revisions)


def _finding(
    plan: Plan,
    results: dict[str, StepResult],
    evidence: Sequence[Evidence],
    doc: CriteriaDocument,
    ind: str,
    registry: ToolRegistry,
    deciding: bool,
) -> tuple[RevisionReason, str, str] | None:
    """What calls for another measurement of one indicator: (reason, trigger step, detail), or None."""
    measurements = plan.measurements(doc.id, ind)
    mine = [e for e in evidence if (e.criteria_id, e.indicator) == (doc.id, ind)]
    decisive = next((e for e in mine if e.superseded_by is None), None)
    if decisive is None:
        for m in measurements:
            reason = failure_reason(plan, results, m.step_id)
            if reason is not None:
                chain = [*sorted(plan.upstream(m.step_id)), m.step_id]
                root = next((s for s in chain if results[s].status == "failed"), m.step_id)
                return "fallback", root, reason
        return None  # it ran but gave no value (a quantity the case lacks): nothing to fall back from
    if OUT_OF_DOMAIN_FLAG in decisive.quality_flags:
        return (
            "out_of_domain",
            decisive.step_id,
            f"{decisive.tool} flagged its input as unlike its training data ({OUT_OF_DOMAIN_FLAG})",
        )
    if not reliable(decisive, quality_penalty(flagged_quality(decisive.quality_flags))):
        shown = ", ".join(f for f in decisive.quality_flags if f.rsplit("_", 1)[-1] in ("moderate", "severe"))
        return "fallback", decisive.step_id, f"the image is too degraded ({shown}) for {decisive.tool}"
    independent = {e.method for e in mine if not e.combined_from}
    if deciding and len(independent) == 1 and numeric(decisive.value):
        span = _flip_span(doc, ind, decisive, [e for e in evidence if e.criteria_id == doc.id])
        if span is not None:
            return "second_opinion", decisive.step_id, span
    return None


def _flip_span(doc: CriteriaDocument, ind: str, ev: Evidence, evidence: Sequence[Evidence]) -> str | None:
    """Why the value's uncertainty straddles a threshold that changes the label, or None when it does not."""
    rule = doc.indicator(ind).rule
    sd = standard_uncertainty(ev, doc)
    factor = quality_penalty(flagged_quality(ev.quality_flags)) or 1.0
    if not isinstance(rule, BandsRule) or sd is None or not math.isfinite(float(ev.value)):
        return None
    values: dict[str, float | bool | str | None] = {
        e.indicator: e.value for e in evidence if e.superseded_by is None
    }
    try:
        now = label_of(doc, values)
        span = SECOND_OPINION_Z * sd * factor
        ends = [label_of(doc, {**values, ind: float(ev.value) + d}) for d in (-span, span)]
    except (TypeError, ValueError):
        return None
    if all(e == now for e in ends):
        return None
    return (
        f"{ev.name} {float(ev.value):.3g} ± {span:.2g} ({SECOND_OPINION_Z:g} × its measured uncertainty"
        f" {sd * factor:.2g}) reads on both sides of a decision threshold: the label ({now}) could flip"
    )
