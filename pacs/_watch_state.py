"""Watch mode's state in the trace store (schema 10, insert-only): cursors, claims and outcomes per PACS.

* ``pacs_watch_cursors``: where the watcher is in the PACS's feed; a new row per advance, the newest wins.
* ``pacs_watch_claims``: a study taken in hand, written before its pull and push (once per PACS and study).
* ``pacs_watch_studies``: a study's outcome (processed, skipped or failed) with the reason and the run id,
  written once: a study with an outcome is never processed again.

A claim without an outcome is a study whose watcher stopped (or lost the PACS) in the middle: it is resumed,
and recorded processed without a second push when ``pacs_pushes`` already holds a push for it made after
the claim.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from dxgraph.traces import TraceStore

_MD = sa.MetaData()
CURSORS = sa.Table(
    "pacs_watch_cursors",
    _MD,
    sa.Column("cursor_id", sa.String, primary_key=True),
    sa.Column("pacs_url", sa.String, nullable=False),
    sa.Column("cursor", sa.String, nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
)
"""The feed cursors (the newest row per PACS wins)."""
CLAIMS = sa.Table(
    "pacs_watch_claims",
    _MD,
    sa.Column("pacs_url", sa.String, primary_key=True),
    sa.Column("study_uid", sa.String, primary_key=True),
    sa.Column("task", sa.String, nullable=False),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
)
"""Studies taken in hand."""
STUDIES = sa.Table(
    "pacs_watch_studies",
    _MD,
    sa.Column("pacs_url", sa.String, primary_key=True),
    sa.Column("study_uid", sa.String, primary_key=True),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=True),
    sa.Column("at", sa.DateTime, nullable=False),
)
"""Each study's outcome."""
_PUSHES = sa.table(
    "pacs_pushes",
    sa.column("run_id", sa.String),
    sa.column("pacs_url", sa.String),
    sa.column("study_uid", sa.String),
    sa.column("pushed_at", sa.DateTime),
)


@dataclass(frozen=True)
class StudyRecord:
    """A study's outcome as stored."""

    study_uid: str
    """StudyInstanceUID."""
    status: str
    """``processed``, ``skipped`` or ``failed``."""
    reason: str
    """Why (the rule and task, the reason it was skipped, or the error)."""
    run_id: str | None
    """The run, for a processed study (and a failed one that got as far as a run)."""
    at: datetime
    """When it was recorded (UTC)."""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive_utc(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def _insert_once(store: TraceStore, table: sa.Table, row: Mapping[str, object]) -> bool:
    """Insert a row; False when its key is already stored (nothing written)."""
    try:
        with store.write_transaction() as conn:
            conn.execute(sa.insert(table), row)
    except sa.exc.IntegrityError:
        return False
    return True


def load_cursor(store: TraceStore, pacs_url: str) -> str | None:
    """The newest cursor stored for the PACS, or None."""
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(CURSORS.c.cursor)
            .where(CURSORS.c.pacs_url == pacs_url)
            .order_by(CURSORS.c.cursor_id.desc())
            .limit(1)
        ).scalar()


def save_cursor(store: TraceStore, pacs_url: str, cursor: str) -> None:
    """Store a new cursor for the PACS (a new row: the newest wins)."""
    cursor_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"  # sorts by time
    _insert_once(
        store, CURSORS, {"cursor_id": cursor_id, "pacs_url": pacs_url, "cursor": cursor, "at": _now()}
    )


def claim(store: TraceStore, pacs_url: str, study_uid: str, task: str) -> bool:
    """Take a study in hand; False when it was claimed before."""
    row = {"pacs_url": pacs_url, "study_uid": study_uid, "task": task, "claimed_at": _now()}
    return _insert_once(store, CLAIMS, row)


def record(
    store: TraceStore, pacs_url: str, study_uid: str, status: str, reason: str, run_id: str | None = None
) -> bool:
    """Record a study's outcome; False when it already had one (nothing written)."""
    row = {
        "pacs_url": pacs_url,
        "study_uid": study_uid,
        "status": status,
        "reason": reason[:2000],
        "run_id": run_id,
        "at": _now(),
    }
    return _insert_once(store, STUDIES, row)


def known(store: TraceStore, pacs_url: str, study_uids: list[str]) -> set[str]:
    """Those of ``study_uids`` that have an outcome or a claim for the PACS."""
    found: set[str] = set()
    with store.engine.connect() as conn:
        for i in range(0, len(study_uids), 500):
            chunk = study_uids[i : i + 500]
            for table in (STUDIES, CLAIMS):
                q = sa.select(table.c.study_uid).where(
                    table.c.pacs_url == pacs_url, table.c.study_uid.in_(chunk)
                )
                found |= set(conn.execute(q).scalars())
    return found


def unfinished_claims(store: TraceStore, pacs_url: str) -> list[tuple[str, str, datetime]]:
    """(study uid, task, claimed at) of the PACS's claims without an outcome, oldest first."""
    q = (
        sa.select(CLAIMS.c.study_uid, CLAIMS.c.task, CLAIMS.c.claimed_at)
        .select_from(
            CLAIMS.outerjoin(
                STUDIES,
                sa.and_(STUDIES.c.pacs_url == CLAIMS.c.pacs_url, STUDIES.c.study_uid == CLAIMS.c.study_uid),
            )
        )
        .where(CLAIMS.c.pacs_url == pacs_url, STUDIES.c.study_uid.is_(None))
        .order_by(CLAIMS.c.claimed_at, CLAIMS.c.study_uid)
    )
    with store.engine.connect() as conn:
        return [(str(u), str(t), c) for u, t, c in conn.execute(q)]


def pushed_since(store: TraceStore, pacs_url: str, study_uid: str, since: datetime) -> str | None:
    """The run id of a push to the PACS of a run of this study made at or after ``since``, or None."""
    q = sa.select(_PUSHES.c.run_id, _PUSHES.c.pushed_at).where(
        _PUSHES.c.pacs_url == pacs_url, _PUSHES.c.study_uid == study_uid
    )
    with store.engine.connect() as conn:
        rows = [(str(r), _naive_utc(t)) for r, t in conn.execute(q)]
    late = sorted((t, r) for r, t in rows if t >= _naive_utc(since))
    return late[-1][1] if late else None


def study_records(store: TraceStore, pacs_url: str) -> list[StudyRecord]:
    """Every outcome recorded for the PACS, oldest first."""
    q = (
        sa.select(STUDIES.c.study_uid, STUDIES.c.status, STUDIES.c.reason, STUDIES.c.run_id, STUDIES.c.at)
        .where(STUDIES.c.pacs_url == pacs_url)
        .order_by(STUDIES.c.at, STUDIES.c.study_uid)
    )
    with store.engine.connect() as conn:
        return [StudyRecord(*row) for row in conn.execute(q)]
