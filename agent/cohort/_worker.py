"""Running one cohort case where a worker is: diagnose it and record its outcome with its run.

A worker (a process of the local pool, a Ray actor, or a thread) opens the trace store once and
keeps its models loaded between cases (``cached_model``). Every executor calls ``CaseWorker.run``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlmodel import SQLModel

from dxgraph.agent._options import RunOptions
from dxgraph.agent._run import diagnose
from dxgraph.agent.cohort._manifest import CohortCase
from dxgraph.agent.cohort._outcome import CaseCost, CaseOutcome, FailureKind, TaskLabels
from dxgraph.agent.cohort._store import CohortStore, case_row
from dxgraph.core import Diagnosis
from dxgraph.errors import UserError
from dxgraph.tools import BatchingDispatcher, ToolCaller, ToolRegistry
from dxgraph.traces import DuplicateRecord, ModelCalled, RunFinished, ToolCalled, TraceRecorder, TraceStore


@dataclass(frozen=True)
class CohortSettings:
    """What every worker needs to run the cohort's cases (picklable)."""

    cohort_id: str
    """The cohort."""
    task: str
    """The question asked of every case."""
    db_url: str
    """The trace store's URL (every worker writes there)."""
    labels: TaskLabels
    """The task's labels: which are positive."""
    options: RunOptions = field(default_factory=RunOptions)
    """The run options of every case: aggregator, planner, model, seed, preferred tools, criteria, device."""
    max_batch: int = 8
    """Largest batch of a batchable tool across concurrent cases of one worker."""
    registry: ToolRegistry | None = None
    """The tools the cases may use; None: the built-in tools and the installed plugins. A registry given
    here travels only to workers in this process (threads), not to worker processes or Ray actors."""


@dataclass(frozen=True)
class CaseJob:
    """One case to run, and which attempt this is."""

    case: CohortCase
    """The manifest row."""
    attempt: int = 1
    """1 for the first attempt."""


class CaseWorker:
    """Runs cohort cases in one process: one store connection, one batcher, models loaded once."""

    def __init__(
        self, settings: CohortSettings, *, cpu_threads: int | None = None, tools: ToolCaller | None = None
    ) -> None:
        if cpu_threads is not None:
            limit_cpu_threads(cpu_threads)
        self.settings = settings
        """The cohort's settings."""
        self.store = TraceStore(settings.db_url)
        """The trace store."""
        self.batcher: ToolCaller = tools or BatchingDispatcher(max_batch=settings.max_batch)
        """Runs the tool calls: batches concurrent calls of batchable tools (GPU models) across this
        worker's cases, or sends them to a tool server."""
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        """Host and process id, recorded with each case."""

    def run(self, job: CaseJob) -> CaseOutcome:
        """Diagnose one case and record it; a case another worker recorded first comes back as stored."""
        s = self.settings
        case = job.case
        t0 = time.perf_counter()
        made: list[CaseOutcome] = []

        def record(rec: TraceRecorder, diagnosis: Diagnosis | None, error: str | None) -> Sequence[SQLModel]:
            outcome = self._outcome(case, rec, diagnosis, error)
            made.append(outcome)
            return [case_row(outcome, job.attempt)]

        try:
            diagnose(
                s.task,
                list(case.images),
                s.options,
                store=self.store,
                modality=case.modality,
                clinical_text=case.clinical_text,
                laterality=case.laterality,  # type: ignore[arg-type]
                case_id=case.case_id,
                batcher=self.batcher,
                registry=s.registry,
                record_with=record,
            )
        except DuplicateRecord:
            return self._stored(case.case_id, job.attempt)
        except UserError as e:  # bad input: nothing was stored, so record the failure alone
            outcome = self._failed(case, "input", _without_folders(str(e), case), t0)
            try:
                self.store.insert([case_row(outcome, job.attempt)])
            except DuplicateRecord:
                return self._stored(case.case_id, job.attempt)
            return outcome
        except Exception as e:  # noqa: BLE001 -- a bug in one case: its run is stored with status error
            if made:
                return made[-1]
            outcome = self._failed(case, "bug", f"{type(e).__name__}: {e}", t0)
            self.store.insert([case_row(outcome, job.attempt)])
            return outcome
        return made[-1]

    def _stored(self, case_id: str, attempt: int) -> CaseOutcome:
        """The outcome another worker recorded for this attempt."""
        for o in CohortStore(self.store).outcomes(self.settings.cohort_id):
            if o.case_id == case_id:
                return o
        raise RuntimeError(f"case {case_id} attempt {attempt} reported stored but not found")

    def _failed(self, case: CohortCase, kind: FailureKind, error: str, t0: float) -> CaseOutcome:
        wall_ms = (time.perf_counter() - t0) * 1000
        return failed_outcome(self.settings.cohort_id, case, kind, error, self.name, wall_ms)

    def _outcome(
        self, case: CohortCase, rec: TraceRecorder, diagnosis: Diagnosis | None, error: str | None
    ) -> CaseOutcome:
        """The outcome of a run that was recorded (completed, or stopped by a bug)."""
        s = self.settings
        return recorded_outcome(s.cohort_id, case, s.labels, rec, diagnosis, error, self.name)


