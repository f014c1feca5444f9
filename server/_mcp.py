"""The server's MCP endpoint: dxgraph's tools for agent hosts, over streamable HTTP at ``/mcp``.

Built on the official ``mcp`` SDK (``MCPServer``, stateless streamable HTTP, so several server processes
behind one address need no sticky sessions). It uses the API's tokens and roles: every HTTP request to
``/mcp`` carries ``Authorization: Bearer <token>`` (401 JSON without a valid one), and each tool checks
the caller's role:

| tool | who |
|---|---|
| ``diagnose`` | a researcher: submits a case to the job queue and waits for its diagnosis |
| ``get_job`` | the job's submitter or an auditor |
| ``get_run`` | the run's owner (the researcher whose job made it) or an auditor; logged to the access log |
| ``verify_run`` | an auditor; logged to the access log |
| ``list_tools``, ``list_criteria`` | any valid token |

Refusals and bad input come back as MCP tool errors (``isError``) with the reason, never a traceback.
Images travel base64-encoded in the tool call; they may total the app's upload limit once decoded, so the
endpoint accepts request bodies a third larger than the rest of the API does (``mcp_body_limit``).
DNS-rebinding protection is off because every request needs a bearer token, which a rebound page lacks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import Headers, State
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dxgraph._version import __version__
from dxgraph.errors import StoreError, UserError
from dxgraph.server._accounts import Accounts, Principal, Role
from dxgraph.server._api import RunSummary, VerifyResult
from dxgraph.server._errors import error_body
from dxgraph.server._jobs import (
    MAX_IMAGES,
    JobImage,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobRequest,
    resolve_data_path,
)
from dxgraph.server._submit import CLIENT_OPTIONS
from dxgraph.traces import RunRow, TraceStore

MCP_PATH = "/mcp"
"""Where the endpoint is served."""
DEFAULT_WAIT_S = 120.0
"""How long ``diagnose`` waits for its job by default, seconds."""
MAX_WAIT_S = 280.0
"""The longest ``diagnose`` or ``get_job`` waits, seconds (under the SDK client's 300 s read timeout)."""
_JSON_OVERHEAD_BYTES = 256 * 1024
_PRINCIPAL = "dxgraph.principal"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def mcp_body_limit(max_image_bytes: int) -> int:
    """The largest MCP request body, bytes: images of ``max_image_bytes`` in base64, plus the JSON around."""
    return (max_image_bytes + 2) // 3 * 4 + _JSON_OVERHEAD_BYTES


# -- what the tools take and give ----------------------------------------------------------------------


class ImageInput(BaseModel):
    """One image of a case: its bytes base64-encoded, or its path under the server's data root."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    file_name: str | None = Field(default=None, min_length=1, max_length=255)
    """The file's name, with the bytes; its suffix tells the format (.png, .jpg, .dcm, .nii.gz, .zip)."""
    data_base64: str | None = Field(default=None, min_length=1)
    """The file's bytes, base64-encoded (standard alphabet, padded)."""
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    """Instead of bytes: a file or DICOM folder under the server's data root (``dxgraph serve --data-root``)."""

    @model_validator(mode="after")
    def _bytes_or_path(self) -> ImageInput:
        if (self.data_base64 is None) == (self.path is None):
            raise ValueError("give an image's data_base64 (with its file_name) or its path, not both")
        if self.data_base64 is not None and self.file_name is None:
            raise ValueError("an image's bytes need its file_name (the suffix tells the format)")
        return self


class EvidenceValue(BaseModel):
    """One measurement behind a diagnosis."""

    model_config = ConfigDict(use_attribute_docstrings=True)
    evidence_id: str
    """Its id, as the diagnosis cites it."""
    indicator: str
    """The criteria's indicator it measures, such as ``vcdr``."""
    name: str
    """The indicator's name in words."""
    value: float | bool | str
    """The measured value."""
    unit: str
    """Its unit (``1`` for ratios, ``bool`` for yes/no)."""
    uncertainty_sd: float | None
    """Its standard uncertainty in the same unit, when known."""
    tool: str
    """The tool that measured it."""
    quality_flags: list[str]
    """Quality warnings of the measurement."""


class DiagnosisSummary(BaseModel):
    """A run's diagnosis, with the measurements it rests on."""

    model_config = ConfigDict(use_attribute_docstrings=True)
    run_id: str
    """The stored run (its full trace: get_run, the HTTP API or the web app)."""
    label: str
    """The diagnostic label, such as ``glaucoma_suspect``."""
    confidence: float
    """Probability that the label stands under the measurements' stated uncertainty."""
    abstained: bool
    """Whether the run declined to decide."""
    rationale: str
    """Why, in words."""
    recommendation: str | None
    """The deciding criteria's management recommendation, when there is one."""
    missing_indicators: list[str]
    """Indicators of the deciding criteria that could not be assessed."""
    decisive_evidence: list[EvidenceValue]
    """The measurements the decision cites, with their units."""


class DiagnoseResult(BaseModel):
    """A submitted case: its job and, once it completed, its diagnosis."""

    model_config = ConfigDict(use_attribute_docstrings=True)
    job: JobInfo
    """The job (its status is pending or running when the wait ran out)."""
    diagnosis: DiagnosisSummary | None
    """The diagnosis, when the job completed with one."""
    message: str
    """What happened, in words."""


class RunDetail(BaseModel):
    """A stored run: its summary, diagnosis and every piece of evidence."""

    model_config = ConfigDict(use_attribute_docstrings=True)
    run: RunSummary
    """The run's summary."""
    diagnosis: DiagnosisSummary | None
    """Its diagnosis, when it made one."""
    evidence: list[EvidenceValue]
    """All its measurements (superseded ones included)."""


# -- the endpoint -----------------------------------------------------------------------------------------


def _principal(ctx: Context) -> Principal:
    """The caller, as authenticated by ``McpEndpoint.__call__`` for this HTTP request."""
    request = ctx.request_context.request
    who = getattr(request, "scope", {}).get(_PRINCIPAL)
    if not isinstance(who, Principal):
        raise ToolError("sign in: send 'Authorization: Bearer <token>'")
    return who


def _allow(ctx: Context, *roles: Role) -> Principal:
    who = _principal(ctx)
    if who.role not in roles:
        raise ToolError(f"the {who.role} role may not do this (allowed: {', '.join(roles)})")
    return who


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))


