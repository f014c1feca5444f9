"""The job queue of the server, kept in the trace store's own database, and the workers that drain it.

A submitted job is a row of ``jobs`` (the request as JSON; its images are artifacts of the store). A
worker claims the oldest unfinished job whose lease has run out by inserting the next attempt's row of
``job_claims`` under the primary key (job id, attempt): two workers racing for one job insert the same
key and one of them loses with DuplicateRecord (on PostgreSQL ``FOR UPDATE SKIP LOCKED`` also keeps
them off each other's job). While it runs, the worker renews its lease with rows of ``job_heartbeats``.
The job ends with its one row of ``job_results`` (primary key: the job id), written in the same
transaction as the run it made, so a job has at most one result and a run, once stored, always has its
result. A worker killed mid-job leaves a claim whose lease runs out; another worker then takes the job
again, and a job whose workers died ``max_attempts`` times is ended as failed instead of being retried
for ever. Everything is insert-only, like the runs.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel

from dxgraph.agent import RunOptions, diagnose
from dxgraph.agent.cohort import (
    CohortCase,
    CohortStore,
    TaskLabels,
    case_row,
    failed_outcome,
    recorded_outcome,
)
from dxgraph.core import Diagnosis, ImageSpec
from dxgraph.errors import StoreError, UserError
from dxgraph.tools import BatchingDispatcher, ToolCaller, ToolRegistry
from dxgraph.traces import DuplicateRecord, TraceRecorder, TraceStore

log = logging.getLogger(__name__)

JobStatus = Literal["pending", "running", "completed", "failed"]
"""Where a job is: waiting for a worker (or for a retry), held by a worker's live lease, or ended."""
LEASE_S = 60.0
"""Default lease of a claim, in seconds: a worker that stops renewing it for this long is taken for dead."""
MAX_ATTEMPTS = 3
"""Default number of claims a job may use up without a result before it is ended as failed."""
MAX_IMAGES = 64
"""Most images in one job."""
_SHA256 = r"^[0-9a-f]{64}$"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def relative_data_path(text: str) -> PurePosixPath:
    """A path relative to the server's data root, checked: ``/`` separated, not absolute, no ``..``;
    ValueError otherwise."""
    p = PurePosixPath(text)
    if not text or "\x00" in text or "\\" in text or p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"{text!r}: give a path relative to the data root, with / and without '..'")
    return p


def resolve_data_path(root: Path | None, text: str) -> Path:
    """The file or folder ``text`` names under the data root; UserError when there is no root, or the path
    leaves it (through ``..`` or a link) or names nothing."""
    if root is None:
        raise UserError("this server has no data root for server-side paths (dxgraph serve --data-root)")
    try:
        rel = relative_data_path(text)
    except ValueError as e:
        raise UserError(str(e)) from None
    base = root.resolve()
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise UserError(f"{text!r} leaves the data root")
    if not full.exists():
        raise UserError(f"no file or folder {text!r} under the data root")
    return full


class JobNotFound(UserError):
    """No job of that id in the store."""


# -- the rows (insert-only; created by migration 5) -------------------------------------------------


class JobRow(SQLModel, table=True):
    """One submitted job: who asked for what, when."""

    __tablename__ = "jobs"
    job_id: str = SQLField(primary_key=True)
    """Random id (32 hex digits)."""
    submitted_at: datetime = SQLField(index=True)
    """When it was accepted (UTC)."""
    submitted_by: str = SQLField(index=True)
    """The name of the token that submitted it."""
    task: str
    """The question asked."""
    request: str
    """The ``JobRequest`` as JSON."""


class JobClaimRow(SQLModel, table=True):
    """One attempt at a job: which worker took it, and until when its first lease runs."""

    __tablename__ = "job_claims"
    job_id: str = SQLField(primary_key=True, foreign_key="jobs.job_id")
    """The job."""
    attempt: int = SQLField(primary_key=True)
    """1 for the first claim; a race for the same attempt is lost with DuplicateRecord."""
    worker: str
    """The claiming worker's name (host:pid:random)."""
    claimed_at: datetime
    """When (UTC)."""
    lease_until: datetime
    """When the claim lapses unless renewed (UTC)."""


