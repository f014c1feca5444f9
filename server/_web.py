"""The web app: server-rendered pages over the same store, roles and access log as the HTTP API.

Sign in with a token (``/signin``): the server checks it once and answers with a signed session cookie
(``_sessions``: the token's public id, an expiry and a nonce, signed with the store's key, never the
token's secret), ``HttpOnly``, ``SameSite=Strict`` (``Secure`` over https), that every server of the store
accepts and a restart keeps. Every form carries the session's CSRF token in a hidden field and a POST
without the right one is refused with 403. Signing out ends the session everywhere; a revoked token ends
its sessions.

| page | who |
|---|---|
| ``/runs`` (filters: task, label, status, since, verified), ``/runs/{id}`` (summary, diagnosis, last verification, the report) | researchers (their own), auditors (all) |
| ``/runs/{id}/verify`` (POST, recorded), ``/runs/{id}/replay`` (POST) | auditors |
| ``/submit`` (drag-and-drop upload), ``/jobs``, ``/jobs/{id}`` (live progress over SSE) | researchers; auditors read jobs |
| ``/access-log`` | auditors |
| ``/cohorts``, ``/cohorts/new`` (submit), ``/cohorts/{id}`` (live progress, metrics, cases, report, retry) | researchers (their own), auditors (all) |
| ``/tokens`` (list; POST: create, the new token shown once), ``/tokens/revoke`` (POST, confirmed) | admins |

Each page view of a run is logged in the access log, as the API logs each read. Pages send a strict
Content-Security-Policy (scripts and styles from ``/static`` only); the run's report, served at
``/runs/{id}/report`` into a sandboxed frame, keeps its own policy and is sandboxed by its header too.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from dxgraph.errors import StoreError, UserError
from dxgraph.server._accounts import ROLES, Principal, Role
from dxgraph.server._errors import ApiError
from dxgraph.server._jobs import MAX_IMAGES
from dxgraph.server._progress import event_stream, visible_job
from dxgraph.server._sessions import SignedSessions, WebSession
from dxgraph.server._state import accounts_of as _accounts
from dxgraph.server._state import queue_of as _queue
from dxgraph.server._state import store_of as _store
from dxgraph.server._submit import queue_case
from dxgraph.server._verifications import VERIFIED_STATES, Verified, latest_verifications, record_verification
from dxgraph.traces import RunRow

SESSION_COOKIE = "dxgraph_session"
"""The name of the web app's session cookie."""
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""The Content-Security-Policy of every page."""
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox allow-scripts"
)
"""The report's policy: its own inline style and script only, sandboxed (an opaque origin) wherever shown."""
_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATIC = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
_STATUSES = ("completed", "failed", "error")
_READERS: tuple[Role, ...] = ("researcher", "auditor")


class _SignInFirst(Exception):
    """The page needs a signed-in session."""


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dxgraph.server", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda t: "" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    env.filters["path"] = lambda s: quote(str(s), safe="")
    env.filters["value"] = _value
    return env


