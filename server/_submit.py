"""Submitting cases to the server: an upload becomes a job of the store's queue, answered ``202`` at once.

``POST /v1/diagnoses`` takes a multipart form (the task, one or more image files, and optional modality,
laterality, clinical note, case id and run options as JSON), stores the images as artifacts, and queues
the job; ``GET /v1/jobs/{id}`` says where it is, and its run once it has one. Researchers submit and see
their own jobs; auditors see every job and submit nothing. A client may choose only the run options that
cannot reach outside the server (``CLIENT_OPTIONS``): paths, model servers and devices are the server's.
Request bodies over the app's limit are refused with ``413`` while they stream in (``BodyLimit``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dxgraph.errors import UserError
from dxgraph.server._accounts import Principal
from dxgraph.server._auth import Reader, Researcher
from dxgraph.server._errors import ApiError, error_body
from dxgraph.server._jobs import (
    MAX_IMAGES,
    JobImage,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobRequest,
    JobResultRow,
    JobRow,
    idempotent_job_id,
    resolve_data_path,
)
from dxgraph.server._state import data_root_of
from dxgraph.server._state import queue_of as _queue

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
"""Default limit of one request's body (all its files together), bytes."""
CLIENT_OPTIONS = frozenset({"aggregator", "planner", "seed", "prefer_tools", "review_rounds"})
"""Run options a client may set; the others (criteria folders, model paths and servers, device) are the
server's own configuration."""


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[A-Za-z0-9._:-]{1,200}$",
        description="Any unique string of the client's: resending the submission with it returns what the"
        " first one made (its job or cohort) instead of a second one.",
    ),
]
"""The ``Idempotency-Key`` header of a submission."""


class QueueOwnership:
    """Run ownership from the queue: a run belongs to the token that submitted its job."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        """The queue whose jobs made the runs."""

    def owner_of(self, run_id: str) -> str | None:
        """The token name whose job made the run, or None."""
        with Session(self.queue.store.engine) as s:
            row = s.exec(
                select(JobRow.submitted_by)
                .join(JobResultRow, col(JobResultRow.job_id) == col(JobRow.job_id))
                .where(JobResultRow.run_id == run_id)
            ).first()
        return row

    def runs_of(self, token_name: str) -> set[str]:
        """The runs made by this token's jobs."""
        with Session(self.queue.store.engine) as s:
            rows = s.exec(
                select(JobResultRow.run_id)
                .join(JobRow, col(JobResultRow.job_id) == col(JobRow.job_id))
                .where(JobRow.submitted_by == token_name, col(JobResultRow.run_id).is_not(None))
            ).all()
        return {r for r in rows if r}