class McpEndpoint:
    """The MCP endpoint over an app's state (store, accounts, queue, owners): an ASGI app that checks the
    bearer token, then hands the request to the SDK's streamable HTTP session manager."""

    def __init__(self, state: State, *, max_image_bytes: int) -> None:
        self.state = state
        """The FastAPI app's state: ``store``, ``accounts``, ``queue`` and ``owners``."""
        self.max_image_bytes = max_image_bytes
        """Most bytes of a case's images together, decoded."""
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        self.server: MCPServer[Any] = MCPServer(
            "dxgraph",
            title="dxgraph",
            version=__version__,
            instructions=(
                "Evidence-based, traced diagnosis of medical images. diagnose submits a case (a researcher "
                "token) and returns its diagnosis with the measurements it rests on; every run is stored "
                "with a hash-chained trace that get_run reads and verify_run (an auditor token) checks."
            ),
            log_level="WARNING",
        )
        root.setLevel(level)  # MCPServer configures the root logger; the process's logging is not its own
        root.handlers[:] = handlers
        self._running = False
        self._add_tools()

    # -- ASGI ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the SDK's session manager (in the app's lifespan); a fresh one each time the app starts."""
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            max_request_body_size=mcp_body_limit(self.max_image_bytes),
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        async with self.server.session_manager.run():
            self._running = True
            try:
                yield
            finally:
                self._running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request to ``/mcp``: 401 without a valid token, else the MCP exchange."""
        if scope["type"] != "http":  # pragma: no cover - mounted for http only
            return
        headers = Headers(scope=scope)
        limit = mcp_body_limit(self.max_image_bytes)
        if headers.get("content-length", "").isdigit() and int(headers["content-length"]) > limit:
            message = f"the request is larger than this endpoint accepts ({limit:,} bytes)"
            await self._refuse(413, message, scope, receive, send)  # a streamed one: the SDK's own 413
            return
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refuse(401, "sign in: send 'Authorization: Bearer <token>'", scope, receive, send)
            return
        accounts: Accounts = self.state.accounts
        who = await anyio.to_thread.run_sync(accounts.authenticate, token.strip())
        if who is None:
            message = "the token is not valid (unknown, wrong or revoked)"
            await self._refuse(401, message, scope, receive, send)
            return
        if not self._running:
            await self._refuse(
                500,
                "the MCP endpoint is not running (the app's lifespan did not start)",
                scope,
                receive,
                send,
            )
            return
        scope[_PRINCIPAL] = who
        await self.server.session_manager.handle_request(scope, receive, send)

    @staticmethod
    async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _CHALLENGE if status == 401 else None
        await JSONResponse(error_body(status, message), status_code=status, headers=headers)(
            scope, receive, send
        )

    # -- the app's parts -------------------------------------------------------------------------

    @property
    def store(self) -> TraceStore:
        """The trace store."""
        store: TraceStore = self.state.store
        return store

    @property
    def queue(self) -> JobQueue:
        """The job queue."""
        queue: JobQueue = self.state.queue
        return queue

    @property
    def accounts(self) -> Accounts:
        """The accounts and access log."""
        accounts: Accounts = self.state.accounts
        return accounts

    def readable_run(self, who: Principal, run_id: str, action: str) -> RunRow:
        """The run ``who`` asks for, logged to the access log; ToolError when it does not exist or is not
        theirs (a researcher names their own run by its full id; an auditor any run, by a prefix too)."""
        mine = who.role == "auditor" or self.state.owners.owner_of(run_id) == who.name
        try:
            row = self.store.run(run_id) if mine else None
        except StoreError as e:
            if who.role != "auditor":
                row = None
            else:
                raise ToolError(str(e).replace(f" in {self.store.url}", "")) from None
        if row is None or (who.role != "auditor" and row.run_id != run_id):
            raise ToolError(f"no run {run_id!r} of yours")
        self.accounts.log_access(who, action, row.run_id)
        return row

    def diagnosis_of(self, run_id: str) -> tuple[DiagnosisSummary | None, list[EvidenceValue]]:
        """A stored run's diagnosis summary and all its evidence."""
        from dxgraph.traces import DiagnosisMade

        made = [e for e in self.store.events(run_id) if isinstance(e, DiagnosisMade)]
        if not made:
            return None, []
        d, evidence = made[-1].diagnosis, made[-1].evidence
        values = [
            EvidenceValue(
                evidence_id=e.evidence_id,
                indicator=e.indicator,
                name=e.name,
                value=e.value,
                unit=e.unit,
                uncertainty_sd=e.uncertainty_sd,
                tool=e.tool,
                quality_flags=list(e.quality_flags),
            )
            for e in evidence
        ]
        cited = set(d.cited_evidence)
        summary = DiagnosisSummary(
            run_id=run_id,
            label=d.label,
            confidence=d.confidence,
            abstained=d.abstained,
            rationale=d.rationale,
            recommendation=d.recommendation,
            missing_indicators=list(d.missing_indicators),
            decisive_evidence=[v for v in values if v.evidence_id in cited],
        )
        return summary, values

    def stage(self, task: str, images: list[ImageInput], fields: dict[str, Any]) -> JobRequest:
        """Check a case and store its images: the job to submit; ToolError with the reason when it is bad."""
        from dxgraph.criteria_kb import retrieve

        options = fields.get("options") or {}
        refused = sorted(set(options) - CLIENT_OPTIONS)
        if refused:
            raise ToolError(
                f"options: {', '.join(refused)} cannot be set per request (the server's configuration);"
                f" a request may set {', '.join(sorted(CLIENT_OPTIONS))}"
            )
        try:
            retrieve(task, fields.get("clinical_text"))
        except UserError as e:
            raise ToolError(str(e)) from None
        total = sum(len(im.data_base64 or "") // 4 * 3 for im in images)
        if total > self.max_image_bytes + 3 * len(images):
            raise ToolError(
                f"images: {total:,} bytes in all, more than this server accepts ({self.max_image_bytes:,} bytes)"
            )
        decoded: list[tuple[str, bytes | None, str | None]] = []
        for i, im in enumerate(images):
            if im.path is not None:
                try:
                    found = resolve_data_path(getattr(self.state, "data_root", None), im.path)
                except UserError as e:
                    raise ToolError(f"images[{i}]: {e}") from None
                decoded.append((found.name, None, im.path))
                continue
            try:
                data = base64.b64decode(im.data_base64 or "", validate=True)
            except (binascii.Error, ValueError) as e:
                raise ToolError(f"images[{i}] ({im.file_name}): not base64 ({e})") from None
            if not data:
                raise ToolError(f"images[{i}] ({im.file_name}): empty")
            decoded.append((im.file_name or "image", data, None))
        if sum(len(d or b"") for _, d, _ in decoded) > self.max_image_bytes:
            raise ToolError(f"images: more than this server accepts ({self.max_image_bytes:,} bytes)")
        staged = [
            self.queue.stage_image(data, name) if data is not None else JobImage(file_name=name, path=path)
            for name, data, path in decoded
        ]
        try:
            return JobRequest.model_validate({**fields, "task": task, "images": staged, "options": options})
        except ValidationError as e:
            raise ToolError(_first_error(e)) from None

    async def wait(self, ctx: Context, job_id: str, timeout_s: float) -> JobInfo:
        """The job once it ended, or as it stands after ``timeout_s``; progress notifications meanwhile."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            info = await anyio.to_thread.run_sync(self.queue.status, job_id)
            if info.done or time.monotonic() >= deadline:
                return info
            if info.status != last:
                last = info.status
                waited = timeout_s - (deadline - time.monotonic())
                await ctx.report_progress(waited, timeout_s, f"job {job_id}: {info.status}")
            await anyio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    async def result(self, who: Principal, info: JobInfo) -> DiagnoseResult:
        """A job's answer: its diagnosis when it completed (a read of the run, logged)."""
        if info.status == "completed" and info.run_id:
            run_id = info.run_id
            await anyio.to_thread.run_sync(self.readable_run, who, run_id, "read_run")
            summary, _ = await anyio.to_thread.run_sync(self.diagnosis_of, run_id)
            message = f"completed: run {run_id}" + ("" if summary else " (no diagnosis)")
            return DiagnoseResult(job=info, diagnosis=summary, message=message)
        if info.status == "failed":
            return DiagnoseResult(
                job=info, diagnosis=None, message=f"failed: {info.error or 'no reason given'}"
            )
        return DiagnoseResult(
            job=info,
            diagnosis=None,
            message=f"{info.status} after the wait; call get_job with job_id {info.job_id} to wait again",
        )

    # -- the tools -------------------------------------------------------------------------------

    def _add_tools(self) -> None:
        server = self.server

        @server.tool()
        async def diagnose(
            ctx: Context,
            task: Annotated[
                str, Field(min_length=1, max_length=200, description="The question, such as glaucoma.")
            ],
            images: Annotated[
                list[ImageInput],
                Field(
                    min_length=1,
                    max_length=MAX_IMAGES,
                    description="The case's images, base64-encoded, or paths under the server's data root.",
                ),
            ],
            modality: Annotated[
                str | None,
                Field(max_length=40, description="The images' modality (fundus, cxr...); none: detected."),
            ] = None,
            laterality: Annotated[
                Literal["OD", "OS"] | None, Field(description="Which eye, for fundus photographs.")
            ] = None,
            clinical_text: Annotated[
                str | None, Field(max_length=20_000, description="A clinical note.")
            ] = None,
            case_id: Annotated[
                str | None, Field(max_length=200, description="Pseudonymous case id; none: from the images.")
            ] = None,
            options: Annotated[
                dict[str, Any] | None,
                Field(description=f"Run options; a request may set {', '.join(sorted(CLIENT_OPTIONS))}."),
            ] = None,
            timeout_s: Annotated[
                float, Field(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the diagnosis.")
            ] = DEFAULT_WAIT_S,
        ) -> DiagnoseResult:
            """Diagnose one case (researchers): queue it, wait for its run, and return the diagnosis (label,
            confidence, abstention) with the measurements it rests on, in their units."""
            who = _allow(ctx, "researcher")
            fields = {
                "modality": modality,
                "laterality": laterality,
                "clinical_text": clinical_text,
                "case_id": case_id,
                "options": options,
            }
            job = await anyio.to_thread.run_sync(self.stage, task, images, fields)
            info = await anyio.to_thread.run_sync(self.queue.submit, job, who.name)
            return await self.result(who, await self.wait(ctx, info.job_id, timeout_s))

        @server.tool()
        async def get_job(
            ctx: Context,
            job_id: Annotated[str, Field(min_length=1, max_length=64, description="The job, from diagnose.")],
            timeout_s: Annotated[
                float, Field(ge=0, le=MAX_WAIT_S, description="Seconds to wait for it to end; 0: answer now.")
            ] = 0.0,
        ) -> DiagnoseResult:
            """A job's status, waiting for it to end if asked, and its diagnosis once it completed (its
            submitter or an auditor)."""
            who = _allow(ctx, "researcher", "auditor")
            try:
                info = await anyio.to_thread.run_sync(self.queue.status, job_id)
            except JobNotFound:
                info = None
            if info is None or (who.role != "auditor" and info.submitted_by != who.name):
                raise ToolError(f"no job {job_id!r} of yours")
            return await self.result(who, await self.wait(ctx, job_id, timeout_s))

        @server.tool()
        def get_run(
            ctx: Context,
            run_id: Annotated[str, Field(min_length=1, max_length=200, description="The run's id.")],
        ) -> RunDetail:
            """A stored run: summary, diagnosis and evidence (the researcher whose job made it, or an auditor);
            every read is logged in the access log."""
            who = _allow(ctx, "researcher", "auditor")
            row = self.readable_run(who, run_id, "read_run")
            summary, evidence = self.diagnosis_of(row.run_id)
            return RunDetail(
                run=RunSummary.model_validate(row.model_dump()), diagnosis=summary, evidence=evidence
            )

        @server.tool()
        def verify_run(
            ctx: Context,
            run_id: Annotated[
                str, Field(min_length=1, max_length=200, description="The run's id (or a prefix).")
            ],
        ) -> VerifyResult:
            """Recompute every hash of a run's chain, its seal and its artifacts (auditors)."""
            who = _allow(ctx, "auditor")
            row = self.readable_run(who, run_id, "verify_run")
            check = self.store.verify(row.run_id)
            from dxgraph.server._verifications import record_verification

            record_verification(self.store, row.run_id, who.name, check)
            return VerifyResult(
                run_id=check.run_id, ok=check.ok, n_events=check.n_events, problems=list(check.problems)
            )

        @server.tool()
        def list_tools(ctx: Context) -> list[dict[str, Any]]:
            """Every registered measuring tool: name, version, what it measures, its modalities."""
            _principal(ctx)
            from dxgraph.tools import default_tools

            return [s.summary() for s in default_tools()]

        @server.tool()
        def list_criteria(ctx: Context) -> list[dict[str, Any]]:
            """The packaged criteria documents: id, version, disease, title, indicators."""
            _principal(ctx)
            from dxgraph.criteria_kb import packaged_criteria

            return [c.summary() for c in packaged_criteria()]


class McpMount:
    """ASGI middleware that serves ``/mcp`` with the MCP endpoint and passes every other request on.

    It sits outside the app's body limit: MCP bodies carry base64 images, a third larger than the bytes the
    multipart API counts, and the endpoint limits its bodies itself (``mcp_body_limit``, 413).
    """

    def __init__(self, app: ASGIApp, endpoint: McpEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one request."""
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path.rstrip("/") == MCP_PATH:
                await self.endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = [
    "DEFAULT_WAIT_S",
    "MAX_WAIT_S",
    "MCP_PATH",
    "DiagnoseResult",
    "DiagnosisSummary",
    "EvidenceValue",
    "ImageInput",
    "McpEndpoint",
    "McpMount",
    "RunDetail",
    "mcp_body_limit",
]
