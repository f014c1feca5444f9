"""Watch mode's state in the trace store (schemas 10 and 11, insert-only): cursors, attempts and outcomes.

* ``pacs_watch_cursors``: where the watcher is in the PACS's feed; a new row per advance, the newest wins.
* ``pacs_watch_attempts``: a watcher's claim on a study, keyed (PACS, study, attempt): the owner id, the
  task and a lease. Claiming is one transaction that reads the study's attempts and inserts the next one;
  two watchers racing for a study insert the same key and one of them loses, so a study is in one
  watcher's hands at a time.
* ``pacs_watch_heartbeats``: renewals of an attempt's lease while its watcher works on it.
* ``pacs_watch_attempt_ends``: how an attempt ended: ``failed`` (with the time a retry is due),
  ``interrupted`` (the PACS went away: due again at once, not counted as a failure), ``lapsed`` (its
  watcher stopped renewing the lease, or died: written by the watcher that takes the study over, and
  counted as a failure), ``processed`` or ``skipped``.
* ``pacs_watch_studies``: a study's outcome (processed, skipped or failed for good) with the reason and the
  run id, written once: a study with an outcome is never processed again. A study is failed for good once
  ``max_attempts`` of its attempts failed or lapsed; the reason keeps the last failure's.

A claim is free to take when the study has no outcome and its latest attempt ended failed or interrupted
with its retry due, or is open with a lease run out (or its owner, a process on this machine, is gone).
Schema 11 turned schema 10's claims without an outcome (``pacs_watch_claims``) into lapsed first attempts.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

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
ATTEMPTS = sa.Table(
    "pacs_watch_attempts",
    _MD,
    sa.Column("pacs_url", sa.String, primary_key=True),
    sa.Column("study_uid", sa.String, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("task", sa.String, nullable=True),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
    sa.Column("lease_until", sa.DateTime, nullable=False),
)
"""Each claim of a study by a watcher."""
BEATS = sa.Table(
    "pacs_watch_heartbeats",
    _MD,
    sa.Column("pacs_url", sa.String, primary_key=True),
    sa.Column("study_uid", sa.String, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("beat", sa.Integer, primary_key=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("lease_until", sa.DateTime, nullable=False),
)
"""Lease renewals."""
ENDS = sa.Table(
    "pacs_watch_attempt_ends",
    _MD,
    sa.Column("pacs_url", sa.String, primary_key=True),
    sa.Column("study_uid", sa.String, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=True),
    sa.Column("retry_after", sa.DateTime, nullable=True),
    sa.Column("at", sa.DateTime, nullable=False),
)
"""How each attempt ended."""
_PUSHES = sa.table(
    "pacs_pushes",
    sa.column("run_id", sa.String),
    sa.column("pacs_url", sa.String),
    sa.column("study_uid", sa.String),
    sa.column("pushed_at", sa.DateTime),
)
COUNTED = ("failed", "lapsed")
"""Attempt ends that count towards ``max_attempts``."""
_T = TypeVar("_T")


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


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt at a study, as stored, with its end (None while it is open)."""

    study_uid: str
    """StudyInstanceUID."""
    attempt: int
    """1, 2, ... per PACS and study."""
    owner: str
    """The watcher that claimed it (``watcher_id``)."""
    task: str | None
    """The task it was routed to (None when the routing itself failed)."""
    claimed_at: datetime
    """When it was claimed (UTC)."""
    lease_until: datetime
    """The end of its lease, heartbeats included (UTC)."""
    status: str | None
    """How it ended: failed, interrupted, lapsed, processed, skipped; None while open."""
    reason: str | None
    """Why it ended so."""
    retry_after: datetime | None
    """For a failed or interrupted attempt not given up on: when the next attempt is due (UTC)."""


@dataclass(frozen=True)
class Claim:
    """A study in a watcher's hands: the attempt it inserted."""

    pacs_url: str
    """The PACS's DICOMweb URL."""
    study_uid: str
    """StudyInstanceUID."""
    attempt: int
    """The attempt's number (1 for a study never tried)."""
    owner: str
    """The watcher holding it."""
    task: str | None
    """The routed task."""
    first_claimed_at: datetime
    """When the study's first attempt was claimed (pushes since then count as this study's)."""
    failures_before: int
    """Earlier attempts that failed or lapsed."""
    took_over: bool
    """True when the previous attempt's watcher stopped without ending it."""


@dataclass(frozen=True)
class Recorded:
    """An outcome written while claiming (a study given up on, or found pushed before)."""

    status: str
    """``processed`` or ``failed``."""
    reason: str
    """Why."""
    run_id: str | None
    """The run pushed, for ``processed``."""


