"""Cohorts on the server: ``/v1/cohorts`` to submit, list, and read a cohort's status, report and progress.

``POST /v1/cohorts`` takes the task, the run options a client may set, and either a manifest uploaded
with its images (files, or one zip archive unpacked without trusting it) or a manifest under the server's
data root (``dxgraph serve --data-root``). The manifest is read and checked as ``dxgraph cohort run``
reads it (rows with a problem are reported and left out), and the cohort is accepted whole, one job per
runnable case (``_cohort_submit``); each case then ends exactly once like any job. Each case's outcome is recorded with its run, so the
cohort's status, metrics and report (``GET /v1/cohorts/{id}``, ``/report``, ``/events``) are those of
``dxgraph cohort status|report``. Researchers see their own cohorts; auditors see every cohort, also
those run from the command line into the same store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from dxgraph.agent.cohort import (
    CaseOutcome,
    CohortInfo,
    CohortMetrics,
    CohortRow,
    CohortStore,
    ManifestProblem,
    compute_metrics,
    render_cohort_report,
)
from dxgraph.errors import StoreError
from dxgraph.server._accounts import Principal
from dxgraph.server._auth import Reader, Researcher
from dxgraph.server._cohort_submit import (
    CohortJobRow,
    cohort_job_ids,
    cohort_owner,
    retry_failed_cases,
    submit_cohort,
)
from dxgraph.server._errors import ApiError
from dxgraph.server._jobs import JobQueue, JobStatus
from dxgraph.server._progress import sse_response, status_events
from dxgraph.server._state import accounts_of, queue_of
from dxgraph.server._submit import IdempotencyKey


class CohortSummary(BaseModel):
    """A cohort in a list: what it asks and how far it has come."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    cohort_id: str
    """The cohort's id."""
    task: str
    """The question asked of every case."""
    created_at: datetime
    """When it was accepted (UTC)."""
    submitted_by: str | None
    """The submitting token's name; None for a cohort run from the command line."""
    manifest: str
    """The manifest's file name."""
    n_cases: int
    """Runnable cases."""
    completed: int
    """Cases that ended with a diagnosis (an abstention included)."""
    failed: int
    """Cases that ended without one."""
    unfinished: int
    """Cases still waiting or running."""
    n_problems: int
    """Manifest rows that could not run."""

    @property
    def done(self) -> bool:
        """Whether every case has ended."""
        return self.unfinished == 0


class CohortCaseState(BaseModel):
    """One case of a cohort: where its job is and, once ended, what it came to."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    case_id: str
    """The case's id from the manifest."""
    line: int
    """Its manifest line."""
    status: JobStatus
    """pending, running, completed or failed."""
    job_id: str | None = None
    """Its job; None for a cohort run from the command line."""
    run_id: str | None = None
    """The stored run, once there is one."""
    label: str | None = None
    """The predicted label."""
    positive: bool | None = None
    """Whether the label is a positive finding; None when it abstained or failed."""
    confidence: float | None = None
    """The diagnosis's confidence."""
    abstained: bool = False
    """Whether the run declined to decide."""
    truth_label: str | None = None
    """The manifest's true label, when given."""
    error: str | None = None
    """Why it failed."""


class CohortStatus(BaseModel):
    """A cohort whole: its summary, every case, the manifest's problems and the metrics so far."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    summary: CohortSummary
    """Counts."""
    pending: int
    """Cases waiting for a worker."""
    running: int
    """Cases a worker holds."""
    done: bool
    """Whether every case has ended."""
    cases: list[CohortCaseState]
    """Every case, in manifest order."""
    problems: tuple[ManifestProblem, ...]
    """Manifest rows that could not run."""
    options: dict[str, str]
    """The run options of every case."""
    metrics: CohortMetrics | None
    """Metrics over the ended cases against the manifest's labels and true values; None before any ended."""