class JobHeartbeatRow(SQLModel, table=True):
    """A renewal of an attempt's lease by the worker running it."""

    __tablename__ = "job_heartbeats"
    job_id: str = SQLField(primary_key=True, foreign_key="jobs.job_id")
    """The job."""
    attempt: int = SQLField(primary_key=True)
    """The attempt renewed."""
    beat: int = SQLField(primary_key=True)
    """1, 2, ... within the attempt."""
    at: datetime
    """When (UTC)."""
    lease_until: datetime
    """The new end of the lease (UTC)."""


class JobResultRow(SQLModel, table=True):
    """How a job ended: one row per job, never two."""

    __tablename__ = "job_results"
    job_id: str = SQLField(primary_key=True, foreign_key="jobs.job_id")
    """The job."""
    status: str
    """``completed`` or ``failed``."""
    run_id: str | None = SQLField(default=None, index=True)
    """The stored run, written in the same transaction; None when the job failed before a run began."""
    error: str | None = None
    """Why it failed; None when it completed."""
    attempt: int
    """The attempt that ended it (0: ended without a claim, e.g. given up)."""
    worker: str
    """Who ended it."""
    finished_at: datetime
    """When (UTC)."""


# -- what callers see --------------------------------------------------------------------------------


class JobImage(BaseModel):
    """One image of a job: either bytes stored as an artifact of the store (an upload), or a file or DICOM
    folder under the server's data root (``dxgraph serve --data-root``), with what is declared about it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
    file_name: str = Field(min_length=1, max_length=255)
    """The uploaded file's name (untrusted: only a sanitised base name is ever used on disk)."""
    sha256: str | None = Field(default=None, pattern=_SHA256)
    """sha256 of uploaded bytes, stored with ``TraceStore.put_bytes`` (``JobQueue.stage_image``)."""
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    """A server-side file or DICOM folder, relative to the data root (``/`` separated, never leaving it)."""
    modality: str | None = Field(default=None, max_length=40)
    """Declared modality of this image; None: the case's or the file's own."""
    sequence: str | None = Field(default=None, max_length=40)
    """MR sequence (``t1``, ``t1ce``, ``t2``, ``flair``), when declared."""
    timepoint: Literal["current", "prior"] = "current"
    """``current``, or ``prior`` for an earlier study of the same patient."""
    study_date: str | None = Field(default=None, max_length=10)
    """The study's date (ISO ``YYYY-MM-DD``), when known."""
    view: str | None = Field(default=None, max_length=20)
    """Declared radiograph projection (``PA``, ``AP``...)."""

    @model_validator(mode="after")
    def _one_source(self) -> JobImage:
        if (self.sha256 is None) == (self.path is None):
            raise ValueError("an image is either stored bytes (sha256) or a server-side path, not both")
        if self.path is not None:
            relative_data_path(self.path)
        return self

    def spec(self, path: Path) -> ImageSpec:
        """The image as ``diagnose`` reads it, from ``path`` where the worker found or wrote it."""
        return ImageSpec(
            path=path,
            modality=self.modality,
            sequence=self.sequence,
            timepoint=self.timepoint,
            study_date=self.study_date,
            view=self.view,
        )


class JobCohortCase(BaseModel):
    """The cohort a job's case belongs to, and what its manifest says is true of it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
    cohort_id: str = Field(min_length=1, max_length=200)
    """The cohort (a row of ``cohorts``)."""
    line: int = Field(ge=1)
    """The manifest line of the case."""
    attempt: int = Field(default=1, ge=1)
    """The cohort's attempt at the case (1; retries of failed cases count up)."""
    truth_label: str | None = None
    """The true label, mapped onto the task's criteria labels."""
    truth_positive: bool | None = None
    """Whether the true label is a positive finding."""
    truth: dict[str, float] = {}
    """True indicator values by indicator id."""


