"""The HTTP API, versioned under ``/v1``: tools and criteria, case submission (jobs), runs (read, report,
verify, replay, export), the access log and tokens, each behind the roles that may use it.

| role | may |
|---|---|
| researcher | submit cases, read their own jobs and runs |
| auditor | read every run, verify, replay, export, read the access log; never submit, change or delete |
| admin | manage tokens |

Every read of a run is appended to the access log (who, when, what). A researcher names a run by its
full id and is told "no run" for one that is not theirs, so ids of others' runs never leak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from dxgraph._version import __version__
from dxgraph.errors import StoreError, UserError
from dxgraph.server._accounts import ROLES, AccessRecord, Accounts, Principal, TokenInfo
from dxgraph.server._artifacts import artifacts_router
from dxgraph.server._auth import Admin, Anyone, Auditor, Reader
from dxgraph.server._cohorts import cohorts_router
from dxgraph.server._errors import ApiError, install_error_handlers
from dxgraph.server._jobs import LEASE_S, JobQueue, JobWorker
from dxgraph.server._progress import progress_router
from dxgraph.server._state import accounts_of as _accounts
from dxgraph.server._state import store_of as _store
from dxgraph.server._submit import MAX_UPLOAD_BYTES, BodyLimit, QueueOwnership, submit_router
from dxgraph.server._verifications import Verified, latest_verifications, record_verification, verified_state
from dxgraph.server._web import web_router
from dxgraph.traces import RunRow, TraceStore


class RunOwnership(Protocol):
    """Who submitted which run (the job queue knows); researchers see only their own."""

    def owner_of(self, run_id: str) -> str | None:
        """The token name that submitted the run, or None."""
        ...

    def runs_of(self, token_name: str) -> set[str]:
        """The runs this token submitted."""
        ...


class NoOwnership:
    """Ownership where no run belongs to any researcher (runs made outside the server)."""

    def owner_of(self, run_id: str) -> str | None:
        """Nobody."""
        return None

    def runs_of(self, token_name: str) -> set[str]:
        """None."""
        return set()


class RunSummary(BaseModel):
    """A stored run as listed."""

    run_id: str
    """The run."""
    task: str
    """The question asked."""
    case_id: str
    """The case's pseudonymous id."""
    started_at: datetime
    """When it started (UTC)."""
    status: str
    """completed, failed or error."""
    label: str | None
    """The diagnosis label, when there is one."""
    n_events: int
    """Events in its trace."""
    head_sha256: str
    """The hash at the head of its chain."""


class VerifyResult(BaseModel):
    """What verifying a run found."""

    run_id: str
    """The run."""
    ok: bool
    """Whether the chain, the seal on the run and the artifacts are intact."""
    n_events: int
    """Events checked."""
    problems: list[str]
    """What is wrong, first break first."""


class ReplayRequest(BaseModel):
    """How to replay a run."""

    mode: Literal["recorded", "tools"] = "recorded"
    """recorded: the graph on the recorded tool outputs; tools: every tool re-run on its recorded inputs."""


class ReplayResult(BaseModel):
    """A replay compared with its record."""

    run_id: str
    """The replayed run."""
    mode: str
    """The replay mode."""
    same: bool
    """Whether the replay reproduced the record within tolerances."""
    differences: list[dict[str, Any]]
    """Each difference found."""
    label: str | None
    """The replay's diagnosis label."""


class TokenRequest(BaseModel):
    """A token to create."""

    role: Literal["researcher", "auditor", "admin"]
    """What it may do."""
    name: str | None = Field(default=None, max_length=64)
    """Its unique name; default ROLE-xxxxxx."""


class CreatedToken(TokenInfo):
    """A created token, with its text: shown this once only."""

    token: str
    """The token's text, to send as ``Authorization: Bearer``."""


