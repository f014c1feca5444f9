"""Accounts of the server: API tokens with a role, their revocations, and the access log.

A token is shown once, when it is created, and only a salted SHA-256 hash of its secret is stored. Its
text is ``dxg_<token id>_<secret>``: the id (12 hex digits, stored in clear) finds the row, the secret
is checked against the hash in constant time. The secret is 256 random bits, so a fast hash is as safe
as a slow password hash (there is no dictionary to try) and costs microseconds per request, where scrypt
cost 65 ms of CPU on every authenticated one. Everything is insert-only in the trace store's own
database, like the runs: a revocation is a row of its own, so the store keeps who held which role
when, and a token's name is never given to another token (the access log names tokens by name).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict
from sqlmodel import Field, Session, SQLModel, col, select

from dxgraph.errors import UserError
from dxgraph.traces import DuplicateRecord, TraceStore

Role = Literal["researcher", "auditor", "admin"]
"""What a token may do: researchers submit and read their own runs; auditors read, verify, replay and
export everything and never submit, change or delete; admins manage tokens."""
ROLES: tuple[Role, ...] = get_args(Role)
"""Every role, in the order above."""
TOKEN_PREFIX = "dxg_"
"""How every token's text starts (so a leaked one is recognisable in logs and secret scanners)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A token name: a letter or digit, then up to 63 letters, digits, dots, underscores or hyphens."""
_TOKEN_RE = re.compile(r"dxg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class ApiTokenRow(SQLModel, table=True):
    """One API token: its public id, name and role, and the salted hash of its secret."""

    __tablename__ = "api_tokens"
    token_id: str = Field(primary_key=True)
    """Public id: 12 hex digits, the token's text carries it in clear."""
    name: str = Field(unique=True)
    """Unique name, shown in the access log; never reused."""
    role: str
    """One of ``ROLES``."""
    salt_hex: str
    """Random salt of the hash, 16 bytes in hex."""
    secret_sha256_hex: str
    """SHA-256 of the salt followed by the secret, hex."""
    created_at: datetime
    """When it was created (UTC)."""


class TokenRevocationRow(SQLModel, table=True):
    """A token's revocation: from then on it authenticates no one."""

    __tablename__ = "api_token_revocations"
    token_id: str = Field(primary_key=True, foreign_key="api_tokens.token_id")
    """The revoked token."""
    revoked_at: datetime
    """When (UTC)."""


class AccessRow(SQLModel, table=True):
    """One access through the server: who, when, what."""

    __tablename__ = "access_log"
    access_id: str = Field(primary_key=True)
    """Random id of the record."""
    at: datetime = Field(index=True)
    """When (UTC)."""
    token_name: str = Field(index=True)
    """The token's name."""
    role: str
    """Its role at the time."""
    action: str
    """What was done, e.g. ``read_run``, ``verify_run``, ``submit``."""
    target: str = Field(index=True)
    """What it was done to, e.g. a run id."""


class TokenInfo(BaseModel):
    """A stored token as listed: never its secret."""

    model_config = ConfigDict(frozen=True)
    token_id: str
    """Public id."""
    name: str
    """Unique name."""
    role: Role
    """What it may do."""
    created_at: datetime
    """When it was created (UTC)."""
    revoked_at: datetime | None = None
    """When it was revoked (UTC); None while it is valid."""


class Principal(BaseModel):
    """Who a request comes from: a valid token's name and role."""

    model_config = ConfigDict(frozen=True)
    token_id: str
    """The token's public id."""
    name: str
    """The token's name."""
    role: Role
    """What it may do."""


class AccessRecord(BaseModel):
    """One line of the access log."""

    model_config = ConfigDict(frozen=True)
    at: datetime
    """When (UTC)."""
    token_name: str
    """Who."""
    role: Role
    """In which role."""
    action: str
    """What was done."""
    target: str
    """To what."""


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


class Accounts:
    """The tokens, revocations and access log kept in one trace store's database."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        """The trace store whose database holds them."""

    def create_token(self, role: str, name: str | None = None) -> tuple[TokenInfo, str]:
        """A new token with this role: its listing and its text, which is shown this once only.

        UserError for an unknown role, a name that is not ``NAME_PATTERN`` or one already used.
        """
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
        token_id = secrets.token_hex(6)
        name = name if name is not None else f"{role}-{token_id[:6]}"
        if not NAME_PATTERN.fullmatch(name):
            raise UserError(
                f"bad token name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        row = ApiTokenRow(
            token_id=token_id,
            name=name,
            role=role,
            salt_hex=salt.hex(),
            secret_sha256_hex=_hash(secret, salt).hex(),
            created_at=_now(),
        )
        try:
            self.store.insert([row])
        except DuplicateRecord:
            raise UserError(
                f"a token named {name!r} exists already (names are never reused, revoked or not, so the "
                "access log stays unambiguous); choose another --name"
            ) from None
        return self._info(row, None), f"{TOKEN_PREFIX}{token_id}_{secret}"

    def list_tokens(self) -> list[TokenInfo]:
        """Every token, oldest first, with its revocation time when it was revoked."""
        with Session(self.store.engine) as s:
            rows = s.exec(
                select(ApiTokenRow).order_by(col(ApiTokenRow.created_at), col(ApiTokenRow.name))
            ).all()
            revoked = {r.token_id: r.revoked_at for r in s.exec(select(TokenRevocationRow)).all()}
        return [self._info(r, revoked.get(r.token_id)) for r in rows]

    def revoke(self, name: str) -> TokenInfo:
        """Revoke the token of this name; UserError when there is none or it is revoked already."""
        with Session(self.store.engine) as s:
            row = s.exec(select(ApiTokenRow).where(ApiTokenRow.name == name)).first()
        if row is None:
            raise UserError(f"no token named {name!r}; see 'dxgraph token list'")
        at = _now()
        try:
            self.store.insert([TokenRevocationRow(token_id=row.token_id, revoked_at=at)])
        except DuplicateRecord:
            raise UserError(f"the token {name!r} is revoked already") from None
        return self._info(row, at)

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token's text stands for, or None when it is malformed, unknown, wrong or revoked."""
        m = _TOKEN_RE.fullmatch(token.strip())
        if m is None:
            return None
        token_id, secret = m.groups()
        with Session(self.store.engine) as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None or s.get(TokenRevocationRow, token_id) is not None:
                return None
        expected = bytes.fromhex(row.secret_sha256_hex)
        if not hmac.compare_digest(_hash(secret, bytes.fromhex(row.salt_hex)), expected):
            return None
        return Principal(token_id=row.token_id, name=row.name, role=row.role)

    def principal_by_id(self, token_id: str) -> Principal | None:
        """The principal of a token by its public id, or None when there is none or it is revoked."""
        with Session(self.store.engine) as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None or s.get(TokenRevocationRow, token_id) is not None:
                return None
        return Principal(token_id=row.token_id, name=row.name, role=row.role)

    def log_access(self, who: Principal, action: str, target: str) -> None:
        """Append one line to the access log."""
        row = AccessRow(
            access_id=secrets.token_hex(12),
            at=_now(),
            token_name=who.name,
            role=who.role,
            action=action,
            target=target,
        )
        self.store.insert([row])

    def access_log(
        self, *, target: str | None = None, token_name: str | None = None, limit: int | None = 200
    ) -> list[AccessRecord]:
        """The access log, newest first, optionally of one target or one token."""
        query = select(AccessRow)
        if target is not None:
            query = query.where(AccessRow.target == target)
        if token_name is not None:
            query = query.where(AccessRow.token_name == token_name)
        query = query.order_by(col(AccessRow.at).desc(), col(AccessRow.access_id)).limit(limit)
        with Session(self.store.engine) as s:
            rows = s.exec(query).all()
        return [
            AccessRecord(
                at=_utc(r.at), token_name=r.token_name, role=r.role, action=r.action, target=r.target
            )
            for r in rows
        ]

    @staticmethod
    def _info(row: ApiTokenRow, revoked_at: datetime | None) -> TokenInfo:
        return TokenInfo(
            token_id=row.token_id,
            name=row.name,
            role=row.role,
            created_at=_utc(row.created_at),
            revoked_at=None if revoked_at is None else _utc(revoked_at),
        )
