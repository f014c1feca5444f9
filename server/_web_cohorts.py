"""The web app's cohort pages: the list, a cohort's live progress, cases and metrics, its report, and the
form that submits one (a manifest with its images or a zip of them, or a manifest under the data root).

The pages read what ``/v1/cohorts`` reads, through the same checks: a researcher sees their own
cohorts, an auditor every cohort; each view of a cohort is logged in the access log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dxgraph.server._accounts import Principal
from dxgraph.server._cohort_submit import retry_failed_cases, submit_cohort
from dxgraph.server._cohorts import (
    cohort_events,
    cohort_report,
    cohort_status,
    cohort_summaries,
    visible_cohort,
)
from dxgraph.server._errors import ApiError
from dxgraph.server._state import accounts_of, data_root_of, queue_of
from dxgraph.server._web import _HEADERS, _READERS, REPORT_CSP, _check_csrf, _render, _tasks

Need = Callable[..., tuple[Any, Principal]]
"""The web router's sign-in check: ``need(request, *roles)`` -> (session, principal)."""


def _given(f: UploadFile | None) -> UploadFile | None:
    """An uploaded file, or None for a file input left empty (browsers send an empty part)."""
    return f if f is not None and (f.filename or f.size) else None


def add_cohort_pages(web: APIRouter, need: Need) -> None:
    """Add ``/cohorts``, ``/cohorts/new``, ``/cohorts/{id}`` with its ``/report`` and ``/events``."""

    def form_page(
        request: Request, status_code: int = 200, form: dict[str, str] | None = None, error: str | None = None
    ) -> Response:
        return _render(
            request,
            "cohort_submit.html.j2",
            status_code,
            tasks=_tasks(),
            form=form or {},
            error=error,
            data_root=data_root_of(request) is not None,
        )

    @web.get("/cohorts")
    def cohorts_page(request: Request) -> Response:
        """Cohorts, newest first: this researcher's own, or every cohort for an auditor."""
        _, who = need(request, *_READERS)
        return _render(request, "cohorts.html.j2", cohorts=cohort_summaries(queue_of(request), who))

    @web.get("/cohorts/new")
    def new_cohort_page(request: Request) -> Response:
        """The form to submit a cohort."""
        need(request, "researcher")
        return form_page(request)

    @web.post("/cohorts/new")
    async def new_cohort(
        request: Request,
        manifest: Annotated[UploadFile | None, File()] = None,
        files: Annotated[list[UploadFile] | None, File()] = None,
        archive: Annotated[UploadFile | None, File()] = None,
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        task: Annotated[str, Form(max_length=200)] = "",
        manifest_path: Annotated[str, Form(max_length=4096)] = "",
        image_root: Annotated[str, Form(max_length=4096)] = "",
        options: Annotated[str, Form(max_length=20_000)] = "",
    ) -> Response:
        """Queue the cohort as ``POST /v1/cohorts`` does, then go to its page."""
        s, who = need(request, "researcher")
        _check_csrf(s, csrf_token)
        form = {"task": task, "manifest_path": manifest_path, "image_root": image_root, "options": options}
        try:
            if not task:
                raise ApiError(422, "task: choose the question to answer")
            accepted = await submit_cohort(
                request,
                who,
                task=task,
                options=options or None,
                manifest=_given(manifest),
                files=[f for f in files or [] if _given(f)],
                archive=_given(archive),
                manifest_path=manifest_path.strip() or None,
                image_root=image_root.strip() or None,
                idempotency_key=None,
            )
        except ApiError as e:
            return form_page(request, e.status_code, form, str(e.detail))
        return RedirectResponse(f"/cohorts/{quote(accepted.cohort_id, safe='')}", status_code=303)

    @web.get("/cohorts/{cohort_id}")
    def cohort_page(request: Request, cohort_id: str) -> Response:
        """A cohort: its progress (updated live), metrics and cases (logged in the access log)."""
        _, who = need(request, *_READERS)
        queue = queue_of(request)
        info = visible_cohort(queue, who, cohort_id)
        accounts_of(request).log_access(who, "read_cohort", info.cohort_id)
        return _render(request, "cohort.html.j2", info=info, status=cohort_status(queue, info))

    @web.post("/cohorts/{cohort_id}/retry")
    def retry_cohort(
        request: Request, cohort_id: str, csrf_token: Annotated[str, Form(max_length=200)] = ""
    ) -> Response:
        """Queue the failed cases of one's ended cohort again, then back to its page."""
        s, who = need(request, "researcher")
        _check_csrf(s, csrf_token)
        queue = queue_of(request)
        info = visible_cohort(queue, who, cohort_id)
        retry_failed_cases(queue, who, info.cohort_id)
        return RedirectResponse(f"/cohorts/{quote(info.cohort_id, safe='')}", status_code=303)

    @web.get("/cohorts/{cohort_id}/report")
    def cohort_report_page(request: Request, cohort_id: str) -> Response:
        """The cohort's self-contained report (logged), under the report's sandboxing policy."""
        _, who = need(request, *_READERS)
        queue = queue_of(request)
        info = visible_cohort(queue, who, cohort_id)
        accounts_of(request).log_access(who, "read_cohort_report", info.cohort_id)
        headers = {**_HEADERS, "Content-Security-Policy": REPORT_CSP}
        return HTMLResponse(cohort_report(queue, info), headers=headers)

    @web.get("/cohorts/{cohort_id}/events")
    def cohort_events_page(request: Request, cohort_id: str) -> Response:
        """The cohort's progress as Server-Sent Events, for its page (as ``/v1/cohorts/{id}/events``)."""
        _, who = need(request, *_READERS)
        queue = queue_of(request)
        return cohort_events(queue, visible_cohort(queue, who, cohort_id))
