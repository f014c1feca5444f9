"""The server: the HTTP API (``create_app``), accounts (API tokens with roles, stored as salted hashes)
and the access log.

Tokens and the access log live in the trace store's database, insert-only, so several server processes
sharing one store share them too.
"""

from __future__ import annotations

from dxgraph.server._accounts import (
    NAME_PATTERN,
    ROLES,
    TOKEN_PREFIX,
    AccessRecord,
    Accounts,
    Principal,
    Role,
    TokenInfo,
)
from dxgraph.server._api import NoOwnership, RunOwnership, create_app
from dxgraph.server._cohort_submit import CohortAccepted, CohortJobRow
from dxgraph.server._cohorts import (
    CohortCaseState,
    CohortStatus,
    CohortSummary,
    cohorts_router,
)
from dxgraph.server._errors import ERROR_CODES
from dxgraph.server._jobs import (
    ClaimedJob,
    JobCohortCase,
    JobImage,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobRequest,
    JobStatus,
    JobWorker,
    safe_file_name,
)
from dxgraph.server._mcp import (
    MCP_PATH,
    DiagnoseResult,
    DiagnosisSummary,
    EvidenceValue,
    ImageInput,
    McpEndpoint,
    RunDetail,
)
from dxgraph.server._progress import progress_router
from dxgraph.server._verifications import (
    VERIFIED_STATES,
    RunVerificationRow,
    Verified,
    latest_verifications,
    record_verification,
)
from dxgraph.server._web import SESSION_COOKIE, web_router

__all__ = [
    "ERROR_CODES",
    "MCP_PATH",
    "NAME_PATTERN",
    "ROLES",
    "SESSION_COOKIE",
    "TOKEN_PREFIX",
    "VERIFIED_STATES",
    "AccessRecord",
    "Accounts",
    "ClaimedJob",
    "CohortAccepted",
    "CohortCaseState",
    "CohortJobRow",
    "CohortStatus",
    "CohortSummary",
    "DiagnoseResult",
    "DiagnosisSummary",
    "EvidenceValue",
    "ImageInput",
    "JobCohortCase",
    "JobImage",
    "JobInfo",
    "JobNotFound",
    "JobQueue",
    "JobRequest",
    "JobStatus",
    "JobWorker",
    "McpEndpoint",
    "NoOwnership",
    "Principal",
    "Role",
    "RunDetail",
    "RunOwnership",
    "RunVerificationRow",
    "TokenInfo",
    "Verified",
    "cohorts_router",
    "create_app",
    "latest_verifications",
    "progress_router",
    "record_verification",
    "safe_file_name",
    "web_router",
]