class JobRequest(BaseModel):
    """One case to diagnose, as submitted: what ``diagnose`` is asked, with images in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
    task: str = Field(min_length=1, max_length=200)
    """The question, such as ``glaucoma``."""
    images: tuple[JobImage, ...] = Field(min_length=1, max_length=MAX_IMAGES)
    """The case's images."""
    modality: str | None = None
    """The images' modality when known (``fundus``, ``cxr``...); None: detected."""
    laterality: Literal["OD", "OS"] | None = None
    """Which eye, for fundus photographs."""
    clinical_text: str | None = Field(default=None, max_length=20_000)
    """A clinical note."""
    case_id: str | None = Field(default=None, max_length=200)
    """Pseudonymous case id; None: derived from the images."""
    options: RunOptions = Field(default_factory=RunOptions)
    """How to run it: aggregator, planner, model, seed, tools, criteria, device."""
    cohort: JobCohortCase | None = None
    """The cohort the case belongs to (its outcome is recorded with its run); None for a single case."""

    @model_validator(mode="after")
    def _cohort_case_has_id(self) -> JobRequest:
        if self.cohort is not None and not self.case_id:
            raise ValueError("a cohort's case needs its case id")
        return self

    def cohort_case(self, images: Sequence[ImageSpec]) -> CohortCase:
        """The cohort case this job runs (its images where the worker put them); ValueError without a cohort."""
        if self.cohort is None or self.case_id is None:
            raise ValueError("not a cohort's case")
        c = self.cohort
        return CohortCase(
            case_id=self.case_id,
            line=c.line,
            images=tuple(images),
            clinical_text=self.clinical_text,
            modality=self.modality,
            laterality=self.laterality,
            truth_label=c.truth_label,
            truth_positive=c.truth_positive,
            truth=c.truth,
        )


class JobInfo(BaseModel):
    """A job as its submitter and the auditors see it."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    """The job."""
    task: str
    """The question asked."""
    submitted_by: str
    """The submitting token's name."""
    submitted_at: datetime
    """When it was accepted (UTC)."""
    status: JobStatus
    """pending, running, completed or failed."""
    attempts: int
    """Claims made on it so far (more than 1: a worker died, or a lease ran out)."""
    worker: str | None = None
    """The worker of the latest claim, or of the result."""
    run_id: str | None = None
    """The stored run, once there is one."""
    error: str | None = None
    """Why it failed."""
    finished_at: datetime | None = None
    """When it ended (UTC)."""

    @property
    def done(self) -> bool:
        """Whether the job has ended (completed or failed)."""
        return self.status in ("completed", "failed")


class ClaimedJob(BaseModel):
    """A job a worker holds: run it, renew the lease while running, end it with one result."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    """The job."""
    attempt: int
    """This claim's attempt number."""
    worker: str
    """The worker holding it."""
    lease_until: datetime
    """When the claim lapses unless renewed (UTC)."""
    request: JobRequest
    """What to run."""


# -- the queue -----------------------------------------------------------------------------------------


def _now() -> datetime:
    """Now, UTC (the store keeps times as UTC without a zone, on SQLite and PostgreSQL alike)."""
    return datetime.now(UTC)


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=UTC))


_JOBS = JobRow.__table__  # type: ignore[attr-defined]
_CLAIMS = JobClaimRow.__table__  # type: ignore[attr-defined]
_BEATS = JobHeartbeatRow.__table__  # type: ignore[attr-defined]
_RESULTS = JobResultRow.__table__  # type: ignore[attr-defined]


