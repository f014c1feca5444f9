"""Cohort metrics: classification, calibration, measurement agreement and cost, from the cases' outcomes.

A case is *scored* when it completed, the manifest gives its true label and the run decided (did not
abstain). Failed and abstaining cases are counted, never scored. Every metric is None where it is undefined.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from dxgraph.agent.cohort._outcome import CaseOutcome, TaskLabels

RELIABILITY_BINS = 10
"""Equal-width confidence bins over [0, 1] for the calibration error and the reliability diagram."""
LOA_Z = 1.96
"""Limits of agreement: bias ± this many standard deviations of the differences."""
MIN_AGREEMENT_CASES = 2
"""Cases with both a measured and a true value an indicator needs before its agreement is computed."""

F1Kind = Literal["binary", "macro"]
"""``binary``: F1 of the positive finding (two-label tasks); ``macro``: mean F1 over labels (graded tasks)."""


class ReliabilityBin(BaseModel):
    """One confidence bin of the reliability diagram."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    lower: float
    """Lower edge of the bin (included)."""
    upper: float
    """Upper edge of the bin (excluded, except 1.0 in the last bin)."""
    n: int
    """Scored cases whose confidence falls in the bin."""
    mean_confidence: float | None
    """Mean confidence of those cases (None when the bin is empty)."""
    accuracy: float | None
    """Fraction of those cases whose predicted label is the true one (None when the bin is empty)."""


class IndicatorAgreement(BaseModel):
    """Agreement of one numeric indicator's measured values with the manifest's true values (Bland–Altman)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    indicator: str
    """The indicator id."""
    unit: str
    """Unit of the values (empty when the cases did not say)."""
    n: int
    """Completed cases with both a measured and a true value."""
    mean_absolute_error: float
    """Mean of |measured - truth|."""
    bias: float
    """Mean of measured - truth."""
    sd_difference: float
    """Sample standard deviation of measured - truth."""
    loa_lower: float
    """Lower limit of agreement: bias - 1.96 sd."""
    loa_upper: float
    """Upper limit of agreement: bias + 1.96 sd."""
    pearson_r: float | None
    """Pearson correlation of measured and true values (None when either does not vary)."""


class CostTotals(BaseModel):
    """Time and tokens over all cases of the cohort."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    wall_s: float
    """Sum of the cases' wall times."""
    tool_s: float
    """Sum of the time spent inside tools."""
    model_s: float
    """Sum of the time spent waiting for language models."""
    mean_wall_s: float | None
    """Mean wall time per case (None without cases)."""
    mean_tool_s: float | None
    """Mean tool time per case (None without cases)."""
    mean_model_s: float | None
    """Mean language-model time per case (None without cases)."""
    prompt_tokens: int
    """Prompt tokens sent to language models."""
    completion_tokens: int
    """Tokens the language models generated."""
    tool_calls: int
    """Number of tool calls."""
    model_calls: int
    """Number of language-model calls."""


