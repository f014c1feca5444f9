"""``run_cohort``: a manifest's cases through an executor, resumable, with metrics at the end.

The cohort id comes from the manifest's path, the task and the options that change results, so
running the same command again continues the same cohort: finished cases are skipped (failed ones
too, unless ``retry_failed``), unfinished ones run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dxgraph.agent._options import RunOptions
from dxgraph.agent.cohort._executors import Executor, make_executor
from dxgraph.agent.cohort._manifest import Manifest, check_rows, read_manifest, task_labels
from dxgraph.agent.cohort._metrics import compute_metrics
from dxgraph.agent.cohort._outcome import CaseOutcome, CohortInfo, ManifestProblem
from dxgraph.agent.cohort._progress import CohortProgress
from dxgraph.agent.cohort._store import CohortStore
from dxgraph.agent.cohort._worker import CaseJob, CohortSettings
from dxgraph.core import Diagnosis
from dxgraph.criteria_kb import CriteriaDocument, criteria_library, retrieve
from dxgraph.errors import UserError
from dxgraph.tools import pick_device
from dxgraph.traces import DiagnosisMade, TraceStore

if TYPE_CHECKING:
    from dxgraph.agent.cohort._metrics import CohortMetrics


@dataclass(frozen=True)
class CohortResult:
    """What ``run_cohort`` returns."""

    cohort_id: str
    """The cohort's id (``dxgraph cohort status|report ID``)."""
    info: CohortInfo
    """The stored description of the cohort."""
    outcomes: tuple[CaseOutcome, ...]
    """Every finished case of the cohort (this call's and earlier ones'), in manifest order."""
    ran: int
    """Cases run by this call."""
    skipped: int
    """Cases skipped because an earlier call finished them."""
    metrics: CohortMetrics
    """Metrics over all finished cases against the manifest's labels and true values."""
    store_url: str
    """Where the runs and the cohort are stored."""

    @property
    def problems(self) -> tuple[ManifestProblem, ...]:
        """Manifest rows that could not run."""
        return self.info.problems

    def diagnosis(self, case_id: str) -> Diagnosis | None:
        """The full Diagnosis of a case, as its stored run recorded it; None when the case has no diagnosis."""
        outcome = next((o for o in self.outcomes if o.case_id == case_id), None)
        if outcome is None:
            raise UserError(f"cohort {self.cohort_id} has no finished case {case_id!r}")
        if outcome.run_id is None:
            return None
        events = TraceStore(self.store_url, create=False).events(outcome.run_id)
        made = [e for e in events if isinstance(e, DiagnosisMade)]
        return made[-1].diagnosis if made else None


