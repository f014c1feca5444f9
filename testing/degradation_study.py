"""Degradation study: a phantom cohort (glaucoma fundus photographs or cardiomegaly radiographs) under
noise, blur, low contrast and JPEG at three severities, run through ``run_cohort``, scored per
condition and per severity.

For each condition it reports how often the image-quality assessment flags the applied problem, the
mean Diagnosis confidence (abstentions count as 0), the abstention rate, accuracy and ECE of the
decided cases, and the error of the task's main indicator (vCDR, CTR).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dxgraph.agent import RunOptions
from dxgraph.agent.cohort import CaseOutcome, TaskLabels, compute_metrics, run_cohort
from dxgraph.core import GRADES, QualityProblem
from dxgraph.errors import UserError
from dxgraph.imaging import assess_image_quality, read_image
from dxgraph.testing.cohort_phantoms import write_cardiomegaly_cohort, write_glaucoma_cohort
from dxgraph.testing.degradations import DEGRADATION_KINDS, SEVERITIES, DegradationKind

STUDY_CONDITIONS: tuple[tuple[DegradationKind, int], ...] = (
    ("noise", 0),
    *((k, s) for k in DEGRADATION_KINDS for s in SEVERITIES),
)
"""The clean phantoms once (severity 0), then every kind at every severity."""

PROBLEM_OF: dict[DegradationKind, QualityProblem] = {
    "noise": "noise",
    "blur": "blur",
    "low_contrast": "low_contrast",
    "jpeg": "jpeg_artefacts",
}
"""The quality problem that should be flagged for each kind of degradation."""

STUDY_TASKS = {
    "glaucoma": (write_glaucoma_cohort, "vcdr"),
    "cardiomegaly": (write_cardiomegaly_cohort, "ctr"),
}
"""Tasks a study can run: the phantom cohort writer and the indicator whose error is reported."""


class ConditionResult(BaseModel):
    """One condition (a kind at a severity, or every kind pooled at a severity)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    kind: str
    """Degradation kind; ``clean`` at severity 0, ``all`` for kinds pooled."""
    severity: int
    """0 clean, 1 mild, 2 moderate, 3 severe."""
    n_cases: int
    """Cases completed."""
    n_flagged: int
    """Images whose quality assessment flags the applied problem (any problem, for clean images)."""
    n_graded_at_severity: int
    """Images flagged with the grade matching the severity (mild = 1...)."""
    n_abstained: int
    """Cases whose diagnosis abstained."""
    mean_confidence: float
    """Mean Diagnosis confidence, abstentions counted as 0."""
    accuracy: float | None
    """Accuracy of the decided cases against the phantoms' true labels."""
    ece: float | None
    """Expected calibration error of the decided cases (10 bins)."""
    indicator_mae: float | None
    """Mean absolute error of the study's indicator (vCDR, CTR) over the decided cases."""


class DegradationStudy(BaseModel):
    """Per-condition and per-severity results of a degradation study."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    task: str
    """The task the phantoms were diagnosed for."""
    indicator: str
    """The indicator whose error is reported."""
    n_phantoms: int
    """Phantoms per condition."""
    conditions: tuple[ConditionResult, ...]
    """Each kind at each severity (and the clean set)."""
    by_severity: tuple[ConditionResult, ...]
    """Every kind pooled at each severity (severity 0: the clean set)."""

    def condition(self, kind: str, severity: int) -> ConditionResult:
        """The result of one kind at one severity (``all`` for the pooled rows)."""
        rows = self.by_severity if kind == "all" else self.conditions
        return next(r for r in rows if r.severity == severity and (kind == "all" or r.kind == kind))


def _score(
    kind: str,
    severity: int,
    outcomes: list[CaseOutcome],
    flags: list[tuple[bool, bool]],
    labels: TaskLabels,
    indicator: str,
) -> ConditionResult:
    m = compute_metrics(outcomes, labels)
    agreement = m.agreement.get(indicator)
    return ConditionResult(
        kind=kind,
        severity=severity,
        n_cases=m.n_completed,
        n_flagged=sum(f for f, _ in flags),
        n_graded_at_severity=sum(g for _, g in flags),
        n_abstained=m.n_abstained,
        mean_confidence=sum(o.confidence or 0.0 for o in outcomes) / max(len(outcomes), 1),
        accuracy=m.accuracy,
        ece=m.ece,
        indicator_mae=agreement.mean_absolute_error if agreement else None,
    )


def _flagged(image: Path, kind: DegradationKind, severity: int) -> tuple[bool, bool]:
    """Whether the image's quality assessment flags the applied problem, and at the matching grade."""
    grades = assess_image_quality(read_image(image).array).grades
    if severity == 0:
        return bool(grades), not grades
    grade = grades.get(PROBLEM_OF[kind])
    return grade is not None, grade == GRADES[severity - 1]