def _value(v: object) -> str:
    """A measured value as shown: numbers to 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("dxgraph.server").joinpath("static", name).read_bytes()


@functools.cache
def _tasks() -> list[str]:
    """The tasks the packaged criteria answer."""
    from dxgraph.criteria_kb import packaged_criteria

    return sorted({c.document.disease for c in packaged_criteria()})


def _home(who: Principal) -> str:
    return "/tokens" if who.role == "admin" else "/runs"


def _safe_next(target: str | None) -> str | None:
    """A same-site path to go to after signing in, or None (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(c in target for c in "\r\n\\") or target.startswith("/signin"):
        return None
    return target


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    s: WebSession | None = getattr(request.state, "web_session", None)
    html = (
        _templates()
        .get_template(name)
        .render(who=s.principal if s else None, csrf=s.csrf if s else "", path=request.url.path, **context)
    )
    return HTMLResponse(html, status_code=status_code)


class _WebRoute(APIRoute):
    """A page route: errors become HTML pages, an anonymous visitor goes to the sign-in page, and every
    answer carries the pages' security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler wrapped with the web app's error pages and headers."""
        handler = super().get_route_handler()

        async def web_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except _SignInFirst:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
            except StarletteHTTPException as e:
                message = e.detail if isinstance(e.detail, str) else "request refused"
                response = _render(
                    request, "error.html.j2", e.status_code, status=e.status_code, message=message
                )
            except RequestValidationError as e:
                parts = []
                for err in e.errors()[:5]:
                    where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
                    parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
                response = _render(request, "error.html.j2", 422, status=422, message="; ".join(parts))
            for k, v in _HEADERS.items():
                response.headers.setdefault(k, v)
            return response

        return web_handler


def _check_csrf(s: WebSession | None, sent: str) -> WebSession:
    if s is None or not sent or not hmac.compare_digest(sent.encode(), s.csrf.encode()):
        raise ApiError(
            403,
            "this form was not sent from this site's page (CSRF check failed): reload the page and try again",
        )
    return s


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    except ValueError:
        raise ApiError(422, f"since: {text!r} is not a date (YYYY-MM-DD)") from None


def _set_cookie(request: Request, response: Response, s: WebSession) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        s.session_id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def _list_runs(
    request: Request,
    who: Principal,
    task: str | None,
    label: str | None,
    status: str | None,
    since: datetime | None,
    verified: Verified | None,
) -> list[RunRow]:
    """The runs ``who`` may see, newest first, filtered as ``GET /v1/runs`` filters them (at most 200)."""
    from dxgraph.server._api import visible_runs

    return visible_runs(request, who, task, label, status, since, 200, verified)


def _verified(text: str | None) -> Verified | None:
    """The ``verified`` filter: yes, no, never, or None for any; 422 for anything else."""
    if not text:
        return None
    for state in VERIFIED_STATES:
        if text == state:
            return state
    raise ApiError(422, f"verified: {text!r} is not one of {', '.join(VERIFIED_STATES)}")


def web_router() -> APIRouter:
    """The web app's pages, its static files and its job event stream (outside ``/v1``)."""
    web = APIRouter(route_class=_WebRoute, include_in_schema=False)

    def sessions_of(request: Request) -> SignedSessions:
        """The app's sessions (signed with its store's key), made on first use."""
        state = request.app.state
        if getattr(state, "web_sessions", None) is None:
            state.web_sessions = SignedSessions(_store(request))
        found: SignedSessions = state.web_sessions
        return found

    def session(request: Request) -> WebSession | None:
        s = sessions_of(request).get(request.cookies.get(SESSION_COOKIE))
        request.state.web_session = s
        return s

    def need(request: Request, *roles: Role) -> tuple[WebSession, Principal]:
        s = session(request)
        if s is None or s.principal is None:
            raise _SignInFirst()
        if s.principal.role not in roles:
            raise ApiError(
                403, f"the {s.principal.role} role may not see this page (allowed: {', '.join(roles)})"
            )
        return s, s.principal

    @web.get("/static/{name}")
    def static(name: str) -> Response:
        """The app's stylesheet and script."""
        if name not in _STATIC:
            raise ApiError(404, f"no static file {name!r}")
        return Response(_static(name), media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    @web.get("/")
    def home(request: Request) -> Response:
        """The runs (or the tokens, for an admin) when signed in; the sign-in page otherwise."""
        s = session(request)
        if s is None or s.principal is None:
            return RedirectResponse("/signin", status_code=303)
        return RedirectResponse(_home(s.principal), status_code=303)

    @web.get("/signin")
    def signin_page(request: Request, next: str | None = None) -> Response:
        """The sign-in form."""
        s = session(request)
        if s is not None and s.principal is not None:
            return RedirectResponse(_safe_next(next) or _home(s.principal), status_code=303)
        fresh = s is None
        if fresh:
            s = request.state.web_session = sessions_of(request).new(None)
        response = _render(request, "signin.html.j2", next=_safe_next(next) or "", error=None)
        if fresh:
            assert s is not None
            _set_cookie(request, response, s)
        return response

    @web.post("/signin")
    def signin(
        request: Request,
        token: Annotated[str, Form(max_length=500)] = "",
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        next: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        """Check the token; on success, a new signed-in session (its id in the cookie, never the token)."""
        old = _check_csrf(session(request), csrf_token)
        who = _accounts(request).authenticate(token) if token.strip() else None
        if who is None:
            return _render(
                request,
                "signin.html.j2",
                401,
                next=_safe_next(next) or "",
                error="That token is not valid (unknown, mistyped or revoked).",
            )
        sessions_of(request).drop(old.session_id)  # a new id once signed in: no session fixation
        s = request.state.web_session = sessions_of(request).new(who)
        _accounts(request).log_access(who, "sign_in", "web")
        response = RedirectResponse(_safe_next(next) or _home(who), status_code=303)
        _set_cookie(request, response, s)
        return response

    @web.post("/signout")
    def signout(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
        """End the session."""
        s = _check_csrf(session(request), csrf_token)
        sessions_of(request).drop(s.session_id)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @web.get("/runs")
    def runs_page(
        request: Request,
        task: str | None = None,
        label: str | None = None,
        status: str | None = None,
        since: str | None = None,
        verified: str | None = None,
    ) -> Response:
        """The runs this user may see, with filters, and each run's latest recorded verification."""
        _, who = need(request, *_READERS)
        filters = {
            "task": task or "",
            "label": label or "",
            "status": status or "",
            "since": since or "",
            "verified": verified or "",
        }
        rows = _list_runs(
            request, who, task or None, label or None, status or None, _since(since), _verified(verified)
        )
        return _render(
            request,
            "runs.html.j2",
            runs=rows,
            filters=filters,
            tasks=_tasks(),
            statuses=_STATUSES,
            verified_states=VERIFIED_STATES,
            verifications=latest_verifications(_store(request), [r.run_id for r in rows]),
        )

    def run_page(request: Request, who: Principal, run_id: str, action: str, **extra: Any) -> Response:
        from dxgraph.server._api import _readable_run
        from dxgraph.traces import DiagnosisMade

        row = _readable_run(request, who, run_id, action)
        made = [e for e in _store(request).events(row.run_id) if isinstance(e, DiagnosisMade)]
        context: dict[str, Any] = {"verify": None, "replay": None, **extra}
        last = latest_verifications(_store(request), [row.run_id]).get(row.run_id)
        return _render(
            request,
            "run.html.j2",
            run=row,
            last_verification=last,
            diagnosis=made[-1].diagnosis if made else None,
            evidence=list(made[-1].evidence) if made else [],
            **context,
        )

    @web.get("/runs/{run_id}")
    def run(request: Request, run_id: str) -> Response:
        """A run: its summary, diagnosis and report (logged in the access log)."""
        _, who = need(request, *_READERS)
        return run_page(request, who, run_id, "read_run")

    @web.get("/runs/{run_id}/report")
    def report(request: Request, run_id: str) -> Response:
        """The run's self-contained report, for the run page's sandboxed frame (logged)."""
        from dxgraph.server._api import _readable_run
        from dxgraph.traces import render_report

        _, who = need(request, *_READERS)
        row = _readable_run(request, who, run_id, "read_report")
        headers = {**_HEADERS, "Content-Security-Policy": REPORT_CSP}
        return HTMLResponse(render_report(_store(request), row.run_id), headers=headers)

    @web.post("/runs/{run_id}/verify")
    def verify(
        request: Request, run_id: str, csrf_token: Annotated[str, Form(max_length=200)] = ""
    ) -> Response:
        """Verify the run's chain, seal and artifacts, record the outcome, and show what was found."""
        s, who = need(request, "auditor")
        _check_csrf(s, csrf_token)
        full_id = _full_id(request, run_id)
        check = _store(request).verify(full_id)
        record_verification(_store(request), full_id, who.name, check)
        return run_page(request, who, full_id, "verify_run", verify=check)

    @web.post("/runs/{run_id}/replay")
    def replay(
        request: Request,
        run_id: str,
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        mode: Annotated[Literal["recorded", "tools"], Form()] = "recorded",
    ) -> Response:
        """Replay the run (nothing is stored) and show how it compares with its record."""
        from dxgraph.agent import replay as run_replay

        s, who = need(request, "auditor")
        _check_csrf(s, csrf_token)
        try:
            result = run_replay(_store(request), _full_id(request, run_id), mode)
        except UserError as e:
            raise ApiError(422, str(e)) from None
        return run_page(request, who, run_id, f"replay_{mode}", replay=result)

    def _full_id(request: Request, run_id: str) -> str:
        """The auditor's run, by id or unique prefix (404 page otherwise)."""
        try:
            return _store(request).resolve_run_id(run_id)
        except StoreError:
            raise ApiError(404, f"no run {run_id!r}") from None

    @web.get("/submit")
    def submit_page(request: Request) -> Response:
        """The form to submit a case."""
        need(request, "researcher")
        return _render(request, "submit.html.j2", tasks=_tasks(), form={}, error=None, max_images=MAX_IMAGES)

    @web.post("/submit")
    async def submit(
        request: Request,
        files: Annotated[list[UploadFile] | None, File()] = None,
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        task: Annotated[str, Form(max_length=200)] = "",
        modality: Annotated[str, Form(max_length=40)] = "",
        laterality: Annotated[str, Form(max_length=10)] = "",
        clinical_text: Annotated[str, Form(max_length=20_000)] = "",
        case_id: Annotated[str, Form(max_length=200)] = "",
        options: Annotated[str, Form(max_length=20_000)] = "",
    ) -> Response:
        """Queue the case as ``POST /v1/diagnoses`` does, then go to its job page."""
        s, who = need(request, "researcher")
        _check_csrf(s, csrf_token)
        form = {
            "task": task,
            "modality": modality,
            "laterality": laterality,
            "clinical_text": clinical_text,
            "case_id": case_id,
            "options": options,
        }
        try:
            info = await queue_case(
                _queue(request), who, form, [f for f in files or [] if f.filename or f.size]
            )
        except ApiError as e:
            return _render(
                request,
                "submit.html.j2",
                e.status_code,
                tasks=_tasks(),
                form=form,
                error=str(e.detail),
                max_images=MAX_IMAGES,
            )
        return RedirectResponse(f"/jobs/{quote(info.job_id, safe='')}", status_code=303)

    @web.get("/jobs")
    def jobs_page(request: Request) -> Response:
        """Jobs, newest first: this researcher's own, or every job for an auditor."""
        _, who = need(request, *_READERS)
        jobs = _queue(request).jobs(submitted_by=None if who.role == "auditor" else who.name, limit=100)
        return _render(request, "jobs.html.j2", jobs=jobs)

    @web.get("/jobs/{job_id}")
    def job_page(request: Request, job_id: str) -> Response:
        """A job, its progress updated live from its event stream."""
        _, who = need(request, *_READERS)
        return _render(request, "job.html.j2", job=visible_job(_queue(request), job_id, who))

    @web.get("/jobs/{job_id}/events")
    def job_events(request: Request, job_id: str) -> Response:
        """The job's progress as Server-Sent Events, for the job page (as ``/v1/jobs/{id}/events``)."""
        _, who = need(request, *_READERS)
        visible_job(_queue(request), job_id, who)
        return event_stream(_queue(request), job_id)

    @web.get("/access-log")
    def access_log_page(
        request: Request, target: str | None = None, token_name: str | None = None
    ) -> Response:
        """Who read or did what, newest first."""
        need(request, "auditor")
        records = _accounts(request).access_log(
            target=target or None, token_name=token_name or None, limit=500
        )
        return _render(
            request,
            "access_log.html.j2",
            records=records,
            filters={"target": target or "", "token_name": token_name or ""},
        )

    def tokens_view(request: Request, status_code: int = 200, **extra: Any) -> Response:
        context: dict[str, Any] = {"created": None, "error": None, "notice": None, "form": {}, **extra}
        return _render(
            request,
            "tokens.html.j2",
            status_code,
            tokens=_accounts(request).list_tokens(),
            roles=ROLES,
            **context,
        )

    @web.get("/tokens")
    def tokens_page(request: Request, revoked: str | None = None) -> Response:
        """Every token (never its secret), with the forms to create and revoke one."""
        need(request, "admin")
        tokens = {t.name: t for t in _accounts(request).list_tokens()}
        notice = None
        if revoked and revoked in tokens and tokens[revoked].revoked_at is not None:  # after revoking one
            notice = f"The token {revoked!r} is revoked: it no longer signs anyone in."
        return tokens_view(request, notice=notice)

    @web.post("/tokens")
    def create_token(
        request: Request,
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        role: Annotated[str, Form(max_length=40)] = "",
        name: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        """Create a token as ``POST /v1/tokens`` does; its text is on this answer only (never stored)."""
        s, who = need(request, "admin")
        _check_csrf(s, csrf_token)
        try:
            info, token = _accounts(request).create_token(role, name.strip() or None)
        except UserError as e:
            return tokens_view(request, 422, error=str(e), form={"role": role, "name": name})
        _accounts(request).log_access(who, "create_token", info.name)
        return tokens_view(request, created={"info": info, "token": token})  # Cache-Control: no-store

    @web.post("/tokens/revoke")
    def revoke_token(
        request: Request,
        csrf_token: Annotated[str, Form(max_length=200)] = "",
        name: Annotated[str, Form(max_length=200)] = "",
        confirm: Annotated[str, Form(max_length=10)] = "",
    ) -> Response:
        """Ask to confirm, then revoke a token as ``DELETE /v1/tokens/{name}`` does (its record stays)."""
        s, who = need(request, "admin")
        _check_csrf(s, csrf_token)
        known = {t.name: t for t in _accounts(request).list_tokens()}
        if name not in known:
            raise ApiError(404, f"no token named {name!r}")
        if known[name].revoked_at is not None:
            return tokens_view(request, 422, error=f"the token {name!r} is revoked already")
        if confirm != "yes":
            return _render(
                request, "token_revoke.html.j2", token=known[name], own=known[name].name == who.name
            )
        try:
            _accounts(request).revoke(name)
        except UserError as e:
            return tokens_view(request, 422, error=str(e))
        _accounts(request).log_access(who, "revoke_token", name)
        return RedirectResponse(f"/tokens?revoked={quote(name, safe='')}", status_code=303)

    from dxgraph.server._web_cohorts import add_cohort_pages  # here: that module imports this one

    add_cohort_pages(web, need)
    return web


__all__ = ["SESSION_COOKIE", "WebSession", "web_router"]