def _readable_run(request: Request, who: Principal, run_id: str, action: str) -> RunRow:
    """The run ``who`` asks for, logged to the access log; 404 when it does not exist or is not theirs."""
    store = _store(request)
    mine = who.role == "auditor" or request.app.state.owners.owner_of(run_id) == who.name
    try:
        row = store.run(run_id) if mine else None
    except StoreError as e:
        if who.role != "auditor":
            row = None
        else:
            raise ApiError(404, str(e).replace(f" in {store.url}", "")) from None
    if row is None or (who.role != "auditor" and row.run_id != run_id):  # no prefixes: ids never leak
        raise ApiError(404, f"no run {run_id!r} of yours")
    _accounts(request).log_access(who, action, row.run_id)
    return row


def visible_runs(
    request: Request,
    who: Principal,
    task: str | None,
    label: str | None,
    status: str | None,
    since: datetime | None,
    limit: int,
    verified: Verified | None = None,
) -> list[RunRow]:
    """The runs ``who`` may see (every run for an auditor, their own for a researcher), newest first,
    filtered (``verified``: by the outcome of each run's latest recorded verification), at most ``limit``;
    the listing is logged to the access log."""
    store = _store(request)
    mine = None if who.role == "auditor" else request.app.state.owners.runs_of(who.name)
    if mine is not None and not mine:
        return []
    rows = store.list_runs(
        limit=None if mine is not None or label or status or verified else limit, task=task, since=since
    )
    picked = [
        r
        for r in rows
        if (mine is None or r.run_id in mine)
        and (label is None or r.label == label)
        and (status is None or r.status == status)
    ]
    if verified is not None:
        latest = latest_verifications(store, [r.run_id for r in picked])
        picked = [r for r in picked if verified_state(latest.get(r.run_id)) == verified]
    picked = picked[:limit]
    _accounts(request).log_access(who, "list_runs", f"{len(picked)} runs")
    return picked


def _summary(row: RunRow) -> RunSummary:
    return RunSummary.model_validate(row.model_dump())


