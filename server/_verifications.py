"""Recorded verifications: every check of a stored run's hash chain through the server (the API's
``POST /v1/runs/{id}/verify``, the web app's *verify* button, the MCP ``verify_run`` tool) leaves a row
saying who checked which run, when, and what was found.

The rows are insert-only (schema 7, ``run_verifications``), like the runs themselves: a later check never
overwrites an earlier one, so the store keeps when a run was last seen intact and when it first was not.
A run's *verified* state is that of its latest verification: ``yes`` (intact), ``no`` (a problem was
found) or ``never``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, get_args

from sqlmodel import Field, Session, SQLModel, col, select

from dxgraph.traces import ChainCheck, TraceStore

Verified = Literal["yes", "no", "never"]
"""A run's verified state: its latest verification found it intact (yes) or not (no), or it has none."""
VERIFIED_STATES: tuple[Verified, ...] = get_args(Verified)
"""Every verified state, in the order above."""
_CHUNK = 500  # run ids per IN (...) query: well under SQLite's bound-parameter limit


class RunVerificationRow(SQLModel, table=True):
    """One verification of a stored run: who checked it, when, and the outcome (insert-only)."""

    __tablename__ = "run_verifications"
    verification_id: str = Field(primary_key=True)
    """Random id of the record (24 hex digits)."""
    run_id: str = Field(index=True)
    """The run checked."""
    at: datetime = Field(index=True)
    """When it was checked (UTC)."""
    verified_by: str
    """The name of the token that asked for the check."""
    ok: bool
    """Whether the chain, the seal and the artifacts were intact."""
    n_events: int
    """Events checked."""
    problem: str | None = None
    """What was wrong, one problem a line (first break first); None when intact."""


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def record_verification(
    store: TraceStore, run_id: str, principal_name: str, check: ChainCheck
) -> RunVerificationRow:
    """Store the outcome of ``check`` on ``run_id``, asked for by the token ``principal_name``; the row."""
    row = RunVerificationRow(
        verification_id=secrets.token_hex(12),
        run_id=run_id,
        at=datetime.now(UTC),
        verified_by=principal_name,
        ok=check.ok,
        n_events=check.n_events,
        problem=None if check.ok else ("\n".join(check.problems) or "not intact"),
    )
    store.insert([row])  # the store inserts a copy: ``row`` stays a plain, detached object
    return row


def latest_verifications(store: TraceStore, run_ids: Iterable[str]) -> dict[str, RunVerificationRow]:
    """The latest verification of each of these runs that has one, by run id (times in UTC)."""
    ids = list(dict.fromkeys(run_ids))
    latest: dict[str, RunVerificationRow] = {}
    with Session(store.engine) as s:
        for i in range(0, len(ids), _CHUNK):
            query = (
                select(RunVerificationRow)
                .where(col(RunVerificationRow.run_id).in_(ids[i : i + _CHUNK]))
                .order_by(col(RunVerificationRow.at), col(RunVerificationRow.verification_id))
            )
            for row in s.exec(query):
                latest[row.run_id] = row  # oldest first: the last one kept is the latest
        s.expunge_all()
    for row in latest.values():
        row.at = _utc(row.at)
    return latest


def verified_state(row: RunVerificationRow | None) -> Verified:
    """A run's verified state from its latest verification (None: never verified)."""
    if row is None:
        return "never"
    return "yes" if row.ok else "no"


__all__ = [
    "VERIFIED_STATES",
    "RunVerificationRow",
    "Verified",
    "latest_verifications",
    "record_verification",
    "verified_state",
]
