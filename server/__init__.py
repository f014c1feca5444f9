"""The server's foundations: accounts (API tokens with roles, stored as salted hashes) and the access log.

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

__all__ = [
    "NAME_PATTERN",
    "ROLES",
    "TOKEN_PREFIX",
    "AccessRecord",
    "Accounts",
    "Principal",
    "Role",
    "TokenInfo",
]