def _v1() -> APIRouter:
    """Every /v1 route."""
    v1 = APIRouter(prefix="/v1")

    @v1.get("/health", tags=["server"])
    def health() -> dict[str, str]:
        """Whether the server is up, and its version (no token needed)."""
        return {"status": "ok", "version": __version__}

    @v1.get("/me", tags=["server"])
    def me(who: Anyone) -> Principal:
        """The token's name and role."""
        return who

    @v1.get("/tools", tags=["registry"])
    def tools(who: Anyone) -> list[dict[str, Any]]:
        """Every registered tool's summary."""
        from dxgraph.tools import default_tools

        return [s.summary() for s in default_tools()]

    @v1.get("/tools/{name}", tags=["registry"])
    def tool(name: str, who: Anyone) -> dict[str, Any]:
        """One tool: description and input/output JSON schemas."""
        from dxgraph.tools import default_tools

        if name not in default_tools():
            raise ApiError(404, f"no tool named {name!r}")
        info: dict[str, Any] = default_tools().get(name).describe()
        return info

    @v1.get("/criteria", tags=["registry"])
    def criteria(who: Anyone) -> list[dict[str, Any]]:
        """The packaged criteria documents."""
        from dxgraph.criteria_kb import packaged_criteria

        return [c.summary() for c in packaged_criteria()]

    @v1.get("/criteria/{criteria_id}", tags=["registry"])
    def criteria_document(criteria_id: str, who: Anyone) -> dict[str, Any]:
        """One criteria document (by id or task): indicators, thresholds, decision rule and sources."""
        from dxgraph.criteria_kb import packaged_criteria

        for c in packaged_criteria():
            if criteria_id in (c.document.id, c.document.disease):
                return {**c.document.model_dump(mode="json"), "sha256": c.sha256}
        raise ApiError(404, f"no criteria document {criteria_id!r}")

    @v1.get("/runs", tags=["runs"])
    def runs(
        request: Request,
        who: Reader,
        task: str | None = None,
        label: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = Query(50, ge=1, le=1000),
        verified: Verified | None = None,
    ) -> list[RunSummary]:
        """Stored runs, newest first: every run for an auditor, their own for a researcher; ``verified``:
        yes (latest recorded verification intact), no (it found a problem) or never (not verified)."""
        return [_summary(r) for r in visible_runs(request, who, task, label, status, since, limit, verified)]

    @v1.get("/runs/{run_id}", tags=["runs"])
    def run(request: Request, run_id: str, who: Reader) -> dict[str, Any]:
        """A run: its summary, diagnosis and evidence."""
        from dxgraph.traces import DiagnosisMade

        row = _readable_run(request, who, run_id, "read_run")
        made = [e for e in _store(request).events(row.run_id) if isinstance(e, DiagnosisMade)]
        return {
            "run": _summary(row).model_dump(mode="json"),
            "diagnosis": made[-1].diagnosis.model_dump(mode="json") if made else None,
            "evidence": [e.model_dump(mode="json") for e in made[-1].evidence] if made else [],
        }

    @v1.get("/runs/{run_id}/events", tags=["runs"])
    def events(request: Request, run_id: str, who: Reader) -> list[dict[str, Any]]:
        """A run's events, in order, as stored (each with its hash)."""
        row = _readable_run(request, who, run_id, "read_events")
        return [e.model_dump(mode="json") for e in _store(request).events(row.run_id)]

    @v1.get("/runs/{run_id}/report", tags=["runs"], response_class=HTMLResponse)
    def report(request: Request, run_id: str, who: Reader) -> HTMLResponse:
        """A run's self-contained HTML report."""
        from dxgraph.traces import render_report

        row = _readable_run(request, who, run_id, "read_report")
        return HTMLResponse(render_report(_store(request), row.run_id))

    @v1.get("/runs/{run_id}/export", tags=["runs"])
    def export(
        request: Request,
        run_id: str,
        who: Auditor,
        format: Literal["dxtrace", "fhir"] = "dxtrace",
    ) -> Response:
        """A run as a portable ``.dxtrace`` file or a FHIR DiagnosticReport bundle."""
        from dxgraph.traces import SUFFIX, export_run, fhir_diagnostic_report

        row = _readable_run(request, who, run_id, f"export_{format}")
        if format == "fhir":
            try:
                return Response(
                    content=_json(fhir_diagnostic_report(_store(request), row.run_id)),
                    media_type="application/fhir+json",
                )
            except StoreError as e:
                raise ApiError(422, str(e)) from None
        with tempfile.TemporaryDirectory(prefix="dxgraph-export-") as tmp:
            path = export_run(_store(request), row.run_id, Path(tmp) / f"{row.run_id}{SUFFIX}")
            data = path.read_bytes()
        return Response(
            content=data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{row.run_id}{SUFFIX}"'},
        )

    @v1.post("/runs/{run_id}/verify", tags=["audit"])
    def verify(request: Request, run_id: str, who: Auditor) -> VerifyResult:
        """Recompute every hash of the run's chain, its seal and its artifacts; the outcome is recorded."""
        row = _readable_run(request, who, run_id, "verify_run")
        check = _store(request).verify(row.run_id)
        record_verification(_store(request), row.run_id, who.name, check)
        return VerifyResult(
            run_id=check.run_id, ok=check.ok, n_events=check.n_events, problems=list(check.problems)
        )

    @v1.post("/runs/{run_id}/replay", tags=["audit"])
    def replay(request: Request, run_id: str, body: ReplayRequest, who: Auditor) -> ReplayResult:
        """Replay a run and compare it with its record (nothing is stored)."""
        from dxgraph.agent import replay as run_replay

        row = _readable_run(request, who, run_id, f"replay_{body.mode}")
        try:
            result = run_replay(_store(request), row.run_id, body.mode)
        except UserError as e:
            raise ApiError(422, str(e)) from None
        return ReplayResult(
            run_id=row.run_id,
            mode=body.mode,
            same=result.same,
            differences=[jsonable_encoder(dataclasses.asdict(d)) for d in result.differences],
            label=None if result.diagnosis is None else result.diagnosis.label,
        )

    @v1.get("/access-log", tags=["audit"])
    def access_log(
        request: Request,
        who: Auditor,
        target: str | None = None,
        token_name: str | None = None,
        limit: int = Query(200, ge=1, le=10000),
    ) -> list[AccessRecord]:
        """Who read or did what, newest first."""
        return _accounts(request).access_log(target=target, token_name=token_name, limit=limit)

    @v1.get("/tokens", tags=["accounts"])
    def tokens(request: Request, who: Admin) -> list[TokenInfo]:
        """Every token (never its secret), revoked ones included."""
        return _accounts(request).list_tokens()

    @v1.post("/tokens", tags=["accounts"], status_code=201)
    def create_token(request: Request, body: TokenRequest, who: Admin) -> CreatedToken:
        """Create a token; its text is in this answer only."""
        info, token = _accounts(request).create_token(body.role, body.name)
        _accounts(request).log_access(who, "create_token", info.name)
        return CreatedToken(**info.model_dump(), token=token)

    @v1.delete("/tokens/{name}", tags=["accounts"])
    def revoke_token(request: Request, name: str, who: Admin) -> TokenInfo:
        """Revoke a token (its record stays)."""
        try:
            info = _accounts(request).revoke(name)
        except UserError as e:
            raise ApiError(404 if "no token named" in str(e) else 422, str(e)) from None
        _accounts(request).log_access(who, "revoke_token", name)
        return info

    return v1


