"""Several measurements of one indicator made into the one value the decision reads.

Each measurement carries the standard uncertainty its tools showed on real data (their declared error
models). When an indicator was measured more than once (the review step asked for a fallback or a second
opinion), the measurements are reconciled:

- a measurement whose input was out of the tool's domain, or whose image quality makes it unreliable,
  gives way to one that is neither;
- measurements that agree within their uncertainties (``AGREEMENT_Z`` standard errors of the
  difference) are combined by inverse-variance weighting, and the combined uncertainty is narrower;
- measurements that disagree are flagged ``methods_disagree``: they are still combined, with the
  uncertainty widened by half their spread, and when the label depends on which one is right the flag
  ``methods_disagree_decisive`` makes the indicator not assessable.

The originals stay in the evidence (an auditor sees every value), each pointing to the value that
replaced it (``superseded_by``); the value the decision reads comes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dxgraph.agent._rules import DECISIVE_DISAGREEMENT_FLAG, label_of, quality_penalty
from dxgraph.core import Evidence
from dxgraph.criteria_kb import BandsRule, CriteriaDocument, LoadedCriteria
from dxgraph.imaging import flagged_quality
from dxgraph.tools import OUT_OF_DOMAIN_FLAG

AGREEMENT_Z = 1.96
"""Two measurements agree when they differ by at most this many standard errors of their difference."""
COMBINED_FLAG = "methods_combined"
"""Flag of a value combined from independent measurements that agree."""
DISAGREE_FLAG = "methods_disagree"
"""Flag of a value whose independent measurements differ beyond their measured errors."""


def reliable(e: Evidence, quality_penalty: object) -> bool:
    """Whether a measurement can be relied on: in its tool's domain, image not too degraded."""
    return OUT_OF_DOMAIN_FLAG not in e.quality_flags and quality_penalty is not None


def numeric(value: object) -> bool:
    """Whether a value is a number (not a yes/no or a category)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def standard_uncertainty(e: Evidence, doc: CriteriaDocument) -> float | None:
    """The measurement's standard uncertainty: its tools' measured one, else the criteria's stated one."""
    if e.uncertainty_sd is not None:
        return e.uncertainty_sd
    rule = doc.indicator(e.indicator).rule
    return rule.uncertainty if isinstance(rule, BandsRule) else None


def reconcile(evidence: Sequence[Evidence], criteria: Sequence[LoadedCriteria]) -> list[Evidence]:
    """The evidence with every indicator's measurements reconciled into the one value the decision reads.

    Indicators measured once pass through unchanged; see the module docstring for the rest.
    """
    docs = {c.document.id: c.document for c in criteria}
    groups: dict[tuple[str, str], list[Evidence]] = {}
    for e in evidence:
        if e.superseded_by is None and not e.combined_from:
            groups.setdefault((e.criteria_id, e.indicator), []).append(e)
    decided: dict[tuple[str, str], Evidence] = {}
    replaced: dict[str, str] = {}
    for key, group in groups.items():
        doc = docs[key[0]]
        if len(group) == 1:
            decided[key] = group[0]
            continue
        usable = [e for e in group if reliable(e, quality_penalty(flagged_quality(e.quality_flags)))]
        chosen = usable or group
        if len(chosen) == 1:
            decided[key] = chosen[0]
        else:
            decided[key] = _combine(chosen, doc)
        for e in group:
            if e.evidence_id != decided[key].evidence_id:
                replaced[e.evidence_id] = decided[key].evidence_id
    for key, combined in list(decided.items()):
        if DISAGREE_FLAG in combined.quality_flags:
            doc = docs[key[0]]
            values = {k[1]: d.value for k, d in decided.items() if k[0] == key[0]}
            labels = set()
            for part in (e for e in groups[key] if e.evidence_id in combined.combined_from):
                labels.add(label_of(doc, {**values, key[1]: part.value}))
            if len(labels) > 1:
                flags = (*combined.quality_flags, DECISIVE_DISAGREEMENT_FLAG)
                decided[key] = combined.model_copy(update={"quality_flags": flags})
    out: list[Evidence] = []
    for key in dict.fromkeys((e.criteria_id, e.indicator) for e in evidence):
        main = decided.get(key)
        if main is not None:
            out.append(main)  # the value the decision reads comes first
        for e in evidence:
            if (
                (e.criteria_id, e.indicator) != key
                or e.combined_from
                or (main is not None and e.evidence_id == main.evidence_id)
            ):
                continue  # a combination from an earlier round is made again from its parts
            out.append(e.model_copy(update={"superseded_by": replaced.get(e.evidence_id)}))
    return out


def _combine(parts: list[Evidence], doc: CriteriaDocument) -> Evidence:
    """One value from several measurements: inverse-variance mean when numeric, else the shared value."""
    first = parts[0]
    sds = [standard_uncertainty(e, doc) for e in parts]
    flags = tuple(dict.fromkeys(f for e in parts for f in e.quality_flags))
    ids = tuple(e.evidence_id for e in parts)
    common = dict(
        evidence_id="+".join(e.step_id for e in parts) + ":" + first.evidence_id.split(":", 1)[1],
        tool="+".join(e.tool for e in parts),
        tool_version="+".join(e.tool_version for e in parts),
        input_sha256=tuple(sorted({h for e in parts for h in e.input_sha256})),
        artifacts=tuple({a.sha256: a for e in parts for a in e.artifacts}.values()),
        method="combined",
        combined_from=ids,
        superseded_by=None,
    )
    if not all(numeric(e.value) for e in parts) or any(s is None or s <= 0 for s in sds):
        agree = len({repr(e.value) for e in parts}) == 1
        extra = COMBINED_FLAG if agree else DISAGREE_FLAG
        return first.model_copy(update={**common, "quality_flags": (*flags, extra)})
    values = [float(e.value) for e in parts]
    weights = [1.0 / float(s) ** 2 for s in sds]  # type: ignore[arg-type]
    mean = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    sd = 1.0 / math.sqrt(sum(weights))
    agree = all(
        abs(a - b) <= AGREEMENT_Z * math.hypot(sa, sb)  # type: ignore[arg-type]
        for i, (a, sa) in enumerate(zip(values, sds, strict=True))
        for b, sb in list(zip(values, sds, strict=True))[i + 1 :]
    )
    spread = max(values) - min(values)
    if agree:
        how = f"inverse-variance mean of {', '.join(ids)}, which agree within their measured errors"
        extra = COMBINED_FLAG
    else:
        sd = math.hypot(sd, spread / 2)
        how = (
            f"inverse-variance mean of {', '.join(ids)}, which differ by {spread:.3g} (beyond their measured"
            " errors); uncertainty widened by half that spread"
        )
        extra = DISAGREE_FLAG
    return first.model_copy(
        update={
            **common,
            "value": round(mean, 6),
            "uncertainty_sd": round(sd, 6),
            "uncertainty_source": how,
            "quality_flags": (*flags, extra),
        }
    )
