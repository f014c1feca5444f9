"""Degraded phantoms through the cohort runner: quality flags found, confidence falls with severity,
severe degradation abstains, ECE per severity reported (issue 8, part 3)."""

import itertools

import pytest

from dxgraph.testing.degradation_study import format_study, run_degradation_study

N = 6
"""Phantoms per condition: 6 x 13 conditions = 78 runs."""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    # the classical segmenter, whose image-quality grading the study calibrates (the UNet flags phantoms)
    return run_degradation_study(
        tmp_path_factory.mktemp("degradation"), N, seed=3, workers=2, prefer_tools=("segment_optic_disc_cup",)
    )


@pytest.mark.slow
def test_tools_flag_the_applied_degradation(study):
    clean = study.condition("clean", 0)
    assert clean.n_cases == N and clean.n_flagged == 0
    for kind in ("noise", "blur", "jpeg"):
        for severity in (1, 2, 3):
            r = study.condition(kind, severity)
            assert r.n_cases == N and r.n_flagged == N and r.n_graded_at_severity == N, r
    assert study.condition("low_contrast", 3).n_graded_at_severity == N


@pytest.mark.slow
def test_confidence_falls_with_severity_and_severe_abstains(study):
    pooled = [study.condition("all", s).mean_confidence for s in (0, 1, 2, 3)]
    assert pooled[0] > pooled[1] > pooled[2] > pooled[3] == 0.0, format_study(study)
    for kind in ("noise", "blur", "low_contrast", "jpeg"):
        means = [study.condition("clean", 0).mean_confidence] + [
            study.condition(kind, s).mean_confidence for s in (1, 2, 3)
        ]
        assert all(b <= a + 0.01 for a, b in itertools.pairwise(means)), (kind, means)
        assert study.condition(kind, 3).n_abstained == N
    # moderate blur and JPEG blocking make vCDR unreliable: the decision abstains already there
    assert study.condition("blur", 2).n_abstained == study.condition("jpeg", 2).n_abstained == N
    # where the decision stands, confidence tracks accuracy: ECE per severity
    for severity in (0, 1, 2):
        r = study.condition("all", severity)
        assert r.ece is not None and r.ece < 0.3, format_study(study)
        assert r.accuracy is not None and r.accuracy >= 0.75
    assert study.condition("clean", 0).indicator_mae < 0.06
