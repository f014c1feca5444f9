"""Who is asking, and may they: the bearer token of a request, checked against the store's accounts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dxgraph.server._accounts import Principal, Role
from dxgraph.server._errors import ApiError
from dxgraph.server._state import accounts_of

_bearer = HTTPBearer(auto_error=False, description="A token from 'dxgraph token create'.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The principal of the request's ``Authorization: Bearer`` token; 401 when it is missing or invalid."""
    if credentials is None:
        raise ApiError(401, "sign in: send 'Authorization: Bearer <token>'", headers=_CHALLENGE)
    who = accounts_of(request).authenticate(credentials.credentials)
    if who is None:
        raise ApiError(401, "the token is not valid (unknown, wrong or revoked)", headers=_CHALLENGE)
    return who


def allow(*roles: Role) -> Callable[..., Principal]:
    """A dependency that lets these roles through and answers 403 to the others."""

    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in roles:
            raise ApiError(403, f"the {who.role} role may not do this (allowed: {', '.join(roles)})")
        return who

    return check


Anyone = Annotated[Principal, Depends(principal)]
"""Any valid token."""
Reader = Annotated[Principal, Depends(allow("researcher", "auditor"))]
"""A researcher (their own runs) or an auditor (every run)."""
Researcher = Annotated[Principal, Depends(allow("researcher"))]
"""A researcher."""
Auditor = Annotated[Principal, Depends(allow("auditor"))]
"""An auditor."""
Admin = Annotated[Principal, Depends(allow("admin"))]
"""An admin."""