class CohortMetrics(BaseModel):
    """What a cohort's cases add up to: counts, classification, calibration, agreement and cost."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    n_cases: int
    """Cases with an outcome."""
    n_completed: int
    """Cases whose run finished with a diagnosis (possibly an abstention)."""
    n_failed: int
    """Cases whose run failed."""
    n_abstained: int
    """Completed cases that abstained (the not-assessable label)."""
    n_labelled: int
    """Completed cases whose true label the manifest gives."""
    n_scored: int
    """Labelled cases that did not abstain: those the classification metrics are computed on."""
    n_truth_positive: int
    """Scored cases whose truth is a positive finding (sensitivity's denominator)."""
    n_truth_negative: int
    """Scored cases whose truth is not a positive finding (specificity's denominator)."""
    n_with_probability: int
    """Scored cases with a positive-finding probability and a known true finding (AUROC, Brier)."""
    n_with_confidence: int
    """Scored cases with a confidence (calibration error)."""
    abstention_rate: float | None
    """n_abstained / n_completed (None when no case completed)."""
    accuracy: float | None
    """Fraction of scored cases whose predicted label is the true label."""
    balanced_accuracy: float | None
    """Mean per-label recall over the labels present in the truth of scored cases."""
    mcc: float | None
    """Matthews correlation of predicted and true labels (multiclass for graded tasks)."""
    f1: float | None
    """F1 score; which one is in f1_kind."""
    f1_kind: F1Kind
    """``binary`` (positive finding) for two-label tasks, ``macro`` (mean over labels present) otherwise."""
    sensitivity: float | None
    """Fraction of truly positive scored cases predicted positive."""
    specificity: float | None
    """Fraction of truly negative scored cases predicted negative."""
    auroc: float | None
    """Area under the ROC curve of the positive-finding probability against the true finding."""
    ece: float | None
    """Expected calibration error of the top-label confidence (10 equal-width bins, weighted by count)."""
    brier: float | None
    """Mean squared error of the positive-finding probability against the true finding (0 or 1)."""
    confusion_rows: list[str]
    """True labels, one per confusion-matrix row (the task's labels in order, then any other seen)."""
    confusion_columns: list[str]
    """Predicted labels, one per column; the last is the not-assessable label (abstentions)."""
    confusion: list[list[int]]
    """Counts of labelled completed cases by true label (row) and predicted label (column)."""
    reliability: list[ReliabilityBin]
    """The confidence bins of the reliability diagram, lowest first."""
    agreement: dict[str, IndicatorAgreement]
    """Measurement agreement by indicator id, for indicators with at least two cases having truth."""
    cost: CostTotals
    """Time and tokens."""


def _abstains(o: CaseOutcome, labels: TaskLabels) -> bool:
    """Whether a completed case declined to decide."""
    return o.abstained or o.label is None or o.label == labels.not_assessable


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _sklearn_value(fn: Callable[[], float]) -> float | None:
    """A sklearn metric as a float, None when it is undefined (nan) or sklearn refuses; its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn())
        except ValueError:
            return None
    return None if math.isnan(value) else value


def agreement_pairs(outcomes: Sequence[CaseOutcome], indicator_id: str) -> list[tuple[float, float]]:
    """(measured, truth) of an indicator for each completed case that has both, in manifest order."""
    return [
        (o.measured[indicator_id], o.truth[indicator_id])
        for o in sorted(outcomes, key=lambda o: o.line)
        if o.status == "completed" and indicator_id in o.measured and indicator_id in o.truth
    ]


def indicator_agreement(
    outcomes: Sequence[CaseOutcome], indicator_id: str, unit: str | None = None
) -> IndicatorAgreement | None:
    """Bland–Altman agreement of one indicator (None with fewer than two cases having both values)."""
    pairs = agreement_pairs(outcomes, indicator_id)
    if len(pairs) < MIN_AGREEMENT_CASES:
        return None
    if unit is None:
        unit = next((o.units[indicator_id] for o in outcomes if indicator_id in o.units), "")
    diffs = [m - t for m, t in pairs]
    bias = statistics.fmean(diffs)
    sd = statistics.stdev(diffs)
    measured, truth = [m for m, _ in pairs], [t for _, t in pairs]
    r: float | None = None
    if statistics.pstdev(measured) > 0 and statistics.pstdev(truth) > 0:
        r = statistics.correlation(measured, truth)
    return IndicatorAgreement(
        indicator=indicator_id,
        unit=unit,
        n=len(pairs),
        mean_absolute_error=statistics.fmean(abs(d) for d in diffs),
        bias=bias,
        sd_difference=sd,
        loa_lower=bias - LOA_Z * sd,
        loa_upper=bias + LOA_Z * sd,
        pearson_r=r,
    )


def _reliability(scored: Sequence[CaseOutcome]) -> tuple[list[ReliabilityBin], float | None]:
    """Reliability bins of the top-label confidence, and the expected calibration error."""
    members: list[list[CaseOutcome]] = [[] for _ in range(RELIABILITY_BINS)]
    for o in scored:
        if o.confidence is not None:
            # the tolerance keeps decimal edges (0.3, 0.7) in the bin they open despite float rounding
            k = min(math.floor(o.confidence * RELIABILITY_BINS + 1e-9), RELIABILITY_BINS - 1)
            members[k].append(o)
    bins = []
    n_total = sum(len(b) for b in members)
    ece = 0.0
    for k, b in enumerate(members):
        conf = statistics.fmean(o.confidence or 0.0 for o in b) if b else None
        acc = statistics.fmean(float(o.label == o.truth_label) for o in b) if b else None
        if conf is not None and acc is not None:
            ece += len(b) / n_total * abs(acc - conf)
        bins.append(
            ReliabilityBin(
                lower=k / RELIABILITY_BINS,
                upper=(k + 1) / RELIABILITY_BINS,
                n=len(b),
                mean_confidence=conf,
                accuracy=acc,
            )
        )
    return bins, (ece if n_total else None)


def _confusion(
    labelled: Sequence[CaseOutcome], labels: TaskLabels
) -> tuple[list[str], list[str], list[list[int]]]:
    """Rows (true labels), columns (predicted labels, not-assessable last) and counts."""
    rows = list(labels.labels)
    decided_cols = list(labels.labels)
    for o in labelled:
        if o.truth_label is not None and o.truth_label not in rows:
            rows.append(o.truth_label)
        if not _abstains(o, labels) and o.label is not None and o.label not in decided_cols:
            decided_cols.append(o.label)
    cols = [*decided_cols, labels.not_assessable]
    counts = [[0] * len(cols) for _ in rows]
    for o in labelled:
        col = len(cols) - 1 if _abstains(o, labels) else cols.index(o.label or "")
        counts[rows.index(o.truth_label or "")][col] += 1
    return rows, cols, counts


def _cost(outcomes: Sequence[CaseOutcome]) -> CostTotals:
    n = len(outcomes)
    wall_s = sum(o.cost.wall_ms for o in outcomes) / 1000.0
    tool_s = sum(o.cost.tool_ms for o in outcomes) / 1000.0
    model_s = sum(o.cost.model_ms for o in outcomes) / 1000.0
    return CostTotals(
        wall_s=wall_s,
        tool_s=tool_s,
        model_s=model_s,
        mean_wall_s=_ratio(wall_s, n),
        mean_tool_s=_ratio(tool_s, n),
        mean_model_s=_ratio(model_s, n),
        prompt_tokens=sum(o.cost.prompt_tokens for o in outcomes),
        completion_tokens=sum(o.cost.completion_tokens for o in outcomes),
        tool_calls=sum(o.cost.tool_calls for o in outcomes),
        model_calls=sum(o.cost.model_calls for o in outcomes),
    )


def compute_metrics(outcomes: Sequence[CaseOutcome], labels: TaskLabels) -> CohortMetrics:
    """The cohort's counts, classification and calibration metrics, confusion matrix, agreement and cost."""
    from sklearn import metrics as skm

    cases = sorted(outcomes, key=lambda o: o.line)
    completed = [o for o in cases if o.status == "completed"]
    labelled = [o for o in completed if o.truth_label is not None]
    scored = [o for o in labelled if not _abstains(o, labels)]
    y_true = [o.truth_label or "" for o in scored]
    y_pred = [o.label or "" for o in scored]
    defined = bool(scored)
    both_vary = len(set(y_true)) > 1 and len(set(y_pred)) > 1

    flagged = [
        (o.truth_positive, o.positive)
        for o in scored
        if o.truth_positive is not None and o.positive is not None
    ]
    tp = sum(1 for t, p in flagged if t and p)
    fn = sum(1 for t, p in flagged if t and not p)
    tn = sum(1 for t, p in flagged if not t and not p)
    fp = sum(1 for t, p in flagged if not t and p)
    probs = [
        (bool(o.truth_positive), o.positive_probability)
        for o in scored
        if o.truth_positive is not None and o.positive_probability is not None
    ]
    p_true = [t for t, _ in probs]
    p_score = [p for _, p in probs if p is not None]
    both_classes = len(set(p_true)) == 2

    f1_kind: F1Kind = "macro" if len(labels.labels) > 2 else "binary"
    f1 = (
        _sklearn_value(lambda: skm.f1_score(y_true, y_pred, average="macro", zero_division=math.nan))
        if f1_kind == "macro"
        else _ratio(2 * tp, 2 * tp + fp + fn)
    )
    reliability, ece = _reliability(scored)
    rows, cols, counts = _confusion(labelled, labels)
    indicators = sorted({k for o in completed for k in o.truth if k in o.measured})
    agreement = {
        a.indicator: a for a in (indicator_agreement(completed, k) for k in indicators) if a is not None
    }
    return CohortMetrics(
        n_cases=len(cases),
        n_completed=len(completed),
        n_failed=sum(1 for o in cases if o.status == "failed"),
        n_abstained=sum(1 for o in completed if _abstains(o, labels)),
        n_labelled=len(labelled),
        n_scored=len(scored),
        n_truth_positive=tp + fn,
        n_truth_negative=tn + fp,
        n_with_probability=len(probs),
        n_with_confidence=sum(b.n for b in reliability),
        abstention_rate=_ratio(sum(1 for o in completed if _abstains(o, labels)), len(completed)),
        accuracy=_sklearn_value(lambda: skm.accuracy_score(y_true, y_pred)) if defined else None,
        balanced_accuracy=_sklearn_value(lambda: skm.balanced_accuracy_score(y_true, y_pred))
        if defined
        else None,
        mcc=_sklearn_value(lambda: skm.matthews_corrcoef(y_true, y_pred)) if both_vary else None,
        f1=f1 if defined else None,
        f1_kind=f1_kind,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        auroc=_sklearn_value(lambda: skm.roc_auc_score(p_true, p_score)) if both_classes else None,
        ece=ece,
        brier=statistics.fmean((p - float(t)) ** 2 for t, p in zip(p_true, p_score, strict=True))
        if probs
        else None,
        confusion_rows=rows,
        confusion_columns=cols,
        confusion=counts,
        reliability=reliability,
        agreement=agreement,
        cost=_cost(cases),
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_n(value: float | None, n: int) -> str:
    return f"{_num(value)} (n={n})"


def format_metrics(m: CohortMetrics) -> list[tuple[str, str]]:
    """(name, formatted value) rows for a table of the metrics; undefined values show as "—"."""
    rate = "—" if m.abstention_rate is None else f"{m.abstention_rate:.1%}"
    rows = [
        ("cases", str(m.n_cases)),
        ("completed", str(m.n_completed)),
        ("failed", str(m.n_failed)),
        ("abstained", f"{m.n_abstained} ({rate} of completed)"),
        ("labelled", str(m.n_labelled)),
        ("scored", str(m.n_scored)),
        ("accuracy", _num(m.accuracy)),
        ("balanced accuracy", _num(m.balanced_accuracy)),
        ("sensitivity", _with_n(m.sensitivity, m.n_truth_positive)),
        ("specificity", _with_n(m.specificity, m.n_truth_negative)),
        (f"F1 ({m.f1_kind})", _num(m.f1)),
        ("MCC", _num(m.mcc)),
        ("AUROC", _with_n(m.auroc, m.n_with_probability)),
        ("ECE", _with_n(m.ece, m.n_with_confidence)),
        ("Brier", _num(m.brier)),
    ]
    for a in m.agreement.values():
        unit = f" {a.unit}" if a.unit and a.unit not in ("1", "bool", "category") else ""
        rows.append(
            (
                f"{a.indicator} agreement",
                f"bias {a.bias:+.3g}{unit}, LoA [{a.loa_lower:.3g}, {a.loa_upper:.3g}], "
                f"MAE {a.mean_absolute_error:.3g}, r {_num(a.pearson_r)} (n={a.n})",
            )
        )
    c = m.cost
    rows += [
        ("wall time", f"{c.wall_s:.1f} s ({_num(c.mean_wall_s, 2)} s/case)"),
        ("tool time", f"{c.tool_s:.1f} s ({_num(c.mean_tool_s, 2)} s/case)"),
        ("model time", f"{c.model_s:.1f} s ({_num(c.mean_model_s, 2)} s/case)"),
        ("tokens", f"{c.prompt_tokens} prompt, {c.completion_tokens} completion"),
        ("calls", f"{c.tool_calls} tool, {c.model_calls} model"),
    ]
    return rows