class CohortRetried(BaseModel):
    """The answer to a retry of a cohort's failed cases."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)
    cohort_id: str
    """The cohort."""
    requeued: int
    """Failed cases queued again (0: none had failed, or an earlier retry queued them)."""
    status_url: str
    """Where its status is."""


_LINKS = CohortJobRow.__table__  # type: ignore[attr-defined]


def visible_cohort(queue: JobQueue, who: Principal, cohort_id: str) -> CohortInfo:
    """The cohort, when ``who`` may read it (its submitter, or an auditor); 404 otherwise.

    Auditors may give a unique prefix of the id; researchers give the whole id."""
    cohorts = CohortStore(queue.store)
    try:
        full = cohorts.resolve(cohort_id) if who.role == "auditor" else cohort_id
        info = cohorts.info(full)
    except (StoreError, AssertionError):
        info = None
    mine = info is not None and info.cohort_id == cohort_id and cohort_owner(queue, cohort_id) == who.name
    if info is None or (who.role != "auditor" and not mine):
        raise ApiError(404, f"no cohort {cohort_id!r} of yours")
    return info


def cohort_summaries(queue: JobQueue, who: Principal, limit: int = 100) -> list[CohortSummary]:
    """The cohorts ``who`` may see, newest first: their own, or every cohort for an auditor."""
    results = sa.table("job_results", sa.column("job_id"), sa.column("status"))
    cohorts = CohortRow.__table__  # type: ignore[attr-defined]
    counts = (
        sa.select(
            _LINKS.c.cohort_id,
            sa.func.min(_LINKS.c.submitted_by).label("submitted_by"),
            sa.func.count().label("n"),
            sa.func.sum(sa.case((results.c.status == "completed", 1), else_=0)).label("completed"),
            sa.func.sum(sa.case((results.c.status == "failed", 1), else_=0)).label("failed"),
        )
        .select_from(_LINKS.outerjoin(results, results.c.job_id == _LINKS.c.job_id))
        .group_by(_LINKS.c.cohort_id)
        .subquery("counts")
    )
    q = (
        sa.select(cohorts.c.info, counts.c.submitted_by, counts.c.n, counts.c.completed, counts.c.failed)
        .select_from(cohorts.outerjoin(counts, counts.c.cohort_id == cohorts.c.cohort_id))
        .order_by(cohorts.c.created_at.desc(), cohorts.c.cohort_id)
        .limit(limit)
    )
    if who.role != "auditor":
        q = q.where(counts.c.submitted_by == who.name)
    with queue.store.engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for info_json, submitted_by, n, completed, failed in rows:
        info = CohortInfo.model_validate_json(info_json)
        if n is None:  # run from the command line: its case rows say how far it came
            outcomes = CohortStore(queue.store).outcomes(info.cohort_id)
            completed = sum(1 for o in outcomes if o.status == "completed")
            failed = len(outcomes) - completed
            n = max(info.n_rows, len(outcomes))
        out.append(_summary(info, submitted_by, int(n), int(completed or 0), int(failed or 0)))
    return out


def _summary(
    info: CohortInfo, submitted_by: str | None, n: int, completed: int, failed: int
) -> CohortSummary:
    return CohortSummary(
        cohort_id=info.cohort_id,
        task=info.task,
        created_at=info.created_at,
        submitted_by=submitted_by,
        manifest=info.manifest,
        n_cases=n,
        completed=completed,
        failed=failed,
        unfinished=max(0, n - completed - failed),
        n_problems=len(info.problems),
    )


def cohort_status(queue: JobQueue, info: CohortInfo) -> CohortStatus:
    """The cohort's cases, counts and metrics as they stand."""
    outcomes = {o.case_id: o for o in CohortStore(queue.store).outcomes(info.cohort_id)}
    job_ids = cohort_job_ids(queue, info.cohort_id)
    jobs = queue.infos(list(job_ids.values()))
    cases: list[CohortCaseState] = []
    for case_id, job_id in job_ids.items():
        job = jobs.get(job_id)
        o = outcomes.get(case_id)
        status: JobStatus = job.status if job is not None else "pending"
        if o is not None and (job is None or job.done):  # a retried case is its new job's until that ends
            status = "completed" if o.status == "completed" else "failed"
        cases.append(_case_state(case_id, o, status, job_id, job.error if job else None))
    for case_id, o in outcomes.items():  # a cohort run from the command line has no jobs
        if case_id not in job_ids:
            cases.append(
                _case_state(case_id, o, "completed" if o.status == "completed" else "failed", None, None)
            )
    cases.sort(key=lambda c: (c.line, c.case_id))
    completed = sum(1 for c in cases if c.status == "completed")
    failed = sum(1 for c in cases if c.status == "failed")
    pending = sum(1 for c in cases if c.status == "pending")
    running = sum(1 for c in cases if c.status == "running")
    n = max(info.n_rows, len(cases))
    pending += n - len(cases)  # a command-line cohort's cases not yet recorded
    finished = list(outcomes.values())
    return CohortStatus(
        summary=_summary(info, cohort_owner(queue, info.cohort_id), n, completed, failed),
        pending=pending,
        running=running,
        done=completed + failed >= n,
        cases=cases,
        problems=info.problems,
        options=info.options,
        metrics=compute_metrics(finished, info.labels) if finished else None,
    )


def _case_state(
    case_id: str, o: CaseOutcome | None, status: JobStatus, job_id: str | None, job_error: str | None
) -> CohortCaseState:
    if o is None:
        return CohortCaseState(case_id=case_id, line=1, status=status, job_id=job_id, error=job_error)
    return CohortCaseState(
        case_id=case_id,
        line=o.line,
        status=status,
        job_id=job_id,
        run_id=o.run_id,
        label=o.label,
        positive=o.positive,
        confidence=o.confidence,
        abstained=o.abstained,
        truth_label=o.truth_label,
        error=o.error or job_error,
    )


