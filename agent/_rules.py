"""The deterministic ``rules`` aggregator: threshold rules and the decision rule, evaluated as data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeGuard

import numpy as np

from dxgraph.agent._aggregate import EvidenceBundle
from dxgraph.core import CriterionVerdict, Diagnosis, IndicatorVerdict, QualityGrade, QualityProblem
from dxgraph.criteria_kb import (
    AllOf,
    AnyOf,
    BandsRule,
    CategoryIs,
    Condition,
    CriteriaDocument,
    Finding,
    FindingIs,
    Reading,
    evaluate,
)
from dxgraph.imaging import flagged_quality, worst_grade

DECISIVE_DISAGREEMENT_FLAG = "methods_disagree_decisive"
"""Flag of disagreeing measurements where the label depends on which one is right: not assessable."""

CONFIDENCE_DRAWS = 4000
"""Monte Carlo draws used to estimate how robust a label is to measurement error."""

QUALITY_UNCERTAINTY_FACTOR: dict[QualityProblem, dict[QualityGrade, float]] = {
    "noise": {"mild": 1.25, "moderate": 2.0},
    "low_contrast": {"mild": 1.25, "moderate": 2.0},
    "jpeg_artefacts": {"mild": 1.5},
    "blur": {"mild": 3.0},
}
"""How much a flagged image-quality problem widens an indicator's uncertainty in the confidence
simulation (several problems: the largest). A problem at a grade missing here makes the indicator
unreliable, so not assessable: every severe grade, and moderate blur or JPEG blocking, under which
the phantoms' labels were right in 7 of 12 and 19 of 30 cases (fewer than answering "no" to all:
about 3 in 4), with vCDR errors of 0.175 and 0.105.
Set from the vCDR error of the classical fundus tools on 30 degraded phantoms (seed 0) against the
clean error (mean absolute 0.038; noise 0.041 / 0.068, JPEG 0.056 / 0.105, blur 0.078 at mild /
moderate; contrast leaves it unchanged), with ``bench/degradation_calibration.py``; the tests check
it on other phantoms (seed 3)."""


def quality_penalty(quality: dict[QualityProblem, QualityGrade]) -> float | None:
    """The uncertainty factor for flagged image-quality problems; None when one makes the value unreliable."""
    factors = [QUALITY_UNCERTAINTY_FACTOR[p].get(g) for p, g in quality.items()]
    if any(f is None for f in factors):
        return None
    return max((f for f in factors if f is not None), default=1.0)


def indicator_verdicts(doc: CriteriaDocument, bundle: EvidenceBundle) -> list[IndicatorVerdict]:
    """Each indicator of the document read against its threshold rule."""
    out = []
    for ind in doc.indicators:
        ev = next(
            (
                e
                for e in bundle.evidence
                if e.criteria_id == doc.id and e.indicator == ind.id and e.superseded_by is None
            ),
            None,
        )
        common = dict(indicator=ind.id, name=ind.name, unit=ind.unit, rule=ind.rule.describe())
        if ev is None:
            reason = bundle.missing.get((doc.id, ind.id), "no evidence was produced")
            out.append(IndicatorVerdict(finding="not_assessable", reason=reason, **common))
            continue
        if DECISIVE_DISAGREEMENT_FLAG in ev.quality_flags:
            parts = [e for e in bundle.evidence if e.evidence_id in ev.combined_from]
            shown = " vs ".join(f"{e.tool} {_fmt(e.value)} [{e.evidence_id}]" for e in parts)
            reason = (
                f"independent methods disagree beyond their measured errors ({shown}) and the label depends"
                " on which one is right"
            )
            out.append(
                IndicatorVerdict(
                    finding="not_assessable", reason=reason, evidence_ids=ev.combined_from, **common
                )
            )
            continue
        if isinstance(ev.value, float) and not math.isfinite(ev.value):
            reason = f"{ev.tool} returned a non-finite value ({ev.value}) for {ind.name}"
            out.append(IndicatorVerdict(finding="not_assessable", reason=reason, **common))
            continue
        quality = flagged_quality(ev.quality_flags)
        grade = worst_grade(quality)
        factor = quality_penalty(quality)
        if factor is None:
            unreliable = [
                f"{g} {p.replace('_', ' ')}"
                for p, g in quality.items()
                if g not in QUALITY_UNCERTAINTY_FACTOR[p]
            ]
            reason = (
                f"the image is too degraded ({', '.join(unreliable)}) for {ev.tool}'s {ind.name} of "
                f"{_fmt(ev.value)} to be relied on"
            )
            out.append(
                IndicatorVerdict(finding="not_assessable", reason=reason, quality_grade=grade, **common)
            )
            continue
        try:
            reading = ind.rule.read(ev.value)
        except (TypeError, ValueError) as e:
            reason = f"the measured value {ev.value!r} cannot be read by the rule ({e})"
            out.append(IndicatorVerdict(finding="not_assessable", reason=reason, **common))
            continue
        out.append(
            IndicatorVerdict(
                finding=reading.finding,
                category=reading.category,
                value=ev.value,
                evidence_ids=(ev.evidence_id,),
                quality_grade=grade,
                uncertainty_factor=factor if _numeric(ev.value) else 1.0,
                uncertainty_sd=_uncertainty_sd(ind.rule, ev.uncertainty_sd) if _numeric(ev.value) else None,
                **common,
            )
        )
    return out


def _uncertainty_sd(rule: object, measured_sd: float | None) -> float | None:
    """The value's standard uncertainty: the tools' measured one, else the rule's stated one."""
    if measured_sd is not None:
        return measured_sd
    return rule.uncertainty if isinstance(rule, BandsRule) else None