def _json(data: object) -> bytes:
    import json

    return json.dumps(data, ensure_ascii=False).encode()


def create_app(
    store: TraceStore | str | None = None,
    *,
    owners: RunOwnership | None = None,
    workers: int = 0,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    lease_s: float = LEASE_S,
    data_root: str | Path | None = None,
) -> FastAPI:
    """The API over one trace store (a store, a path or URL, or None for the default store).

    ``workers`` job workers run in the app's process while it serves (threads sharing the loaded models);
    with 0, other processes drain the queue (``dxgraph serve`` on another machine, or ``JobWorker``).
    Runs belong to the tokens whose jobs made them unless ``owners`` says otherwise. ``data_root`` is the
    folder whose files and manifests submissions may name by path (UserError when it is not a folder);
    None: uploads only.
    """
    store = store if isinstance(store, TraceStore) else TraceStore(store)
    root = None if data_root is None else Path(data_root).expanduser().resolve()
    if root is not None and not root.is_dir():
        raise UserError(f"the data root is not a folder: {root}")
    queue = JobQueue(store, lease_s=lease_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=JobWorker(store.url, lease_s=lease_s, data_root=root).run_forever,
                args=(stop, 0.5, queue.accepted),  # jobs accepted here start at once, others within 0.5 s
                name=f"dxgraph-job-worker-{i}",
                daemon=True,
            )
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        try:
            async with app.state.mcp.running():  # the MCP endpoint's session manager
                yield
        finally:
            stop.set()  # each worker finishes the job in hand first
            queue.accepted.set()  # and an idle one stops waiting
            for t in threads:
                t.join()

    app = FastAPI(
        title="dxgraph",
        version=__version__,
        summary="Evidence-based, traced diagnosis of medical images.",
        description=__doc__,
        openapi_tags=[{"name": n} for n in ("server", "registry", "jobs", "runs", "audit", "accounts")],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.accounts = Accounts(store)
    app.state.queue = queue
    app.state.data_root = root
    app.state.owners = owners or QueueOwnership(queue)
    install_error_handlers(app)
    app.include_router(_v1())
    app.include_router(submit_router())
    app.include_router(cohorts_router())
    app.include_router(artifacts_router())
    app.include_router(progress_router())
    app.include_router(web_router())
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    from dxgraph.server._mcp import McpEndpoint, McpMount  # here: _mcp imports this module

    app.state.mcp = McpEndpoint(app.state, max_image_bytes=max_upload_bytes)
    app.add_middleware(McpMount, endpoint=app.state.mcp)  # /mcp: base64 images, its own body limit
    return app


__all__ = ["ROLES", "NoOwnership", "RunOwnership", "create_app"]
