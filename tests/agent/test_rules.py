"""The rules aggregator: labels from the glaucoma decision rule, confidence from the margins."""

import pytest

from dxgraph.agent.aggregate import EvidenceBundle
from dxgraph.agent.diagnosis import check_citations
from dxgraph.agent.evidence import Evidence
from dxgraph.agent.rules import RulesAggregator
from dxgraph.criteria_kb import get_criteria

DOC = get_criteria("glaucoma.onh-structure")


def ev(indicator, value, quantity=None):
    ind = DOC.document.indicator(indicator)
    return Evidence(
        evidence_id=f"s2:{quantity or ind.quantity}",
        indicator=indicator,
        name=ind.name,
        criteria_id=DOC.document.id,
        value=value,
        unit=ind.unit,
        tool="measure_cup_disc",
        tool_version="0.1.0",
        step_id="s2",
    )


def decide(vcdr=None, rdr=0.3, isnt=False, missing=None):
    evidence = [
        e
        for e in (
            ev("vcdr", vcdr) if vcdr is not None else None,
            ev("rim_to_disc_ratio", rdr) if rdr is not None else None,
            ev("isnt_rule", isnt) if isnt is not None else None,
        )
        if e is not None
    ]
    bundle = EvidenceBundle(criteria=(DOC,), evidence=tuple(evidence), missing=missing or {})
    d = RulesAggregator().aggregate(bundle)
    check_citations(d, evidence)
    return d


@pytest.mark.parametrize(
    "vcdr, rdr, isnt, label",
    [
        (0.40, 0.30, False, "no_glaucoma_signs"),
        (0.75, 0.12, False, "glaucoma_suspect"),  # vCDR abnormal
        (0.50, 0.05, False, "glaucoma_suspect"),  # rim loss alone
        (0.65, 0.20, True, "glaucoma_suspect"),  # borderline vCDR + ISNT violation
        (0.65, 0.20, False, "no_glaucoma_signs"),  # borderline vCDR alone
        (0.40, 0.30, True, "no_glaucoma_signs"),  # ISNT alone is not enough
    ],
)
def test_decision_rule(vcdr, rdr, isnt, label):
    assert decide(vcdr, rdr, isnt).label == label


def test_positive_diagnosis_cites_only_the_decisive_evidence():
    d = decide(0.8, 0.3, False)
    assert d.cited_evidence == ("s2:vcdr",)
    assert "through vcdr" in d.rationale and "0.80 [s2:vcdr]" in d.rationale


def test_confidence_grows_with_the_distance_from_the_threshold():
    confidences = [decide(v, 0.3, False).confidence for v in (0.71, 0.75, 0.80, 0.90)]
    assert confidences == sorted(confidences)
    assert confidences[0] == pytest.approx(0.58, abs=0.04)  # Φ(0.01/0.05) ≈ 0.58
    assert confidences[-1] > 0.99
    assert decide(0.69, 0.3, False).confidence == pytest.approx(0.58, abs=0.04)


def test_missing_primary_evidence_abstains_with_the_reason():
    missing = {(DOC.document.id, "vcdr"): "segment_optic_disc_cup failed: no disc"}
    d = decide(None, 0.3, False, missing=missing)
    assert (d.label, d.abstained, d.confidence) == ("not_assessable", True, 0.0)
    assert d.criteria[0].indicators[0].reason == "segment_optic_disc_cup failed: no disc"


def test_missing_evidence_does_not_block_a_decision_it_cannot_change():
    d = decide(0.8, None, None)
    assert d.label == "glaucoma_suspect" and not d.abstained


def test_citing_unknown_evidence_is_an_error():
    d = decide(0.8)
    with pytest.raises(ValueError, match="s2:vcdr"):
        check_citations(d, [])