def _numeric(value: object) -> TypeGuard[float]:
    """Whether a measured value is a number (its uncertainty can widen), not a yes/no or a category."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _readings(verdicts: list[IndicatorVerdict]) -> dict[str, Reading | None]:
    return {
        v.indicator: None if v.finding == "not_assessable" else Reading(v.finding, v.category or v.finding)
        for v in verdicts
    }


def decide(doc: CriteriaDocument, readings: Mapping[str, Reading | None]) -> tuple[str, bool | None]:
    """The decision rule's label and whether it is a positive one (None: not assessable).

    Abstains when a required indicator is not assessable; with grades, the first grade whose condition
    holds wins (an unknown condition before it abstains); otherwise the positive condition decides.
    """
    rule = doc.decision
    if any(readings.get(i) is None for i in rule.requires):
        return rule.not_assessable_label, None
    if rule.grades:
        for grade in rule.grades:
            holds = evaluate(grade.when, readings)
            if holds is None:
                return rule.not_assessable_label, None
            if holds:
                return grade.label, grade.positive
        return rule.negative_label, False
    assert rule.positive_if is not None and rule.positive_label is not None
    satisfied = evaluate(rule.positive_if, readings)
    if satisfied is None:
        return rule.not_assessable_label, None
    return (rule.positive_label if satisfied else rule.negative_label), satisfied


def label_for(
    doc: CriteriaDocument, findings: dict[str, Reading | Finding | None]
) -> tuple[str, bool | None]:
    """The label for given readings (or bare findings, whose category is the finding)."""
    readings = {k: v if v is None or isinstance(v, Reading) else Reading(v, v) for k, v in findings.items()}
    return decide(doc, readings)


def label_of(doc: CriteriaDocument, values: dict[str, float | bool | str | None]) -> str:
    """The label the document gives for known indicator values (by indicator id; None = not assessable)."""
    readings: dict[str, Reading | None] = {ind.id: None for ind in doc.indicators}
    for ind_id, value in values.items():
        readings[ind_id] = None if value is None else doc.indicator(ind_id).rule.read(value)
    return decide(doc, readings)[0]


def label_confidence(
    doc: CriteriaDocument, verdicts: list[IndicatorVerdict], label: str, seed: int = 0
) -> float:
    """Fraction of simulated re-measurements (each numeric value ± its standard uncertainty, Gaussian:
    the tools' measured error when they declare one, else the rule's stated uncertainty; widened by
    ``QUALITY_UNCERTAINTY_FACTOR`` for a flagged image quality) that give the same label.
    Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    fixed = _readings(verdicts)
    sampled: dict[str, list[Reading | None]] = {}
    for v in verdicts:
        rule = doc.indicator(v.indicator).rule
        if isinstance(rule, BandsRule) and _numeric(v.value):
            sd = (v.uncertainty_sd or rule.uncertainty or 1e-12) * v.uncertainty_factor
            draws = rng.normal(float(v.value), sd, CONFIDENCE_DRAWS)
            sampled[v.indicator] = _read_many(rule, draws)
        else:
            sampled[v.indicator] = [fixed[v.indicator]] * CONFIDENCE_DRAWS
    names = list(sampled)
    decided: dict[tuple[Reading | None, ...], bool] = {}  # few distinct combinations: decide each once
    same = 0
    for combo in zip(*(sampled[k] for k in names), strict=True):
        if combo not in decided:
            decided[combo] = decide(doc, dict(zip(names, combo, strict=True)))[0] == label
        same += decided[combo]
    return same / CONFIDENCE_DRAWS


def _read_many(rule: BandsRule, draws: np.ndarray) -> list[Reading | None]:
    """``rule.read`` of every draw, reading only at the band edges: bands are contiguous and ordered, so
    along the sorted draws the reading changes at most once per edge (found by bisection)."""
    order = np.argsort(draws, kind="stable")
    xs = draws[order]
    out: list[Reading | None] = [None] * len(xs)
    i = 0
    while i < len(xs):
        reading = rule.read(float(xs[i]))
        lo, hi = i, len(xs) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if rule.read(float(xs[mid])) == reading:
                lo = mid
            else:
                hi = mid - 1
        for k in order[i : lo + 1]:
            out[k] = reading
        i = lo + 1
    return out


