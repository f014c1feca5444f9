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
from dxgraph.server._errors import ERROR_CODES
from dxgraph.server._jobs import (
    ClaimedJob,
    JobImage,
    JobInfo,
    JobNotFound,
    JobQueue,
    JobRequest,
    JobStatus,
    JobWorker,
    safe_file_name,
)

__all__ = [
    "ERROR_CODES",
    "NAME_PATTERN",
    "ROLES",
    "TOKEN_PREFIX",
    "AccessRecord",
    "Accounts",
    "ClaimedJob",
    "JobImage",
    "JobInfo",
    "JobNotFound",
    "JobQueue",
    "JobRequest",
    "JobStatus",
    "JobWorker",
    "NoOwnership",
    "Principal",
    "Role",
    "RunOwnership",
    "TokenInfo",
    "create_app",
    "safe_file_name",
]