class _TooLarge(ApiError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"the request is larger than this server accepts ({limit_bytes:,} bytes)")


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, by its declared length or as it
    streams in (a chunked upload cannot slip past)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting its body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            too_big = False
        if too_big:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(413, str(_TooLarge(self.max_bytes).detail))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def check_options(raw: str | None) -> dict[str, Any]:
    """The client's run options from their JSON text; 422 for bad JSON or an option it may not set."""
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ApiError(422, f"options: not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(options, dict):
        raise ApiError(422, "options: a JSON object of run options")
    refused = sorted(set(options) - CLIENT_OPTIONS)
    if refused:
        raise ApiError(
            422,
            f"options: {', '.join(refused)} cannot be set per request (the server's configuration);"
            f" a request may set {', '.join(sorted(CLIENT_OPTIONS))}",
        )
    return options


def _check_task(task: str, clinical_text: str | None) -> None:
    """422 when no criteria answer the task."""
    from dxgraph.criteria_kb import retrieve

    try:
        retrieve(task, clinical_text)
    except UserError as e:
        raise ApiError(422, str(e)) from None


async def queue_case(
    queue: JobQueue,
    who: Principal,
    form: Mapping[str, str | None],
    files: list[UploadFile],
    idempotency_key: str | None = None,
    paths: Sequence[str] = (),
    data_root: Path | None = None,
) -> JobInfo:
    """Check one case and queue it as ``who``'s job; ApiError(422) with the reason when it cannot be.

    ``form`` holds the case's fields (task, modality, laterality, clinical_text, case_id, options as JSON
    text; empty means absent). The images are uploaded ``files``, or ``paths`` of files (or DICOM folders)
    under the server's ``data_root``, checked now and again when the job runs. The blocking work (criteria
    retrieval, storing images, the queue's write) runs in the thread pool, so the server keeps answering
    while a large upload is stored. With an ``idempotency_key``, a resent submission (its first answer
    lost) returns the job the first one made.
    """
    from starlette.concurrency import run_in_threadpool

    def field(name: str) -> str | None:
        return form.get(name) or None

    task = field("task")
    if task is None:
        raise ApiError(422, "task: choose the question to answer")
    if files and paths:
        raise ApiError(422, "files: upload images or name server-side paths, not both")
    if not 1 <= len(files or paths) <= MAX_IMAGES:
        raise ApiError(422, f"files: give 1 to {MAX_IMAGES} images")
    chosen = check_options(field("options"))
    await run_in_threadpool(_check_task, task, field("clinical_text"))
    images = []
    for p in paths:
        try:
            found = resolve_data_path(data_root, p)
        except UserError as e:
            raise ApiError(422, f"paths: {e}") from None
        images.append(JobImage(file_name=found.name, path=p))
    for f in files:
        data = await f.read()
        if not data:
            raise ApiError(422, f"files: {f.filename or 'a file'} is empty")
        images.append(await run_in_threadpool(queue.stage_image, data, f.filename or "image", f.content_type))
    try:
        job = JobRequest.model_validate(
            {
                "task": task,
                "images": images,
                "modality": field("modality"),
                "laterality": field("laterality"),
                "clinical_text": field("clinical_text"),
                "case_id": field("case_id"),
                "options": chosen,
            }
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiError(422, f"{where}: {first.get('msg', 'invalid')}") from None
    job_id = None if idempotency_key is None else idempotent_job_id(who.name, idempotency_key)
    info: JobInfo = await run_in_threadpool(functools.partial(queue.submit, job, who.name, job_id=job_id))
    return info


def submit_router() -> APIRouter:
    """``POST /v1/diagnoses`` and ``GET /v1/jobs``."""
    v1 = APIRouter(prefix="/v1", tags=["jobs"])

    @v1.post("/diagnoses", status_code=202)
    async def submit(
        request: Request,
        who: Researcher,
        task: Annotated[str, Form(min_length=1, max_length=200, description="The question, e.g. glaucoma.")],
        files: Annotated[
            list[UploadFile], File(description="The case's images: DICOM, PNG, JPEG, NIfTI, a zipped series.")
        ] = [],  # noqa: B006 -- FastAPI copies defaults
        paths: Annotated[
            list[str],
            Form(
                description="Instead of files: images under the server's data root (dxgraph serve --data-root)."
            ),
        ] = [],  # noqa: B006
        modality: Annotated[str | None, Form(max_length=40)] = None,
        laterality: Annotated[str | None, Form(pattern="^(OD|OS)$")] = None,
        clinical_text: Annotated[str | None, Form(max_length=20_000)] = None,
        case_id: Annotated[str | None, Form(max_length=200)] = None,
        options: Annotated[str | None, Form(max_length=20_000, description="Run options as JSON.")] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Queue one case for diagnosis; answers 202 with the job, whose status is at ``/v1/jobs/{id}``."""
        form = {
            "task": task,
            "modality": modality,
            "laterality": laterality,
            "clinical_text": clinical_text,
            "case_id": case_id,
            "options": options,
        }
        info = await queue_case(
            _queue(request), who, form, files, idempotency_key, paths=paths, data_root=data_root_of(request)
        )
        body = {**info.model_dump(mode="json"), "status_url": f"/v1/jobs/{info.job_id}"}
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{info.job_id}"})

    @v1.get("/jobs/{job_id}")
    def job(request: Request, job_id: str, who: Reader) -> JobInfo:
        """A job's status, and its run once it has one (its submitter, or an auditor)."""
        try:
            info = _queue(request).status(job_id)
        except JobNotFound:
            info = None
        if info is None or (who.role != "auditor" and info.submitted_by != who.name):
            raise ApiError(404, f"no job {job_id!r} of yours")
        return info

    @v1.get("/jobs")
    def jobs(request: Request, who: Reader, limit: int = Query(50, ge=1, le=1000)) -> list[JobInfo]:
        """Jobs, newest first: every job for an auditor, their own for a researcher."""
        mine = None if who.role == "auditor" else who.name
        return _queue(request).jobs(submitted_by=mine, limit=limit)

    return v1