def recommendation_for(doc: CriteriaDocument, verdicts: list[IndicatorVerdict]) -> str | None:
    """The document's management recommendation for these verdicts, when it has a table."""
    if doc.recommendation is None:
        return None
    return doc.recommendation.lookup(_readings(verdicts))


def _true_branches(cond: Condition, findings: dict[str, Reading | None]) -> list[str]:
    """Indicators inside the parts of a satisfied condition that make it true."""
    if isinstance(cond, (FindingIs, CategoryIs)):
        return [cond.indicator] if evaluate(cond, findings) else []
    subs = cond.all if isinstance(cond, AllOf) else cond.any
    if isinstance(cond, AnyOf):
        return [i for s in subs if evaluate(s, findings) for i in _true_branches(s, findings)]
    return [i for s in subs for i in _true_branches(s, findings)] if evaluate(cond, findings) else []


def _decisive(doc: CriteriaDocument, verdicts: list[IndicatorVerdict], label: str) -> list[str]:
    """The indicators a label rests on (for an abstention: the missing ones it needed)."""
    readings = _readings(verdicts)
    rule = doc.decision
    if label == rule.not_assessable_label:
        return [v.indicator for v in verdicts if v.finding == "not_assessable"]
    winning = next((g.when for g in rule.grades if g.label == label), None)
    if winning is None and label == rule.positive_label:
        winning = rule.positive_if
    if winning is not None:
        return _true_branches(winning, readings)
    return [v.indicator for v in verdicts if v.finding != "not_assessable"]


def _fmt(v: float | bool | str | None) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


class RulesAggregator:
    """Evaluates the criteria's decision rules over the evidence; deterministic, offline."""

    name = "rules"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        """Seed of the confidence simulation."""

    def aggregate(self, bundle: EvidenceBundle) -> Diagnosis:
        """The diagnosis the first (best-matching) criteria document gives; others are reported too."""
        verdicts_by_doc = []
        for c in bundle.criteria:
            doc = c.document
            verdicts = indicator_verdicts(doc, bundle)
            label, satisfied = decide(doc, _readings(verdicts))
            verdicts_by_doc.append(
                CriterionVerdict(
                    criteria_id=doc.id,
                    criteria_version=doc.version,
                    label=label,
                    satisfied=satisfied,
                    indicators=tuple(verdicts),
                    recommendation=recommendation_for(doc, verdicts),
                )
            )
        main_doc = bundle.criteria[0].document
        main = verdicts_by_doc[0]
        verdicts = list(main.indicators)
        decisive = _decisive(main_doc, verdicts, main.label)
        confidence = (
            0.0 if main.satisfied is None else label_confidence(main_doc, verdicts, main.label, self.seed)
        )
        cited = tuple(dict.fromkeys(e for v in verdicts if v.indicator in decisive for e in v.evidence_ids))
        return Diagnosis(
            label=main.label,
            confidence=round(confidence, 4),
            criteria=tuple(verdicts_by_doc),
            rationale=_rationale(main_doc, main, decisive),
            cited_evidence=cited,
            abstained=main.satisfied is None,
            aggregator=self.name,
            recommendation=main.recommendation,
            missing_indicators=tuple(v.indicator for v in verdicts if v.finding == "not_assessable"),
        )


def _rationale(doc: CriteriaDocument, verdict: CriterionVerdict, decisive: list[str]) -> str:
    parts = []
    for v in verdict.indicators:
        if v.finding == "not_assessable":
            parts.append(f"{v.name}: not assessable ({v.reason})")
        else:
            cite = f" [{', '.join(v.evidence_ids)}]" if v.evidence_ids else ""
            quality = f"; image {v.quality_grade}ly degraded" if v.quality_grade else ""
            if v.uncertainty_factor > 1:
                quality += f", uncertainty x{v.uncertainty_factor:g}"
            parts.append(f"{v.name} {_fmt(v.value)}{cite} is {v.finding} ({v.rule}{quality})")
    required = [i for i in doc.decision.requires if i in decisive]
    if verdict.satisfied is None and required:
        why = f"{doc.decision.not_assessable_label}: {', '.join(required)} is required and not assessable"
    elif verdict.satisfied is None:
        why = f"{doc.decision.not_assessable_label}: the decision needs " + ", ".join(decisive)
    elif doc.decision.grades and verdict.label != doc.decision.negative_label:
        why = f"{verdict.label}: the first grade of {doc.id} v{doc.version} that holds, through " + ", ".join(
            decisive
        )
    elif verdict.satisfied:
        why = f"{verdict.label}: the positive condition holds through " + ", ".join(decisive)
    else:
        why = f"{verdict.label}: no positive condition of {doc.id} v{doc.version} holds"
    text = "; ".join(parts) + ". " + why + "."
    if verdict.recommendation:
        text += f" Recommendation ({doc.recommendation.title if doc.recommendation else ''}): {verdict.recommendation}"
    return text