def cohort_report(queue: JobQueue, info: CohortInfo, run_link: str = "/runs/{run_id}") -> str:
    """The cohort's HTML report over its ended cases, each case linked to its run."""
    outcomes = CohortStore(queue.store).outcomes(info.cohort_id)
    links = {o.case_id: run_link.format(run_id=o.run_id) for o in outcomes if o.run_id}
    return render_cohort_report(info, outcomes, compute_metrics(outcomes, info.labels), links)


def cohort_events(queue: JobQueue, info: CohortInfo) -> StreamingResponse:
    """The cohort's progress as SSE: ``status`` (its summary, pending and running) at each change, then ``done``."""

    def fetch() -> CohortStatus:
        return cohort_status(queue, info)

    def as_json(s: CohortStatus) -> dict[str, Any]:
        return {
            **s.summary.model_dump(mode="json"),
            "pending": s.pending,
            "running": s.running,
            "done": s.done,
        }

    return sse_response(
        status_events(
            fetch,
            lambda s: (s.pending, s.running, s.summary.completed, s.summary.failed),
            lambda s: s.done,
            as_json,
            lambda s: {
                "cohort_id": s.summary.cohort_id,
                "completed": s.summary.completed,
                "failed": s.summary.failed,
            },
            poll_s=1.0,
        )
    )


# -- the routes ------------------------------------------------------------------------------------


def cohorts_router() -> APIRouter:
    """``/v1/cohorts``: submit, list, status, report and progress."""
    v1 = APIRouter(prefix="/v1", tags=["cohorts"])

    @v1.post("/cohorts", status_code=202)
    async def submit(
        request: Request,
        who: Researcher,
        task: Annotated[str, Form(min_length=1, max_length=200, description="The question, e.g. glaucoma.")],
        manifest: Annotated[UploadFile | None, File(description="A CSV or JSONL manifest.")] = None,
        files: Annotated[
            list[UploadFile], File(description="The manifest's images, named by their paths in it.")
        ] = [],  # noqa: B006 -- FastAPI copies defaults
        archive: Annotated[UploadFile | None, File(description="A zip of the manifest's images.")] = None,
        manifest_path: Annotated[
            str | None, Form(max_length=4096, description="A manifest under the server's data root.")
        ] = None,
        image_root: Annotated[
            str | None, Form(max_length=4096, description="Its images' folder under the data root.")
        ] = None,
        options: Annotated[str | None, Form(max_length=20_000, description="Run options as JSON.")] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Queue a cohort: every runnable case of the manifest becomes a job; 202 with the cohort."""
        accepted = await submit_cohort(
            request,
            who,
            task=task,
            options=options,
            manifest=manifest,
            files=files,
            archive=archive,
            manifest_path=manifest_path,
            image_root=image_root,
            idempotency_key=idempotency_key,
        )
        return JSONResponse(
            accepted.model_dump(mode="json"), status_code=202, headers={"Location": accepted.status_url}
        )

    @v1.post("/cohorts/{cohort_id}/retry", status_code=202)
    def retry(request: Request, cohort_id: str, who: Researcher) -> CohortRetried:
        """Queue the failed cases of one's ended cohort again (409 while cases are unfinished)."""
        queue = queue_of(request)
        info = visible_cohort(queue, who, cohort_id)
        n = retry_failed_cases(queue, who, info.cohort_id)
        return CohortRetried(cohort_id=info.cohort_id, requeued=n, status_url=f"/v1/cohorts/{info.cohort_id}")

    @v1.get("/cohorts")
    def cohorts(request: Request, who: Reader, limit: int = Query(100, ge=1, le=1000)) -> list[CohortSummary]:
        """Cohorts, newest first: every cohort for an auditor, their own for a researcher."""
        return cohort_summaries(queue_of(request), who, limit)

    @v1.get("/cohorts/{cohort_id}")
    def status(request: Request, cohort_id: str, who: Reader) -> CohortStatus:
        """A cohort's cases, counts and metrics as they stand (its submitter, or an auditor)."""
        queue = queue_of(request)
        info = visible_cohort(queue, who, cohort_id)
        accounts_of(request).log_access(who, "read_cohort", info.cohort_id)
        return cohort_status(queue, info)

    @v1.get("/cohorts/{cohort_id}/report", response_class=HTMLResponse)
    def report(request: Request, cohort_id: str, who: Reader) -> HTMLResponse:
        """The cohort's HTML report over its ended cases."""
        queue = queue_of(request)
        info = visible_cohort(queue, who, cohort_id)
        accounts_of(request).log_access(who, "read_cohort_report", info.cohort_id)
        return HTMLResponse(cohort_report(queue, info))

    @v1.get(
        "/cohorts/{cohort_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "The cohort's progress."}},
    )
    def events(request: Request, cohort_id: str, who: Reader) -> StreamingResponse:
        """The cohort's progress as Server-Sent Events: ``status`` at each change, then ``done``."""
        queue = queue_of(request)
        return cohort_events(queue, visible_cohort(queue, who, cohort_id))

    return v1
