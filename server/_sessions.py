"""The web app's sessions: signed cookies that every server of one trace store accepts, and that survive
a restart.

A session's cookie holds ``<token id>.<expiry>.<nonce>.<signature>``: the id of the token that signed in
(``-`` before signing in), when the session ends (Unix seconds), a random nonce, and an HMAC-SHA256 of
the three under the store's session key, which the first server creates and every server of the store
shares (a row of ``web_session_keys``). The token's secret is never in the cookie. A session's CSRF token
is an HMAC of its cookie under the same key, so any server can check a form. Each request checks the
signature, the expiry, that the session was not ended by signing out (``web_session_ends``) and that its
token is not revoked. Signed-in sessions last ``SESSION_TTL_S`` from signing in; a sign-in form's
session, ``ANONYMOUS_TTL_S``. Whoever can read the store can read its key and forge sessions; they can
already read every trace in it, so the key needs no more protection than the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from dxgraph.server._accounts import Accounts, Principal
from dxgraph.traces import DuplicateRecord, TraceStore

SESSION_TTL_S = 8 * 3600
"""A signed-in session ends this long after signing in, seconds."""
ANONYMOUS_TTL_S = 1800
"""A sign-in form's session (its CSRF token only) lasts this long, seconds."""
_COOKIE = re.compile(r"^(-|[0-9a-f]{12})\.([0-9]{1,12})\.([A-Za-z0-9_-]{16,64})\.([0-9a-f]{64})$")


class WebSessionKeyRow(SQLModel, table=True):
    """A key that signs session cookies (the oldest one is used)."""

    __tablename__ = "web_session_keys"
    key_id: str = Field(primary_key=True)
    """Random id."""
    created_at: datetime = Field(index=True)
    """When it was made (UTC)."""
    key_hex: str
    """256 random bits, hex."""


class WebSessionEndRow(SQLModel, table=True):
    """A session ended by signing out before it expired."""

    __tablename__ = "web_session_ends"
    nonce: str = Field(primary_key=True)
    """The session's nonce."""
    ended_at: datetime
    """When (UTC)."""


@dataclass(frozen=True)
class WebSession:
    """One browser's session: its cookie, its CSRF token and, once signed in, its principal."""

    session_id: str
    """What the cookie holds (signed, never a token's secret)."""
    csrf: str
    """The token every form of this session carries."""
    principal: Principal | None
    """Who signed in; None before signing in."""
    expires_at: float
    """When it ends (Unix seconds)."""


class SignedSessions:
    """Makes and checks the signed session cookies of one trace store's web app."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        """The store whose key signs the cookies and whose rows end sessions."""
        self.accounts = Accounts(store)
        """Its tokens (a session's principal is its token, while not revoked)."""
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def key(self) -> bytes:
        """The store's session key, made by the first server that needs one."""
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._load_or_make_key()
        return self._key

    def _load_or_make_key(self) -> bytes:
        table = WebSessionKeyRow.__table__  # type: ignore[attr-defined]
        oldest = sa.select(table.c.key_hex).order_by(table.c.created_at, table.c.key_id).limit(1)
        with self.store.engine.connect() as conn:
            found = conn.execute(oldest).scalar()
        if found is None:
            row = WebSessionKeyRow(
                key_id=secrets.token_hex(8), created_at=datetime.now(UTC), key_hex=secrets.token_hex(32)
            )
            try:
                self.store.insert([row])
            except DuplicateRecord:  # pragma: no cover - a random id taken twice
                pass
            with self.store.engine.connect() as conn:  # two servers racing: both take the oldest
                found = conn.execute(oldest).scalar()
        assert found is not None
        return bytes.fromhex(found)

    def _sign(self, text: str) -> str:
        return hmac.new(self.key(), text.encode(), hashlib.sha256).hexdigest()

    def new(self, principal: Principal | None) -> WebSession:
        """A fresh session for ``principal`` (None: a sign-in form's), with a new nonce."""
        ttl = SESSION_TTL_S if principal is not None else ANONYMOUS_TTL_S
        expires = int(time.time()) + ttl
        body = f"{principal.token_id if principal else '-'}.{expires}.{secrets.token_urlsafe(24)}"
        session_id = f"{body}.{self._sign(body)}"
        return WebSession(session_id, self._sign("csrf\x00" + session_id), principal, float(expires))

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session this cookie stands for, or None: malformed, forged, expired, ended or revoked."""
        m = _COOKIE.fullmatch(session_id or "")
        if m is None:
            return None
        token_id, expires, nonce, signature = m.groups()
        body = f"{token_id}.{expires}.{nonce}"
        if not hmac.compare_digest(signature, self._sign(body)) or int(expires) < time.time():
            return None
        if self._ended(nonce):
            return None
        principal = None
        if token_id != "-":
            principal = self.accounts.principal_by_id(token_id)
            if principal is None:  # revoked (or gone)
                return None
        assert session_id is not None
        return WebSession(session_id, self._sign("csrf\x00" + session_id), principal, float(expires))

    def drop(self, session_id: str) -> None:
        """End a session before it expires (signing out): no server accepts its cookie again."""
        m = _COOKIE.fullmatch(session_id)
        if m is None:
            return
        try:
            self.store.insert([WebSessionEndRow(nonce=m.group(3), ended_at=datetime.now(UTC))])
        except DuplicateRecord:
            pass  # ended already

    def _ended(self, nonce: str) -> bool:
        table = WebSessionEndRow.__table__  # type: ignore[attr-defined]
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(table.c.nonce).where(table.c.nonce == nonce)).first() is not None
