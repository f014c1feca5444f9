"""Cohorts: many cases from a manifest, concurrently, resumable, with metrics and a report.

``run_cohort`` reads a CSV/JSONL manifest (or rows given in Python), runs each case's ``diagnose``
through an executor (local processes, or Ray), records every case in the run's own transaction so a
killed cohort resumes where it stopped, and scores the cohort against the manifest's labels and true
values (``compute_metrics``); ``render_cohort_report`` draws it as one HTML page.
"""

from dxgraph.agent.cohort._executors import EXECUTORS, Executor, LocalExecutor, default_workers, make_executor
from dxgraph.agent.cohort._manifest import CohortCase, Manifest, check_rows, read_manifest, task_labels
from dxgraph.agent.cohort._metrics import (
    CohortMetrics,
    CostTotals,
    IndicatorAgreement,
    ReliabilityBin,
    agreement_pairs,
    compute_metrics,
    format_metrics,
    indicator_agreement,
)
from dxgraph.agent.cohort._outcome import CaseCost, CaseOutcome, CohortInfo, ManifestProblem, TaskLabels
from dxgraph.agent.cohort._progress import CohortProgress
from dxgraph.agent.cohort._report import render_cohort_report
from dxgraph.agent.cohort._runner import CohortResult, run_cohort
from dxgraph.agent.cohort._store import CohortRow, CohortStore, case_row, cohort_row
from dxgraph.agent.cohort._worker import (
    CaseJob,
    CaseWorker,
    CohortSettings,
    failed_outcome,
    limit_cpu_threads,
    recorded_outcome,
    run_cost,
)

__all__ = [
    "EXECUTORS",
    "CaseCost",
    "CaseJob",
    "CaseOutcome",
    "CaseWorker",
    "CohortCase",
    "CohortInfo",
    "CohortMetrics",
    "CohortProgress",
    "CohortResult",
    "CohortRow",
    "CohortSettings",
    "CohortStore",
    "CostTotals",
    "Executor",
    "IndicatorAgreement",
    "LocalExecutor",
    "Manifest",
    "ManifestProblem",
    "ReliabilityBin",
    "TaskLabels",
    "agreement_pairs",
    "case_row",
    "check_rows",
    "cohort_row",
    "compute_metrics",
    "default_workers",
    "failed_outcome",
    "format_metrics",
    "indicator_agreement",
    "limit_cpu_threads",
    "make_executor",
    "read_manifest",
    "recorded_outcome",
    "render_cohort_report",
    "run_cohort",
    "run_cost",
    "task_labels",
]