def watcher_id() -> str:
    """A new watcher's owner id: host, PID namespace and PID (to tell a dead local owner), and a random part."""
    return f"{socket.gethostname()}/{_pid_namespace()}/{os.getpid()}/{secrets.token_hex(4)}"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def owner_gone(owner: str) -> bool:
    """Whether ``owner`` is a watcher process of this machine (same PID namespace) that no longer runs.

    False when that cannot be told (another machine, this very process, an unknown owner): its lease decides.
    """
    parts = owner.split("/")
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    host, ns, pid = parts[0], parts[1], int(parts[2])
    if host != socket.gethostname() or ns != _pid_namespace() or ns == "-" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive_utc(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def _in_transaction(store: TraceStore, work: Callable[[sa.Connection], _T]) -> _T:
    """Run ``work`` in a write transaction, again after a busy store or a PostgreSQL deadlock (IntegrityError
    is the caller's)."""
    for i in range(20):
        try:
            with store.write_transaction() as conn:
                return work(conn)
        except sa.exc.OperationalError:
            if i == 19:
                raise
            time.sleep(0.02 + secrets.randbelow(80) / 1000)
    raise AssertionError("unreachable")


def _insert_once(store: TraceStore, table: sa.Table, row: Mapping[str, object]) -> bool:
    """Insert a row; False when its key is already stored (nothing written)."""
    try:
        _in_transaction(store, lambda conn: conn.execute(sa.insert(table), row))
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


def _attempts(conn: sa.Connection, pacs_url: str, study_uids: Iterable[str] | None) -> list[AttemptRecord]:
    """The attempts at these studies (all studies without an outcome when None), by study and number."""
    beats = (
        sa.select(BEATS.c.study_uid, BEATS.c.attempt, sa.func.max(BEATS.c.lease_until).label("lease_until"))
        .where(BEATS.c.pacs_url == pacs_url)
        .group_by(BEATS.c.study_uid, BEATS.c.attempt)
        .subquery("b")
    )
    q = (
        sa.select(
            ATTEMPTS.c.study_uid,
            ATTEMPTS.c.attempt,
            ATTEMPTS.c.owner,
            ATTEMPTS.c.task,
            ATTEMPTS.c.claimed_at,
            ATTEMPTS.c.lease_until,
            beats.c.lease_until.label("renewed_until"),
            ENDS.c.status,
            ENDS.c.reason,
            ENDS.c.retry_after,
        )
        .select_from(
            ATTEMPTS.outerjoin(
                beats,
                sa.and_(beats.c.study_uid == ATTEMPTS.c.study_uid, beats.c.attempt == ATTEMPTS.c.attempt),
            ).outerjoin(
                ENDS,
                sa.and_(
                    ENDS.c.pacs_url == ATTEMPTS.c.pacs_url,
                    ENDS.c.study_uid == ATTEMPTS.c.study_uid,
                    ENDS.c.attempt == ATTEMPTS.c.attempt,
                ),
            )
        )
        .where(ATTEMPTS.c.pacs_url == pacs_url)
        .order_by(ATTEMPTS.c.study_uid, ATTEMPTS.c.attempt)
    )
    if study_uids is not None:
        q = q.where(ATTEMPTS.c.study_uid.in_(list(study_uids)))
    else:
        done = (
            sa.select(STUDIES.c.study_uid)
            .where(STUDIES.c.pacs_url == pacs_url, STUDIES.c.study_uid == ATTEMPTS.c.study_uid)
            .exists()
        )
        q = q.where(~done)
    return [
        AttemptRecord(
            study_uid=r.study_uid,
            attempt=r.attempt,
            owner=r.owner,
            task=r.task,
            claimed_at=r.claimed_at,
            lease_until=max(r.lease_until, r.renewed_until or r.lease_until),
            status=r.status,
            reason=r.reason,
            retry_after=r.retry_after,
        )
        for r in conn.execute(q)
    ]


def _free(latest: AttemptRecord, now: datetime) -> bool:
    """Whether a study whose latest attempt is ``latest`` may be claimed now."""
    if latest.status is None:
        return latest.lease_until < now or owner_gone(latest.owner)
    return latest.status in ("failed", "interrupted") and (latest.retry_after or now) <= now


def _end_row(
    pacs_url: str,
    study_uid: str,
    attempt: int,
    status: str,
    reason: str,
    now: datetime,
    run_id: str | None = None,
    retry_after: datetime | None = None,
) -> dict[str, Any]:
    return {
        "pacs_url": pacs_url,
        "study_uid": study_uid,
        "attempt": attempt,
        "status": status,
        "reason": reason[:2000],
        "run_id": run_id,
        "retry_after": retry_after,
        "at": now,
    }


def _outcome_row(
    pacs_url: str, study_uid: str, status: str, reason: str, run_id: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "pacs_url": pacs_url,
        "study_uid": study_uid,
        "status": status,
        "reason": reason[:2000],
        "run_id": run_id,
        "at": now,
    }


def _gave_up(n_failures: int, last_reason: str) -> str:
    return f"gave up after {n_failures} failed attempts; the last: {last_reason}"


def claim(
    store: TraceStore,
    pacs_url: str,
    study_uid: str,
    task: str | None,
    owner: str,
    *,
    lease_s: float,
    max_attempts: int,
) -> Claim | Recorded | None:
    """Take a study in hand (one transaction): the new attempt; None when it has an outcome, another
    watcher's live lease holds it, its retry is not due, or another watcher won the race for it.

    Taking over an attempt whose lease ran out (or whose owner is gone) ends that attempt ``lapsed``. When
    that makes ``max_attempts`` failures, nothing is claimed: the study is recorded (failed for good, or
    processed when a push of it was made since its first claim) and that outcome returned.
    """

    def work(conn: sa.Connection) -> Claim | Recorded | None:
        now = _now()
        outcome = sa.select(STUDIES.c.status).where(
            STUDIES.c.pacs_url == pacs_url, STUDIES.c.study_uid == study_uid
        )
        if conn.execute(outcome).first() is not None:
            return None
        tried = _attempts(conn, pacs_url, [study_uid])
        took_over = False
        if tried:
            latest = tried[-1]
            if not _free(latest, now):
                return None
            if latest.status is None:
                why = (
                    "its watcher is gone"
                    if latest.lease_until >= now
                    else "its watcher stopped renewing the lease"
                )
                reason = f"{why} ({latest.owner}); taken over by {owner}"
                conn.execute(
                    sa.insert(ENDS), _end_row(pacs_url, study_uid, latest.attempt, "lapsed", reason, now)
                )
                tried[-1] = replace(latest, status="lapsed", reason=reason)
                took_over = True
        failures = [a for a in tried if a.status in COUNTED]
        first_claimed_at = tried[0].claimed_at if tried else now
        if failures and len(failures) >= max_attempts:
            run_id = _pushed_since(conn, pacs_url, study_uid, first_claimed_at)
            if run_id is not None:
                recorded = Recorded("processed", "pushed before its watcher stopped", run_id)
            else:
                recorded = Recorded("failed", _gave_up(len(failures), failures[-1].reason or "?"), None)
            conn.execute(
                sa.insert(STUDIES),
                _outcome_row(pacs_url, study_uid, recorded.status, recorded.reason, recorded.run_id, now),
            )
            return recorded
        attempt = tried[-1].attempt + 1 if tried else 1
        conn.execute(
            sa.insert(ATTEMPTS),
            {
                "pacs_url": pacs_url,
                "study_uid": study_uid,
                "attempt": attempt,
                "owner": owner,
                "task": task,
                "claimed_at": now,
                "lease_until": now + timedelta(seconds=lease_s),
            },
        )
        return Claim(pacs_url, study_uid, attempt, owner, task, first_claimed_at, len(failures), took_over)

    try:
        return _in_transaction(store, work)
    except sa.exc.IntegrityError:
        return None  # another watcher claimed (or recorded) it in between


def renew(store: TraceStore, c: Claim, beat: int, lease_s: float) -> bool:
    """Extend a claim's lease by ``lease_s`` from now (``beat``: 1, 2, ... per attempt); False if not written."""
    now = _now()
    row = {
        "pacs_url": c.pacs_url,
        "study_uid": c.study_uid,
        "attempt": c.attempt,
        "beat": beat,
        "at": now,
        "lease_until": now + timedelta(seconds=lease_s),
    }
    return _insert_once(store, BEATS, row)


def holds(store: TraceStore, c: Claim) -> bool:
    """Whether the claim is still open (no other watcher took the study over, ending it ``lapsed``)."""
    q = sa.select(ENDS.c.status).where(
        ENDS.c.pacs_url == c.pacs_url, ENDS.c.study_uid == c.study_uid, ENDS.c.attempt == c.attempt
    )
    with store.engine.connect() as conn:
        return conn.execute(q).first() is None


def finish(
    store: TraceStore,
    c: Claim,
    status: str,
    reason: str,
    run_id: str | None = None,
    *,
    max_attempts: int,
    backoff_s: float,
) -> tuple[str, str, datetime | None] | None:
    """End a claimed attempt: ``processed``/``skipped`` (the study's outcome too), ``failed`` (a retry due
    after ``backoff_s`` doubled per earlier failure, or the study failed for good at ``max_attempts``), or
    ``interrupted`` (due again at once, not counted). (The status, the reason, the retry time) as stored;
    None when the attempt or the study was ended by another watcher meanwhile (nothing written then).
    """
    now = _now()
    retry_after: datetime | None = None
    final_status, final_reason = status, reason
    if status == "failed":
        n = c.failures_before + 1
        if n < max_attempts:
            retry_after = now + timedelta(seconds=backoff_s * 2 ** (n - 1))
        else:
            final_reason = _gave_up(n, reason)
    elif status == "interrupted":
        retry_after = now
    elif status not in ("processed", "skipped"):
        raise ValueError(f"no attempt status {status!r}")
    final = status in ("processed", "skipped") or (status == "failed" and retry_after is None)

    def work(conn: sa.Connection) -> None:
        conn.execute(
            sa.insert(ENDS),
            _end_row(c.pacs_url, c.study_uid, c.attempt, status, reason, now, run_id, retry_after),
        )
        if final:
            conn.execute(
                sa.insert(STUDIES),
                _outcome_row(c.pacs_url, c.study_uid, final_status, final_reason, run_id, now),
            )

    try:
        _in_transaction(store, work)
    except sa.exc.IntegrityError:
        return None
    return final_status if final else status, final_reason, retry_after


def record(
    store: TraceStore, pacs_url: str, study_uid: str, status: str, reason: str, run_id: str | None = None
) -> bool:
    """Record a study's outcome without a claim (a study no rule takes); False when it already had one."""
    return _insert_once(store, STUDIES, _outcome_row(pacs_url, study_uid, status, reason, run_id, _now()))


def known(store: TraceStore, pacs_url: str, study_uids: list[str]) -> set[str]:
    """Those of ``study_uids`` that have an outcome or an attempt for the PACS."""
    found: set[str] = set()
    with store.engine.connect() as conn:
        for i in range(0, len(study_uids), 500):
            chunk = study_uids[i : i + 500]
            for table in (STUDIES, ATTEMPTS):
                q = sa.select(table.c.study_uid).where(
                    table.c.pacs_url == pacs_url, table.c.study_uid.in_(chunk)
                )
                found |= set(conn.execute(q).scalars())
    return found


def due(store: TraceStore, pacs_url: str) -> list[tuple[str, str | None]]:
    """(study uid, last routed task) of the PACS's studies without an outcome that may be claimed now: a
    retry due, an interrupted attempt, a lease run out or an owner gone; oldest claim first."""
    now = _now()
    with store.engine.connect() as conn:
        rows = _attempts(conn, pacs_url, None)
    latest: dict[str, AttemptRecord] = {}
    first: dict[str, datetime] = {}
    tasks: dict[str, str | None] = {}
    for a in rows:
        latest[a.study_uid] = a
        first.setdefault(a.study_uid, a.claimed_at)
        tasks[a.study_uid] = a.task or tasks.get(a.study_uid)
    free = [u for u, a in latest.items() if _free(a, now)]
    return [(u, tasks[u]) for u in sorted(free, key=lambda u: (first[u], u))]


def _pushed_since(conn: sa.Connection, pacs_url: str, study_uid: str, since: datetime) -> str | None:
    q = sa.select(_PUSHES.c.run_id, _PUSHES.c.pushed_at).where(
        _PUSHES.c.pacs_url == pacs_url, _PUSHES.c.study_uid == study_uid
    )
    rows = [(str(r), _naive_utc(t)) for r, t in conn.execute(q)]
    late = sorted((t, r) for r, t in rows if t >= _naive_utc(since))
    return late[-1][1] if late else None


def pushed_since(store: TraceStore, pacs_url: str, study_uid: str, since: datetime) -> str | None:
    """The run id of a push to the PACS of a run of this study made at or after ``since``, or None."""
    with store.engine.connect() as conn:
        return _pushed_since(conn, pacs_url, study_uid, since)


def study_records(store: TraceStore, pacs_url: str) -> list[StudyRecord]:
    """Every outcome recorded for the PACS, oldest first."""
    q = (
        sa.select(STUDIES.c.study_uid, STUDIES.c.status, STUDIES.c.reason, STUDIES.c.run_id, STUDIES.c.at)
        .where(STUDIES.c.pacs_url == pacs_url)
        .order_by(STUDIES.c.at, STUDIES.c.study_uid)
    )
    with store.engine.connect() as conn:
        return [StudyRecord(*row) for row in conn.execute(q)]


def attempt_records(store: TraceStore, pacs_url: str, study_uid: str | None = None) -> list[AttemptRecord]:
    """Every attempt at the PACS's studies (or at one study), by study and number, with how each ended."""
    with store.engine.connect() as conn:
        if study_uid is not None:
            return _attempts(conn, pacs_url, [study_uid])
        uids = conn.execute(
            sa.select(ATTEMPTS.c.study_uid).where(ATTEMPTS.c.pacs_url == pacs_url).distinct()
        ).scalars()
        return _attempts(conn, pacs_url, list(uids))
