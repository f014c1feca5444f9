"""The rules aggregator: labels from the glaucoma decision rule, confidence from the margins."""

import pytest

from dxgraph.core import check_citations

from _helpers import rules_decide as decide


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
    missing = {("glaucoma.onh-structure", "vcdr"): "segment_optic_disc_cup failed: no disc"}
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


def test_flagged_image_quality_widens_the_uncertainty_and_lowers_the_confidence():
    clean = decide(0.66, 0.2)
    confidences = [clean.confidence]
    for flags in (["noise_mild"], ["noise_moderate"], ["blur_mild", "noise_mild"]):
        d = decide(0.66, 0.2, flags=["greyscale_input", *flags])
        assert d.label == clean.label and not d.abstained
        confidences.append(d.confidence)
    assert confidences == sorted(confidences, reverse=True) and len(set(confidences)) == 4
    vcdr = decide(0.66, 0.2, flags=["jpeg_artefacts_mild", "noise_moderate"]).criteria[0].indicators[0]
    assert (vcdr.quality_grade, vcdr.uncertainty_factor) == ("moderate", 2.0)  # the larger factor
    assert "mildly degraded, uncertainty x3" in decide(0.66, 0.2, flags=["blur_mild"]).rationale
    # a problem the measuring tool tolerates is reported but widens nothing
    tolerated = decide(0.66, 0.2, flags=["blur_severe_tolerated"])
    assert tolerated.confidence == clean.confidence and not tolerated.abstained
    # far from every threshold, a wider uncertainty changes nothing
    assert decide(0.3, 0.35, flags=["noise_mild"]).confidence == decide(0.3, 0.35).confidence == 1.0


@pytest.mark.parametrize(
    "flag",
    [
        "noise_severe",
        "low_contrast_severe",
        "jpeg_artefacts_severe",
        "jpeg_artefacts_moderate",
        "blur_moderate",
    ],
)
def test_an_unreliable_image_makes_every_indicator_not_assessable_and_abstains(flag):
    d = decide(0.8, 0.05, True, flags=["no_cup_found", flag])
    assert d.abstained and d.label == "not_assessable" and d.confidence == 0.0
    problem = flag.rpartition("_")[0].replace("_", " ")
    for v in d.criteria[0].indicators:
        assert v.finding == "not_assessable" and v.value is None
        assert f"too degraded ({flag.rpartition('_')[2]} {problem})" in v.reason
        assert "measure_cup_disc" in v.reason
    assert d.missing_indicators == ("vcdr", "rim_to_disc_ratio", "isnt_rule")
