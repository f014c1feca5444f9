"""The deterministic ``rules`` aggregator: threshold rules and the decision rule, evaluated as data."""

from __future__ import annotations

import numpy as np

from dxgraph.agent.aggregate import EvidenceBundle
from dxgraph.agent.diagnosis import CriterionVerdict, Diagnosis, IndicatorVerdict
from dxgraph.criteria_kb import AllOf, AnyOf, BandsRule, Condition, CriteriaDocument, FindingIs, evaluate
from dxgraph.criteria_kb._schema import Finding

CONFIDENCE_DRAWS = 4000
"""Monte Carlo draws used to estimate how robust a label is to measurement error."""


def indicator_verdicts(doc: CriteriaDocument, bundle: EvidenceBundle) -> list[IndicatorVerdict]:
    """Each indicator of the document read against its threshold rule."""
    out = []
    for ind in doc.indicators:
        ev = next((e for e in bundle.evidence if e.criteria_id == doc.id and e.indicator == ind.id), None)
        common = dict(indicator=ind.id, name=ind.name, unit=ind.unit, rule=ind.rule.describe())
        if ev is None:
            reason = bundle.missing.get((doc.id, ind.id), "no evidence was produced")
            out.append(IndicatorVerdict(finding="not_assessable", reason=reason, **common))
            continue
        finding = ind.rule.finding(ev.value)
        out.append(
            IndicatorVerdict(finding=finding, value=ev.value, evidence_ids=(ev.evidence_id,), **common)
        )
    return out


def _findings(verdicts: list[IndicatorVerdict]) -> dict[str, Finding | None]:
    return {v.indicator: (None if v.finding == "not_assessable" else v.finding) for v in verdicts}


def label_for(doc: CriteriaDocument, findings: dict[str, Finding | None]) -> tuple[str, bool | None]:
    """The decision rule's label and whether its positive condition holds (None: unknown)."""
    satisfied = evaluate(doc.decision.positive_if, findings)
    if satisfied is None:
        return doc.decision.not_assessable_label, None
    return (doc.decision.positive_label if satisfied else doc.decision.negative_label), satisfied


def label_confidence(
    doc: CriteriaDocument, verdicts: list[IndicatorVerdict], label: str, seed: int = 0
) -> float:
    """Fraction of simulated re-measurements (each numeric value ± its rule's uncertainty, Gaussian)
    that give the same label. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    sampled: dict[str, list[Finding | None]] = {}
    for v in verdicts:
        rule = doc.indicator(v.indicator).rule
        if (
            isinstance(rule, BandsRule)
            and isinstance(v.value, (int, float))
            and not isinstance(v.value, bool)
        ):
            draws = rng.normal(float(v.value), rule.uncertainty or 1e-12, CONFIDENCE_DRAWS)
            sampled[v.indicator] = [rule.finding(float(x)) for x in draws]
        else:
            f = None if v.finding == "not_assessable" else v.finding
            sampled[v.indicator] = [f] * CONFIDENCE_DRAWS
    same = sum(
        label_for(doc, {k: vals[i] for k, vals in sampled.items()})[0] == label
        for i in range(CONFIDENCE_DRAWS)
    )
    return same / CONFIDENCE_DRAWS


def _true_branches(cond: Condition, findings: dict[str, Finding | None]) -> list[str]:
    """Indicators inside the parts of a satisfied condition that make it true."""
    if isinstance(cond, FindingIs):
        return [cond.indicator] if evaluate(cond, findings) else []
    subs = cond.all if isinstance(cond, AllOf) else cond.any
    if isinstance(cond, AnyOf):
        return [i for s in subs if evaluate(s, findings) for i in _true_branches(s, findings)]
    return [i for s in subs for i in _true_branches(s, findings)] if evaluate(cond, findings) else []


def _fmt(v: float | bool | None) -> str:
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
            label, satisfied = label_for(doc, _findings(verdicts))
            verdicts_by_doc.append(
                CriterionVerdict(
                    criteria_id=doc.id,
                    criteria_version=doc.version,
                    label=label,
                    satisfied=satisfied,
                    indicators=tuple(verdicts),
                )
            )
        main_doc = bundle.criteria[0].document
        main = verdicts_by_doc[0]
        verdicts = list(main.indicators)
        findings = _findings(verdicts)
        if main.satisfied is None:
            decisive = [v.indicator for v in verdicts if v.finding == "not_assessable"]
            confidence = 0.0
        else:
            decisive = (
                _true_branches(main_doc.decision.positive_if, findings)
                if main.satisfied
                else [v.indicator for v in verdicts if v.finding != "not_assessable"]
            )
            confidence = label_confidence(main_doc, verdicts, main.label, self.seed)
        cited = tuple(dict.fromkeys(e for v in verdicts if v.indicator in decisive for e in v.evidence_ids))
        return Diagnosis(
            label=main.label,
            confidence=round(confidence, 4),
            criteria=tuple(verdicts_by_doc),
            rationale=_rationale(main_doc, main, decisive),
            cited_evidence=cited,
            abstained=main.satisfied is None,
            aggregator=self.name,
        )


def _rationale(doc: CriteriaDocument, verdict: CriterionVerdict, decisive: list[str]) -> str:
    parts = []
    for v in verdict.indicators:
        if v.finding == "not_assessable":
            parts.append(f"{v.name}: not assessable ({v.reason})")
        else:
            cite = f" [{', '.join(v.evidence_ids)}]" if v.evidence_ids else ""
            parts.append(f"{v.name} {_fmt(v.value)}{cite} is {v.finding} ({v.rule})")
    if verdict.satisfied is None:
        why = f"{doc.decision.not_assessable_label}: the decision needs " + ", ".join(decisive)
    elif verdict.satisfied:
        why = f"{verdict.label}: the positive condition holds through " + ", ".join(decisive)
    else:
        why = f"{verdict.label}: no positive condition of {doc.id} v{doc.version} holds"
    return "; ".join(parts) + ". " + why + "."