def run_cohort(
    cases: str | Path | Sequence[Mapping[str, Any]],
    *,
    task: str,
    workers: int | None = None,
    executor: str | Executor = "local",
    ray_address: str | None = None,
    db: str | None = None,
    cohort_id: str | None = None,
    image_root: str | Path | None = None,
    retry_failed: bool = False,
    options: RunOptions | None = None,
    progress: bool | None = False,
    on_outcome: Callable[[CaseOutcome], None] | None = None,
    max_batch: int = 8,
) -> CohortResult:
    """Diagnose every case of a manifest (a CSV/JSONL path, or rows as dicts) and score the cohort.

    ``workers`` defaults to one per core; ``executor`` is ``local`` or ``ray`` (``ray_address`` joins a
    cluster). ``options`` (``RunOptions``) go to every case's ``diagnose``: aggregator, planner, model, seed,
    preferred tools, extra criteria and device.
    ``progress`` draws a bar on stderr (None: when stderr is a terminal). Row problems do not stop the
    cohort: they are in ``result.problems``. UserError when nothing can run at all.
    """
    if not task or not task.strip():
        raise UserError("a task is needed, such as 'glaucoma'")
    task = task.strip()
    options = options or RunOptions()
    library = criteria_library(options.criteria_dirs)
    doc = retrieve(task, library=library)[0].criteria.document
    options = options.model_copy(update={"device": pick_device(options.device)})
    device = options.device
    runner = (
        make_executor(executor, workers, ray_address=ray_address, device=device)
        if isinstance(executor, str)
        else executor
    )
    manifest = _manifest(cases, doc, image_root)
    if not manifest.cases:
        raise UserError(f"no case of {manifest.path} can run: {_first_problems(manifest.problems)}")
    # nothing is recorded for a manifest without a runnable row: fixing it and rerunning starts afresh
    store = TraceStore(db)
    cohorts = CohortStore(store)
    ident = cohort_id or _cohort_id(manifest, task, options)
    info = cohorts.start(
        CohortInfo(
            cohort_id=ident,
            task=task,
            created_at=datetime.now(UTC),
            manifest=manifest.path.name,  # not its folders, which may name a patient
            manifest_sha256=manifest.sha256,
            n_rows=len(manifest.cases),
            problems=manifest.problems,
            options={
                k: json.dumps(v, default=str) for k, v in sorted(options.model_dump(mode="json").items())
            },
            labels=task_labels(doc),
        )
    )
    if info.task != task:
        raise UserError(f"cohort {ident} asks {info.task!r}, not {task!r}: give another --cohort-id")
    if info.manifest_sha256 != manifest.sha256:
        raise UserError(
            f"{manifest.path} changed since cohort {ident} started (sha256 {info.manifest_sha256[:12]}, now"
            f" {manifest.sha256[:12]}): restore it to resume, or give --cohort-id to start a new cohort"
        )
    attempts = cohorts.attempts(ident)
    jobs = []
    for case in manifest.cases:
        n, status = attempts.get(case.case_id, (0, ""))
        if n == 0:
            jobs.append(CaseJob(case, 1))
        elif status == "failed" and retry_failed:
            jobs.append(CaseJob(case, n + 1))
    settings = CohortSettings(
        cohort_id=ident,
        task=task,
        db_url=store.url,
        labels=info.labels,
        options=options,
        max_batch=max_batch,
    )
    with CohortProgress(len(jobs), enabled=progress, skipped=len(manifest.cases) - len(jobs)) as bar:
        for outcome in runner.run(jobs, settings):
            bar.advance(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

    wanted = {c.case_id for c in manifest.cases}
    outcomes = tuple(o for o in cohorts.outcomes(ident) if o.case_id in wanted)
    return CohortResult(
        cohort_id=ident,
        info=info,
        outcomes=outcomes,
        ran=len(jobs),
        skipped=len(manifest.cases) - len(jobs),
        metrics=compute_metrics(outcomes, info.labels),
        store_url=store.url,
    )


def _manifest(
    cases: str | Path | Sequence[Mapping[str, Any]], doc: CriteriaDocument, image_root: str | Path | None
) -> Manifest:
    """The manifest file read, or rows given in Python checked as if they were one (line = index + 1)."""
    if isinstance(cases, (str, Path)):
        return read_manifest(cases, doc, root=image_root)
    root = Path(image_root or Path.cwd()).expanduser().resolve()
    rows = list(cases)
    ok, problems = check_rows([(i, dict(r)) for i, r in enumerate(rows, start=1)], doc, root)
    data = json.dumps(rows, sort_keys=True, default=str).encode()
    return Manifest(
        path=root / "<python>",
        sha256=hashlib.sha256(data).hexdigest(),
        root=root,
        cases=tuple(ok),
        problems=tuple(problems),
    )


def _cohort_id(manifest: Manifest, task: str, options: RunOptions) -> str:
    """``<manifest stem>-<8 hex>`` from the manifest's path (or rows), the task and the result options."""
    key = {
        "manifest": manifest.sha256 if manifest.path.name == "<python>" else str(manifest.path),
        "root": str(manifest.root),
        "task": task,
        "options": options.result_options(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    stem = manifest.path.stem if manifest.path.name != "<python>" else "cohort"
    return f"{stem}-{digest}"


def _first_problems(problems: Sequence[ManifestProblem], n: int = 3) -> str:
    """The first few problems on one line."""
    shown = "; ".join(f"line {p.line}: {p.message}" for p in problems[:n])
    return shown + (f"; ... ({len(problems) - n} more)" if len(problems) > n else "")
