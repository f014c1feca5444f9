"""A job's progress as Server-Sent Events: ``GET /v1/jobs/{id}/events`` (``text/event-stream``).

The stream sends a ``status`` event (the job as ``GET /v1/jobs/{id}`` shows it) each time its status,
attempts, run or error change (pending -> running -> completed or failed), then one ``done`` event with
the run id, and ends. The same rules apply as to ``GET /v1/jobs/{id}``: the submitter or an auditor. The
web app streams the same events to its job page through its session cookie (``/jobs/{id}/events``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from dxgraph.server._accounts import Principal
from dxgraph.server._auth import Reader
from dxgraph.server._errors import ApiError
from dxgraph.server._jobs import JobInfo, JobNotFound, JobQueue
from dxgraph.server._state import queue_of

POLL_S = 0.25
"""How often the stream looks at the job, seconds."""
KEEPALIVE_S = 15.0
"""Longest silence before a comment line keeps proxies from closing the stream, seconds."""
RETRY_MS = 2000
"""How long a browser waits before it reconnects a broken stream, milliseconds."""
T = TypeVar("T")


def visible_job(queue: JobQueue, job_id: str, who: Principal) -> JobInfo:
    """The job, when ``who`` may see it (its submitter, or an auditor); 404 otherwise."""
    try:
        info = queue.status(job_id)
    except JobNotFound:
        info = None
    if info is None or (who.role != "auditor" and info.submitted_by != who.name):
        raise ApiError(404, f"no job {job_id!r} of yours")
    return info


def _frame(event: str, data: dict[str, Any], n: int) -> bytes:
    return f"id: {n}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def status_events(
    fetch: Callable[[], T],
    key: Callable[[T], Hashable],
    is_done: Callable[[T], bool],
    as_json: Callable[[T], dict[str, Any]],
    done: Callable[[T], dict[str, Any]],
    poll_s: float | None = None,
) -> AsyncIterator[bytes]:
    """SSE frames of something that changes until it ends: a ``status`` frame (``as_json``) each time its
    ``key`` changes, then one ``done`` frame; ``fetch`` runs in a thread, every ``poll_s`` seconds."""
    poll_s = POLL_S if poll_s is None else poll_s
    yield f"retry: {RETRY_MS}\n\n".encode()
    last: Hashable | None = None
    n = 0
    quiet_since = time.monotonic()
    while True:
        state = await anyio.to_thread.run_sync(fetch)
        now_key = key(state)
        if now_key != last:
            n += 1
            yield _frame("status", as_json(state), n)
            last, quiet_since = now_key, time.monotonic()
        if is_done(state):
            n += 1
            yield _frame("done", done(state), n)
            return
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(poll_s)


def job_events(queue: JobQueue, job_id: str, poll_s: float | None = None) -> AsyncIterator[bytes]:
    """The job's events as SSE frames: a ``status`` frame per change, then ``done``; ends with the job."""
    return status_events(
        lambda: queue.status(job_id),
        lambda info: (info.status, info.attempts, info.run_id, info.error),
        lambda info: info.done,
        lambda info: info.model_dump(mode="json"),
        lambda info: {
            "job_id": info.job_id,
            "status": info.status,
            "run_id": info.run_id,
            "error": info.error,
        },
        poll_s,
    )


def sse_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    """A streaming response of SSE frames (not buffered by proxies, never cached)."""
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def event_stream(queue: JobQueue, job_id: str) -> StreamingResponse:
    """The streaming response of a job's events."""
    return sse_response(job_events(queue, job_id))


def progress_router() -> APIRouter:
    """``GET /v1/jobs/{id}/events``."""
    v1 = APIRouter(prefix="/v1", tags=["jobs"])

    @v1.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "The job's events."}},
    )
    def job_progress(request: Request, job_id: str, who: Reader) -> StreamingResponse:
        """The job's progress as Server-Sent Events: ``status`` at each change, then ``done``; the
        stream ends with the job (its submitter, or an auditor)."""
        queue = queue_of(request)
        visible_job(queue, job_id, who)
        return event_stream(queue, job_id)

    return v1
