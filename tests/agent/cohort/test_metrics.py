"""Cohort metrics against numbers worked out by hand on hand-made cohorts."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from dxgraph.agent.cohort import (
    CaseCost,
    CaseOutcome,
    TaskLabels,
    compute_metrics,
    format_metrics,
    indicator_agreement,
)

BINARY = TaskLabels(
    criteria_id="glaucoma", labels=("glaucoma", "normal"), positive=("glaucoma",), not_assessable="ungradable"
)
GRADED = TaskLabels(
    criteria_id="dr_grade",
    labels=("severe", "moderate", "none"),
    positive=("severe", "moderate"),
    not_assessable="ungradable",
)
WHEN = datetime(2024, 5, 1, tzinfo=UTC)


class Cohort:
    """Builds outcomes with consecutive manifest lines."""

    def __init__(self, labels: TaskLabels) -> None:
        self.labels = labels
        self.outcomes: list[CaseOutcome] = []

    def add(self, true: str | None, pred: str | None, confidence: float | None = 0.8, **kw: Any) -> None:
        """A completed case predicting ``pred`` (None: abstained) whose true label is ``true``."""
        line = len(self.outcomes) + 2
        fields: dict[str, Any] = {
            "cohort_id": "c1",
            "case_id": f"case{line}",
            "line": line,
            "status": "completed",
            "finished_at": WHEN,
            "label": pred if pred is not None else self.labels.not_assessable,
            "positive": None if pred is None else pred in self.labels.positive,
            "confidence": confidence,
            "abstained": pred is None,
            "truth_label": true,
            "truth_positive": None if true is None else true in self.labels.positive,
        }
        fields.update(kw)
        self.outcomes.append(CaseOutcome(**fields))

    def fail(self, **kw: Any) -> None:
        """A failed case (with a true label, which must not count)."""
        line = len(self.outcomes) + 2
        fields: dict[str, Any] = {
            "cohort_id": "c1",
            "case_id": f"case{line}",
            "line": line,
            "status": "failed",
            "failure": "input",
            "error": "unreadable image",
            "finished_at": WHEN,
            "truth_label": self.labels.labels[0],
            "truth_positive": True,
        }
        fields.update(kw)
        self.outcomes.append(CaseOutcome(**fields))


def _binary_cohort() -> Cohort:
    """TP=7, FN=3, TN=8, FP=2 at confidence 0.8, plus 2 abstentions, 1 failure and 1 unlabelled case."""
    c = Cohort(BINARY)
    for truth, pred, n in (("glaucoma", "glaucoma", 7), ("glaucoma", "normal", 3), ("normal", "normal", 8)):
        for _ in range(n):
            c.add(truth, pred)
    for _ in range(2):
        c.add("normal", "glaucoma")
    c.add("glaucoma", None, confidence=0.5)
    c.add("normal", None, confidence=0.5)
    c.fail()
    c.add(None, "glaucoma", confidence=0.99)
    return c


def test_binary_cohort_counts_and_classification():
    m = compute_metrics(_binary_cohort().outcomes, BINARY)
    assert (m.n_cases, m.n_completed, m.n_failed, m.n_abstained, m.n_labelled, m.n_scored) == (
        24,
        23,
        1,
        2,
        22,
        20,
    )
    assert m.abstention_rate == pytest.approx(2 / 23)
    assert m.accuracy == pytest.approx(0.75)
    assert m.sensitivity == pytest.approx(0.7)
    assert m.specificity == pytest.approx(0.8)
    assert (m.n_truth_positive, m.n_truth_negative) == (10, 10)
    assert m.balanced_accuracy == pytest.approx(0.75)
    assert m.mcc == pytest.approx((7 * 8 - 2 * 3) / math.sqrt(9 * 10 * 10 * 11))
    assert m.f1_kind == "binary"
    assert m.f1 == pytest.approx(2 * 7 / (2 * 7 + 2 + 3))
    # probabilities 0.8 (predicted positive) / 0.2: 56 wins + (14 + 24) ties / 2 over 100 pairs
    assert m.auroc == pytest.approx(0.75)
    assert m.n_with_probability == 20
    # all 20 confidences are 0.8, 15 right: one bin, |0.75 - 0.8|
    assert m.ece == pytest.approx(0.05)
    assert m.brier == pytest.approx((7 * 0.04 + 3 * 0.64 + 8 * 0.04 + 2 * 0.64) / 20)


def test_confusion_matrix_shows_abstentions_in_the_last_column():
    m = compute_metrics(_binary_cohort().outcomes, BINARY)
    assert m.confusion_rows == ["glaucoma", "normal"]
    assert m.confusion_columns == ["glaucoma", "normal", "ungradable"]
    assert m.confusion == [[7, 3, 1], [2, 8, 1]]


def test_auroc_and_ece_on_a_hand_made_ranking():
    c = Cohort(BINARY)
    # positive probabilities: truly positive 0.9, 0.8, 0.4; truly negative 0.7, 0.3, 0.2
    c.add("glaucoma", "glaucoma", 0.9)
    c.add("glaucoma", "glaucoma", 0.8)
    c.add("glaucoma", "normal", 0.6)
    c.add("normal", "glaucoma", 0.7)
    c.add("normal", "normal", 0.7)
    c.add("normal", "normal", 0.8)
    m = compute_metrics(c.outcomes, BINARY)
    # 0.9 and 0.8 beat all three negatives, 0.4 beats 0.3 and 0.2: 8 of 9 pairs
    assert m.auroc == pytest.approx(8 / 9)
    # bins: 0.9 (1 right), 0.8 (2 right), 0.7 (1 right, 1 wrong), 0.6 (1 wrong)
    assert m.ece == pytest.approx((1 * 0.1 + 2 * 0.2 + 2 * 0.2 + 1 * 0.6) / 6)
    by_lower = {round(b.lower, 1): b for b in m.reliability}
    assert len(m.reliability) == 10
    assert by_lower[0.7].n == 2 and by_lower[0.7].accuracy == pytest.approx(0.5)
    assert by_lower[0.7].mean_confidence == pytest.approx(0.7)
    assert by_lower[0.6].n == 1 and by_lower[0.6].accuracy == 0.0
    assert by_lower[0.0].n == 0 and by_lower[0.0].accuracy is None
    assert m.n_with_confidence == 6


def test_graded_three_label_cohort():
    c = Cohort(GRADED)
    table = {
        "severe": {"severe": 2, "moderate": 1, "none": 0},
        "moderate": {"severe": 0, "moderate": 2, "none": 1},
        "none": {"severe": 0, "moderate": 1, "none": 3},
    }
    for truth, row in table.items():
        for pred, n in row.items():
            for _ in range(n):
                c.add(truth, pred)
    m = compute_metrics(c.outcomes, GRADED)
    assert m.confusion == [[2, 1, 0, 0], [0, 2, 1, 0], [0, 1, 3, 0]]
    assert m.accuracy == pytest.approx(0.7)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert m.f1_kind == "macro"
    # per label 2TP / (2TP + FP + FN): severe 4/5, moderate 4/7, none 6/8
    assert m.f1 == pytest.approx((4 / 5 + 4 / 7 + 6 / 8) / 3)
    # multiclass MCC: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)), p = (2,4,4), t = (3,3,4)
    assert m.mcc == pytest.approx((7 * 10 - 34) / math.sqrt((100 - 36) * (100 - 34)))
    # positive finding = severe or moderate: 5 of 6 truly positive found, 3 of 4 negatives
    assert m.sensitivity == pytest.approx(5 / 6)
    assert m.specificity == pytest.approx(3 / 4)


def test_undefined_metrics_are_none():
    c = Cohort(BINARY)
    for _ in range(3):
        c.add("normal", "normal", 0.9)
    m = compute_metrics(c.outcomes, BINARY)
    assert m.accuracy == 1.0 and m.specificity == 1.0
    assert m.sensitivity is None  # no truly positive case
    assert m.auroc is None  # one true class
    assert m.mcc is None  # one class on each side
    assert m.f1 is None  # no positive predicted or true
    assert m.abstention_rate == 0.0


def test_empty_and_all_failed_cohorts():
    empty = compute_metrics([], BINARY)
    assert empty.n_cases == 0 and empty.abstention_rate is None
    assert empty.accuracy is None and empty.balanced_accuracy is None and empty.ece is None
    assert empty.brier is None and empty.cost.mean_wall_s is None
    assert empty.confusion == [[0, 0, 0], [0, 0, 0]]
    c = Cohort(BINARY)
    c.fail()
    c.fail(failure="bug", error="boom")
    m = compute_metrics(c.outcomes, BINARY)
    assert (m.n_cases, m.n_failed, m.n_completed, m.n_scored) == (2, 2, 0, 0)
    assert m.accuracy is None and m.abstention_rate is None and m.sensitivity is None
    assert dict(format_metrics(m))["accuracy"] == "—"


def test_bland_altman_agreement_on_known_differences():
    c = Cohort(BINARY)
    truth = [10.0, 20.0, 30.0, 40.0]
    measured = [11.0, 23.0, 29.0, 41.0]  # differences 1, 3, -1, 1
    for t, v in zip(truth, measured, strict=True):
        c.add("normal", "normal", measured={"cup_mm": v}, truth={"cup_mm": t}, units={"cup_mm": "mm"})
    # one case with truth only for another indicator; a failed case's values never count
    c.add("normal", "normal", measured={"vcdr": 0.5}, truth={"vcdr": 0.4})
    c.fail(measured={"cup_mm": 100.0}, truth={"cup_mm": 0.0})
    m = compute_metrics(c.outcomes, BINARY)
    assert set(m.agreement) == {"cup_mm"}  # vcdr has a single case
    a = m.agreement["cup_mm"]
    sd = math.sqrt((0 + 4 + 4 + 0) / 3)
    assert a.n == 4 and a.unit == "mm"
    assert a.bias == pytest.approx(1.0)
    assert a.mean_absolute_error == pytest.approx(1.5)
    assert a.sd_difference == pytest.approx(sd)
    assert a.loa_lower == pytest.approx(1 - 1.96 * sd)
    assert a.loa_upper == pytest.approx(1 + 1.96 * sd)
    # deviations: measured (-15, -3, 3, 15), truth (-15, -5, 5, 15)
    assert a.pearson_r == pytest.approx(480 / math.sqrt(468 * 500))
    assert indicator_agreement(c.outcomes, "vcdr") is None


def test_cost_totals_and_format():
    c = Cohort(BINARY)
    c.add("glaucoma", "glaucoma", cost=CaseCost(wall_ms=1000, tool_ms=400, model_ms=500, prompt_tokens=10))
    c.add("normal", "normal", cost=CaseCost(wall_ms=3000, tool_ms=600, completion_tokens=5, tool_calls=3))
    c.fail(cost=CaseCost(wall_ms=2000, model_calls=1))
    m = compute_metrics(c.outcomes, BINARY)
    assert m.cost.wall_s == pytest.approx(6.0) and m.cost.mean_wall_s == pytest.approx(2.0)
    assert m.cost.tool_s == pytest.approx(1.0) and m.cost.model_s == pytest.approx(0.5)
    assert (m.cost.prompt_tokens, m.cost.completion_tokens) == (10, 5)
    assert (m.cost.tool_calls, m.cost.model_calls) == (3, 1)
    rows = dict(format_metrics(m))
    assert rows["accuracy"] == "1.000"
    assert rows["sensitivity"] == "1.000 (n=1)"
    assert rows["MCC"] == "1.000"
    assert rows["F1 (binary)"] == "1.000"
    assert rows["wall time"] == "6.0 s (2.00 s/case)"
    assert rows["abstained"] == "0 (0.0% of completed)"