def failed_outcome(
    cohort_id: str, case: CohortCase, kind: FailureKind, error: str, worker: str, wall_ms: float = 0.0
) -> CaseOutcome:
    """The outcome of a case that failed before a run was recorded (``kind``: input or bug)."""
    return CaseOutcome(
        cohort_id=cohort_id,
        case_id=case.case_id,
        line=case.line,
        status="failed",
        failure=kind,
        error=error,
        truth_label=case.truth_label,
        truth_positive=case.truth_positive,
        truth=case.truth,
        cost=CaseCost(wall_ms=wall_ms),
        finished_at=datetime.now(UTC),
        worker=worker,
    )


def recorded_outcome(
    cohort_id: str,
    case: CohortCase,
    labels: TaskLabels,
    rec: TraceRecorder,
    diagnosis: Diagnosis | None,
    error: str | None,
    worker: str,
) -> CaseOutcome:
    """The outcome of a case whose run was recorded (completed, or stopped by a bug), scored by ``labels``."""
    base = {
        "cohort_id": cohort_id,
        "case_id": case.case_id,
        "line": case.line,
        "run_id": rec.run_id,
        "truth_label": case.truth_label,
        "truth_positive": case.truth_positive,
        "truth": case.truth,
        "cost": run_cost(rec),
        "finished_at": datetime.now(UTC),
        "worker": worker,
    }
    if diagnosis is None:
        return CaseOutcome(status="failed", failure="bug", error=error, **base)
    deciding = next((c for c in diagnosis.criteria if c.label == diagnosis.label), None)
    deciding = deciding or (diagnosis.criteria[0] if diagnosis.criteria else None)
    measured: dict[str, float] = {}
    units: dict[str, str] = {}
    for v in deciding.indicators if deciding else ():
        if isinstance(v.value, (int, float)) and not isinstance(v.value, bool):
            measured[v.indicator] = float(v.value)
            units[v.indicator] = v.unit
    return CaseOutcome(
        status="completed",
        criteria_id=deciding.criteria_id if deciding else None,
        label=diagnosis.label,
        positive=None if diagnosis.abstained else diagnosis.label in labels.positive,
        confidence=diagnosis.confidence,
        abstained=diagnosis.abstained,
        measured=measured,
        units=units,
        **base,
    )


def _without_folders(message: str, case: CohortCase) -> str:
    """A message with the case's image paths cut to their base names (folders may name a patient)."""
    for spec in sorted(case.images, key=lambda s: -len(str(s.path))):
        message = message.replace(str(spec.path), spec.path.name)
    return message


def run_cost(rec: TraceRecorder) -> CaseCost:
    """Time and tokens of a recorded run, summed over its events."""
    tool_ms = model_ms = 0.0
    prompt = completion = tools = models = 0
    wall_ms = 0.0
    for ev in rec.events:
        if isinstance(ev, ToolCalled):
            tool_ms += ev.duration_ms
            tools += 1
        elif isinstance(ev, ModelCalled):
            model_ms += ev.latency_ms
            prompt += ev.prompt_tokens or 0
            completion += ev.completion_tokens or 0
            models += 1
        elif isinstance(ev, RunFinished):
            wall_ms = ev.duration_ms
    return CaseCost(
        wall_ms=wall_ms,
        tool_ms=tool_ms,
        model_ms=model_ms,
        prompt_tokens=prompt,
        completion_tokens=completion,
        tool_calls=tools,
        model_calls=models,
    )


def limit_cpu_threads(n: int) -> None:
    """Cap the threads torch and OpenCV use in this process (workers sharing the cores)."""
    n = max(1, n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)