class JobQueue:
    """The jobs of one trace store: submit, claim, renew, end, and read their status."""

    def __init__(
        self, store: TraceStore, *, lease_s: float = LEASE_S, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        if lease_s <= 0 or max_attempts < 1:
            raise UserError("a job lease must be positive and a job needs at least one attempt")
        self.store = store
        """The trace store whose database holds the queue."""
        self.lease_s = lease_s
        """Seconds a claim or a heartbeat holds a job."""
        self.max_attempts = max_attempts
        """Claims a job may use up without a result before it is ended as failed."""
        self.accepted = threading.Event()
        """Set whenever this queue accepts a job: idle workers of the same process wait on it to start at once."""

    # -- submitting ----------------------------------------------------------------------------

    def stage_image(self, data: bytes, file_name: str, media_type: str | None = None) -> JobImage:
        """Store an uploaded image's bytes (idempotent) and return its entry for a ``JobRequest``."""
        media_type = media_type or mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        return JobImage(file_name=file_name, sha256=self.store.put_bytes(data, media_type))

    def submit(self, request: JobRequest, submitted_by: str, *, job_id: str | None = None) -> JobInfo:
        """Accept a job: once this returns, it is stored and will end exactly once.

        ``job_id`` (from ``idempotent_job_id``) makes a resent submission land on the job the first one
        made: the same submitter and request get that job back, however often they are sent; another
        request under the same id is a UserError. UserError when an image's bytes are not in the store.
        """
        missing = [im.file_name for im in request.images if im.sha256 and not self._has_artifact(im.sha256)]
        if missing:
            raise UserError(
                f"image bytes not in the store for {', '.join(repr(m) for m in missing)}: stage them first"
            )
        row = JobRow(
            job_id=job_id or secrets.token_hex(16),
            submitted_at=_now(),
            submitted_by=submitted_by,
            task=request.task,
            request=request.model_dump_json(),
        )
        try:
            self.store.insert([row])
        except DuplicateRecord:
            if job_id is None:
                raise
            with self.store.engine.connect() as conn:
                first = conn.execute(sa.select(_JOBS).where(_JOBS.c.job_id == job_id)).first()
            if first is None or first.submitted_by != submitted_by or first.request != row.request:
                raise UserError(
                    f"the idempotency key of job {job_id} was already used for another submission"
                ) from None
            return self.status(job_id)
        self.accepted.set()
        return self._info(row, [], None)

    def submit_many(
        self,
        requests: Sequence[tuple[JobRequest, str]],
        submitted_by: str,
        with_rows: Sequence[SQLModel] = (),
    ) -> list[JobInfo]:
        """Accept many jobs (request, job id) and ``with_rows`` in one transaction: all of them or none.

        DuplicateRecord when a job id (or a row of ``with_rows``) is stored already; UserError when an
        image's bytes are not in the store.
        """
        digests = {im.sha256 for r, _ in requests for im in r.images if im.sha256}
        missing = sorted(d for d in digests if not self._has_artifact(d))
        if missing:
            raise UserError(f"{len(missing)} images' bytes are not in the store: stage them first")
        now = _now()
        rows = [
            JobRow(
                job_id=job_id,
                submitted_at=now,
                submitted_by=submitted_by,
                task=r.task,
                request=r.model_dump_json(),
            )
            for r, job_id in requests
        ]
        self.store.insert([*with_rows, *rows])
        self.accepted.set()
        return [self._info(row, [], None) for row in rows]

    def _has_artifact(self, sha256: str) -> bool:
        with self.store.engine.connect() as conn:
            q = sa.text("SELECT 1 FROM artifacts WHERE sha256 = :h")
            return conn.execute(q, {"h": sha256}).first() is not None

    # -- working -------------------------------------------------------------------------------

    def claim(self, worker: str) -> ClaimedJob | None:
        """Take the oldest unfinished job that no live lease holds; None when there is none.

        A job whose ``max_attempts`` claims all lapsed without a result is ended as failed on the way,
        and one whose stored request no longer parses is ended as failed with the reason.
        """
        for _ in range(50):  # each pass either claims, ends a job, or lost a race for one
            try:
                outcome = self._claim_once(worker)
            except sa.exc.IntegrityError:
                continue  # another worker claimed or ended that job first: try the next
            except sa.exc.OperationalError as e:  # busy store (lock, deadlock): pause and retry
                log.debug("claim retried: %s", e)
                time.sleep(0.05 + secrets.randbelow(100) / 1000)
                continue
            if outcome is None:
                return None
            if isinstance(outcome, ClaimedJob):
                return outcome
        return None

    def _claim_once(self, worker: str) -> ClaimedJob | Literal["ended"] | None:
        """One transaction: find a candidate, then claim it or end it."""
        now = _now()
        with self.store.write_transaction() as conn:  # BEGIN IMMEDIATE on SQLite: claims serialised
            q = self._candidates(now).limit(1)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(of=_JOBS, skip_locked=True)
            row = conn.execute(q).first()
            if row is None:
                return None
            job_id, attempts, request_json = row.job_id, row.attempts or 0, row.request
            if attempts >= self.max_attempts:
                error = (
                    f"gave up after {attempts} attempts: each worker stopped without a result (killed, or "
                    "out of memory?), so the job may be what kills them; submit it again to retry"
                )
                conn.execute(
                    sa.insert(_RESULTS), [self._result(job_id, "failed", None, error, 0, worker, now)]
                )
                case = self._gave_up_case(request_json, error, worker)
                if case is not None:
                    conn.execute(sa.insert(type(case).__table__), [case.model_dump()])  # type: ignore[attr-defined]
                return "ended"
            try:
                request = JobRequest.model_validate_json(request_json)
            except ValidationError as e:
                error = f"the stored request does not parse with this dxgraph: {e.errors()[0]['msg']}"
                conn.execute(
                    sa.insert(_RESULTS), [self._result(job_id, "failed", None, error, 0, worker, now)]
                )
                return "ended"
            lease_until = now + timedelta(seconds=self.lease_s)
            conn.execute(
                sa.insert(_CLAIMS),
                [
                    {
                        "job_id": job_id,
                        "attempt": attempts + 1,
                        "worker": worker,
                        "claimed_at": now,
                        "lease_until": lease_until,
                    }
                ],
            )
        return ClaimedJob(
            job_id=job_id, attempt=attempts + 1, worker=worker, lease_until=_utc(lease_until), request=request
        )

    @staticmethod
    def _gave_up_case(request_json: str, error: str, worker: str) -> SQLModel | None:
        """The failed cohort-case row of a job given up on; None when it is not a cohort's case."""
        try:
            request = JobRequest.model_validate_json(request_json)
        except ValidationError:
            return None
        if request.cohort is None:
            return None
        case = request.cohort_case([])
        outcome = failed_outcome(request.cohort.cohort_id, case, "bug", error, worker)
        return case_row(outcome, request.cohort.attempt)

    def _candidates(self, now: datetime) -> sa.Select[Any]:
        """Unfinished jobs, oldest first, with no live lease: (job_id, attempts, request)."""
        claims = (
            sa.select(
                _CLAIMS.c.job_id,
                sa.func.max(_CLAIMS.c.attempt).label("attempts"),
                sa.func.max(_CLAIMS.c.lease_until).label("lease_until"),
            )
            .group_by(_CLAIMS.c.job_id)
            .subquery("c")
        )
        beats = (
            sa.select(_BEATS.c.job_id, sa.func.max(_BEATS.c.lease_until).label("lease_until"))
            .group_by(_BEATS.c.job_id)
            .subquery("b")
        )
        ended = sa.select(_RESULTS.c.job_id).where(_RESULTS.c.job_id == _JOBS.c.job_id).exists()
        return (
            sa.select(_JOBS.c.job_id, claims.c.attempts, _JOBS.c.request)
            .select_from(
                _JOBS.outerjoin(claims, claims.c.job_id == _JOBS.c.job_id).outerjoin(
                    beats, beats.c.job_id == _JOBS.c.job_id
                )
            )
            .where(~ended)
            .where(
                sa.or_(
                    claims.c.attempts.is_(None),
                    sa.and_(
                        claims.c.lease_until < now,
                        sa.or_(beats.c.lease_until.is_(None), beats.c.lease_until < now),
                    ),
                )
            )
            .order_by(_JOBS.c.submitted_at, _JOBS.c.job_id)
        )

    def renew(self, job: ClaimedJob, beat: int) -> datetime:
        """Extend the lease of a claimed job by ``lease_s`` from now (``beat``: 1, 2, ... per attempt)."""
        now = _now()
        until = now + timedelta(seconds=self.lease_s)
        self.store.insert(
            [JobHeartbeatRow(job_id=job.job_id, attempt=job.attempt, beat=beat, at=now, lease_until=until)]
        )
        return _utc(until)  # type: ignore[return-value]

    def result_row(
        self, job: ClaimedJob, status: Literal["completed", "failed"], run_id: str | None, error: str | None
    ) -> JobResultRow:
        """The row that ends a job, to be written with its run (``diagnose(record_with=...)``)."""
        return JobResultRow(
            **self._result(job.job_id, status, run_id, error, job.attempt, job.worker, _now())
        )

    def fail(self, job: ClaimedJob, error: str, with_rows: Sequence[SQLModel] = ()) -> bool:
        """End a claimed job as failed with this message (and ``with_rows``, in the same transaction);
        False when it had ended already."""
        try:
            self.store.insert([self.result_row(job, "failed", None, error), *with_rows])
        except DuplicateRecord:
            return False
        return True

    @staticmethod
    def _result(
        job_id: str,
        status: str,
        run_id: str | None,
        error: str | None,
        attempt: int,
        worker: str,
        at: datetime,
    ) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "status": status,
            "run_id": run_id,
            "error": error,
            "attempt": attempt,
            "worker": worker,
            "finished_at": at,
        }

    # -- reading -------------------------------------------------------------------------------

    def status(self, job_id: str) -> JobInfo:
        """The job's status; JobNotFound when there is no such job."""
        infos = self._infos(sa.select(_JOBS).where(_JOBS.c.job_id == job_id))
        if not infos:
            raise JobNotFound(f"no job {job_id!r} in {self.store.url}")
        return infos[0]

    def request(self, job_id: str) -> JobRequest:
        """What the job asked for; JobNotFound when there is no such job."""
        with self.store.engine.connect() as conn:
            text = conn.execute(sa.select(_JOBS.c.request).where(_JOBS.c.job_id == job_id)).scalar()
        if text is None:
            raise JobNotFound(f"no job {job_id!r} in {self.store.url}")
        return JobRequest.model_validate_json(text)

    def jobs(self, submitted_by: str | None = None, limit: int | None = 50) -> list[JobInfo]:
        """Jobs, newest first, optionally only those one token submitted."""
        q = sa.select(_JOBS).order_by(_JOBS.c.submitted_at.desc(), _JOBS.c.job_id.desc()).limit(limit)
        if submitted_by is not None:
            q = q.where(_JOBS.c.submitted_by == submitted_by)
        return self._infos(q)

    def infos(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The status of each of these jobs, by job id (unknown ids are left out)."""
        out: dict[str, JobInfo] = {}
        ids = list(job_ids)
        for i in range(0, len(ids), 500):  # bounded IN lists
            chunk = ids[i : i + 500]
            out.update((j.job_id, j) for j in self._infos(sa.select(_JOBS).where(_JOBS.c.job_id.in_(chunk))))
        return out

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.2) -> JobInfo:
        """The job's status once it has ended, or as it stands after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.status(job_id)
            if info.done or time.monotonic() >= deadline:
                return info
            time.sleep(poll_s)

    def _infos(self, jobs_query: sa.Select[Any]) -> list[JobInfo]:
        with self.store.engine.connect() as conn:
            jobs = [JobRow.model_validate(dict(r._mapping)) for r in conn.execute(jobs_query)]
            ids = [j.job_id for j in jobs]
            if not ids:
                return []
            claims: dict[str, list[Any]] = {}
            for r in conn.execute(
                sa.select(_CLAIMS).where(_CLAIMS.c.job_id.in_(ids)).order_by(_CLAIMS.c.attempt)
            ):
                claims.setdefault(r.job_id, []).append(r)
            beats: dict[str, datetime] = dict(
                conn.execute(
                    sa.select(_BEATS.c.job_id, sa.func.max(_BEATS.c.lease_until))
                    .where(_BEATS.c.job_id.in_(ids))
                    .group_by(_BEATS.c.job_id)
                ).all()
            )
            results = {
                r.job_id: r for r in conn.execute(sa.select(_RESULTS).where(_RESULTS.c.job_id.in_(ids)))
            }
        out = []
        for j in jobs:
            leases = [c.lease_until for c in claims.get(j.job_id, [])]
            if j.job_id in beats:
                leases.append(beats[j.job_id])
            out.append(
                self._info(j, claims.get(j.job_id, []), results.get(j.job_id), max(leases, default=None))
            )
        return out

    @staticmethod
    def _info(
        job: JobRow, claims: Sequence[Any], result: Any, lease_until: datetime | None = None
    ) -> JobInfo:
        status: JobStatus
        if result is not None:
            status = "completed" if result.status == "completed" else "failed"
        elif lease_until is not None and lease_until > _now():
            status = "running"
        else:
            status = "pending"
        return JobInfo(
            job_id=job.job_id,
            task=job.task,
            submitted_by=job.submitted_by,
            submitted_at=_utc(job.submitted_at),
            status=status,
            attempts=len(claims),
            worker=result.worker if result is not None else (claims[-1].worker if claims else None),
            run_id=result.run_id if result is not None else None,
            error=result.error if result is not None else None,
            finished_at=_utc(result.finished_at) if result is not None else None,
        )


# -- the workers ---------------------------------------------------------------------------------------


def idempotent_job_id(submitted_by: str, key: str) -> str:
    """The job id a submitter's idempotency key stands for (a resent submission finds its first job)."""
    return "k" + hashlib.sha256(f"{submitted_by}\x00{key}".encode()).hexdigest()[:31]


def safe_file_name(name: str, fallback: str = "image") -> str:
    """A file name safe to create in a folder of our own: the base name only, odd characters replaced.

    Folders (``/``, ``\\``), ``..``, control characters and leading dots are dropped; the suffix is kept
    (it tells the image's format) and the name cut to 120 characters.
    """
    base = re.split(r"[\\/]", unicodedata.normalize("NFKC", name))[-1]
    base = _UNSAFE.sub("_", base).lstrip("._")
    base = base[-120:].lstrip("._")
    return base or fallback


def worker_name() -> str:
    """A worker's name: host, process id and a random part (several workers may share a process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class JobWorker:
    """Runs queued jobs in this process, one at a time, with one store connection and warm models."""

    def __init__(
        self,
        store_url: str,
        *,
        name: str | None = None,
        lease_s: float = LEASE_S,
        max_attempts: int = MAX_ATTEMPTS,
        registry: ToolRegistry | None = None,
        batcher: ToolCaller | None = None,
        max_batch: int = 8,
        data_root: Path | None = None,
    ) -> None:
        self.store = TraceStore(store_url)
        """The trace store (queue and runs)."""
        self.queue = JobQueue(self.store, lease_s=lease_s, max_attempts=max_attempts)
        """The queue it drains."""
        self.name = name or worker_name()
        """The name its claims and results carry."""
        self.registry = registry
        """The tools the jobs may use; None: the built-in tools and the installed plugins."""
        self.batcher: ToolCaller = batcher or BatchingDispatcher(max_batch=max_batch)
        """Runs the tool calls (shared by every job of this worker, models loaded once)."""
        self.data_root = data_root
        """Where the server-side paths of jobs are (``dxgraph serve --data-root``); None: uploads only."""
        self._labels: dict[str, TaskLabels] = {}

    def run_one(self) -> JobInfo | None:
        """Claim one job and run it to its end; None when no job was waiting.

        A job another worker ended first comes back as that worker ended it. A store that fails mid-job
        raises StoreError and leaves the job to be taken again once its lease lapses.
        """
        job = self.queue.claim(self.name)
        if job is None:
            return None
        stop = threading.Event()
        beating = threading.Thread(
            target=self._heartbeat, args=(job, stop), daemon=True, name=f"lease {job.job_id[:8]}"
        )
        beating.start()
        try:
            self._run(job)
        finally:
            stop.set()
            beating.join()
        return self.queue.status(job.job_id)

    def run_forever(
        self, stop_event: threading.Event, poll_s: float = 1.0, wake: threading.Event | None = None
    ) -> int:
        """Run jobs until ``stop_event`` is set (the job in hand is finished first); the number run.

        Idle, it looks for a job every ``poll_s`` seconds, and at once when ``wake`` is set (a queue's
        ``accepted``: jobs submitted in this process start without waiting for the next poll).
        """
        n = 0
        while not stop_event.is_set():
            try:
                info = self.run_one()
            except Exception:  # a store outage must not end the worker: log, wait, go on
                log.exception("job worker %s: a job attempt ended without a result", self.name)
                info = None
            if info is None:
                if wake is None:
                    stop_event.wait(poll_s)
                else:  # set after the job's row is stored: a job whose wake-up is cleared here is claimable
                    wake.wait(poll_s)
                    wake.clear()
            else:
                n += 1
        return n

    def _heartbeat(self, job: ClaimedJob, stop: threading.Event) -> None:
        """Renew the lease every third of it until ``stop``."""
        beat = 0
        while not stop.wait(self.queue.lease_s / 3):
            beat += 1
            try:
                self.queue.renew(job, beat)
            except Exception:  # a missed beat only risks a second attempt, which the result's key settles
                log.warning("job %s: lease renewal %d failed", job.job_id, beat, exc_info=True)

    def _run(self, job: ClaimedJob) -> None:
        """Diagnose the job's case; its result row (and its cohort case's) goes into the run's transaction."""
        r = job.request
        folder = Path(tempfile.mkdtemp(prefix="dxgraph-job-"))
        names: dict[str, str] = {}
        made: list[str] = []
        specs: list[ImageSpec] = []

        def record(rec: TraceRecorder, diagnosis: Diagnosis | None, error: str | None) -> Sequence[SQLModel]:
            made.append(rec.run_id)
            status: Literal["completed", "failed"] = "completed" if diagnosis is not None else "failed"
            rows: list[SQLModel] = [self.queue.result_row(job, status, rec.run_id, error)]
            if r.cohort is not None:
                c = r.cohort
                outcome = recorded_outcome(
                    c.cohort_id,
                    r.cohort_case(specs),
                    self._task_labels(c.cohort_id),
                    rec,
                    diagnosis,
                    error,
                    self.name,
                )
                rows.append(case_row(outcome, c.attempt))
            return rows

        try:
            try:
                specs.extend(self._images(job, folder, names))
                diagnose(
                    r.task,
                    specs,
                    r.options,
                    store=self.store,
                    modality=r.modality,
                    clinical_text=r.clinical_text,
                    laterality=r.laterality,
                    case_id=r.case_id,
                    registry=self.registry,
                    batcher=self.batcher,
                    record_with=record,
                )
            except DuplicateRecord:
                return  # another attempt ended the job first; this run was not stored
            except StoreError:
                raise  # the store failed: no result, the lease lapses and the job is taken again
            except UserError as e:  # bad input: nothing was stored
                message = _without_folder(str(e), folder, names)
                self.queue.fail(job, message, self._cohort_failure(job, specs, "input", message))
            except Exception as e:  # a bug: its run is stored with status error, or the job fails
                message = f"{type(e).__name__}: {_without_folder(str(e), folder, names)}"
                if not made:
                    log.exception("job %s failed before its run was stored", job.job_id)
                # False when the run's transaction ended it already
                self.queue.fail(job, message, self._cohort_failure(job, specs, "bug", message))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _task_labels(self, cohort_id: str) -> TaskLabels:
        """The labels of a cohort's task (read once per cohort)."""
        if cohort_id not in self._labels:
            self._labels[cohort_id] = CohortStore(self.store).info(cohort_id).labels
        return self._labels[cohort_id]

    def _cohort_failure(
        self, job: ClaimedJob, specs: Sequence[ImageSpec], kind: Literal["input", "bug"], message: str
    ) -> list[SQLModel]:
        """The failed case row of a cohort's job ending without a run; nothing for a single case."""
        c = job.request.cohort
        if c is None:
            return []
        outcome = failed_outcome(c.cohort_id, job.request.cohort_case(specs), kind, message, self.name)
        return [case_row(outcome, c.attempt)]

    def _images(self, job: ClaimedJob, folder: Path, names: dict[str, str]) -> list[ImageSpec]:
        """The job's images as ``diagnose`` reads them: uploads written under sanitised names, each in a
        folder of its own; server-side paths found under the data root (checked again here)."""
        specs = []
        for i, image in enumerate(job.request.images):
            if image.path is not None:
                specs.append(image.spec(resolve_data_path(self.data_root, image.path)))
                continue
            assert image.sha256 is not None  # one of the two, by JobImage's validator
            try:
                data = self.store.get_bytes(image.sha256)
            except KeyError:
                raise UserError(f"the bytes of image {image.file_name!r} are not in the store") from None
            sub = folder / str(i)
            sub.mkdir()
            path = sub / safe_file_name(image.file_name, f"image{i}")
            path.write_bytes(data)
            names[str(path)] = image.file_name
            specs.append(image.spec(path))
        if self.data_root is not None:
            names.setdefault(
                str(self.data_root.resolve()) + "/", ""
            )  # messages name paths under the root only
        return specs


def _without_folder(message: str, folder: Path, names: dict[str, str]) -> str:
    """A message with the worker's temporary paths replaced by the submitted file names."""
    for path, original in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, original)
    return message.replace(str(folder), "")