def run_degradation_study(
    folder: str | Path,
    n: int = 12,
    *,
    task: str = "glaucoma",
    seed: int = 0,
    conditions: Sequence[tuple[DegradationKind, int]] = STUDY_CONDITIONS,
    workers: int | None = None,
    db: str | None = None,
    progress: bool | None = False,
    prefer_tools: Sequence[str] = (),
) -> DegradationStudy:
    """Write ``n`` phantoms of ``task`` (``STUDY_TASKS``) under every condition to ``folder``, diagnose
    them as one cohort (``prefer_tools`` as for ``diagnose``), score."""
    if task not in STUDY_TASKS:
        raise UserError(f"no degradation study for {task!r}; choose one of {', '.join(STUDY_TASKS)}")
    write, indicator = STUDY_TASKS[task]
    folder = Path(folder)
    manifest = write(folder, n, seed=seed, conditions=conditions)
    result = run_cohort(
        manifest,
        task=task,
        workers=workers,
        db=db or f"sqlite:///{folder / 'runs.db'}",
        progress=progress,
        options=RunOptions(prefer_tools=tuple(prefer_tools)),
    )
    labels = result.info.labels
    by_case = {o.case_id: o for o in result.outcomes}
    rows, pooled = [], []
    for severity in sorted({s for _, s in conditions}):
        pool_outcomes: list[CaseOutcome] = []
        pool_flags: list[tuple[bool, bool]] = []
        for kind in dict.fromkeys(k for k, s in conditions if s == severity):
            name = kind if severity else "clean"
            cases = [f"{name}-{severity}-{i:03d}" for i in range(n)]
            outcomes = [by_case[c] for c in cases if c in by_case]
            flags = [
                _flagged(folder / "images" / f"{c.replace('-', '_')}.png", kind, severity) for c in cases
            ]
            rows.append(_score(name, severity, outcomes, flags, labels, indicator))
            pool_outcomes += outcomes
            pool_flags += flags
        pooled.append(_score("all", severity, pool_outcomes, pool_flags, labels, indicator))
    return DegradationStudy(
        task=task, indicator=indicator, n_phantoms=n, conditions=tuple(rows), by_severity=tuple(pooled)
    )


def format_study(study: DegradationStudy) -> str:
    """The study as a plain-text table, one row per condition, then the pooled rows."""

    def f(v: float | None, p: int = 3) -> str:
        return "-" if v is None else f"{v:.{p}f}"

    head = f"{'kind':<13}{'sev':>4}{'n':>5}{'flagged':>9}{'graded':>8}{'abstain':>9}{'conf':>7}{'acc':>7}{'ECE':>7}{study.indicator + ' MAE':>10}"
    lines = [head, "-" * len(head)]
    for r in (*study.conditions, *study.by_severity):
        if r.kind == "all" and r.severity == 1:
            lines.append("-" * len(head))
        lines.append(
            f"{r.kind:<13}{r.severity:>4}{r.n_cases:>5}{r.n_flagged:>9}{r.n_graded_at_severity:>8}"
            f"{r.n_abstained:>9}{f(r.mean_confidence):>7}{f(r.accuracy):>7}{f(r.ece):>7}{f(r.indicator_mae):>10}"
        )
    return "\n".join(lines)
