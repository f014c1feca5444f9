"""The trace store: runs, hash-chained events and content-addressed artifacts in SQL (sqlmodel).

SQLite by default, PostgreSQL from a URL. The API only inserts: nothing updates or deletes an
event. A run is written in one transaction, so a store never holds half a run.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, col, select

from dxgraph.errors import StoreError
from dxgraph.traces._events import (
    EVENT_ADAPTER,
    GENESIS_SHA256,
    Event,
    RunStarted,
    canonical_json,
    event_sha256,
)
from dxgraph.traces._migrations import apply_migrations
from dxgraph.traces._recorder import TraceRecorder

DB_ENV = "DXGRAPH_DB"
"""Environment variable naming the store (a path or a SQLAlchemy URL)."""
SAVE_ATTEMPTS = 8
"""Tries to save a run or migrate while another writer holds the database (SQLite lock, PostgreSQL deadlock)."""

_LISTING_ARTIFACTS = frozenset({"ModelCalled", "CriteriaRetrieved"})
"""Events that list artifacts by hash alone (images sent to a model, criteria documents)."""
_BACKSLASH = ord("\\")
"""A backslash, as an int: ``int in bytes`` is a memchr, several times faster than ``b"\\\\" in bytes``."""
_validate_event_json = EVENT_ADAPTER.validator.validate_json
"""``EVENT_ADAPTER.validate_json`` without the adapter's per-call wrapper (verify calls it once per event)."""


class DuplicateRecord(StoreError):
    """A row that must be written once is already in the store (another writer got there first)."""


class RunRow(SQLModel, table=True):
    """One run: what it was about and how it ended."""

    __tablename__ = "runs"
    run_id: str = Field(primary_key=True)
    """Run id."""
    started_at: datetime = Field(index=True)
    """Start time (UTC)."""
    task: str = Field(index=True)
    """The question asked."""
    case_id: str = Field(index=True)
    """Pseudonymous case id."""
    status: str
    """``completed`` or ``error``."""
    label: str | None = None
    """Diagnosis label."""
    n_events: int
    """Number of events."""
    head_sha256: str
    """Hash of the last event: seals the chain."""
    dxgraph_version: str
    """Package version that recorded it."""


class EventRow(SQLModel, table=True):
    """One event, as the canonical JSON that was hashed."""

    __tablename__ = "events"
    run_id: str = Field(primary_key=True, foreign_key="runs.run_id")
    """Run id."""
    seq: int = Field(primary_key=True)
    """Position in the run."""
    event: str = Field(index=True)
    """Event type."""
    sha256: str
    """The event's hash."""
    body: str
    """Canonical JSON of the event."""


class ArtifactRow(SQLModel, table=True):
    """Bytes stored under their sha256."""

    __tablename__ = "artifacts"
    sha256: str = Field(primary_key=True)
    """sha256 of data."""
    media_type: str
    """MIME type."""
    size_bytes: int
    """Length of data."""
    data: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    """The bytes."""


@dataclass(frozen=True)
class ChainCheck:
    """Result of verifying one run."""

    run_id: str
    """The run."""
    ok: bool
    """Whether chain, seal and artifacts are intact."""
    n_events: int
    """Events checked."""
    problems: tuple[str, ...]
    """What is wrong, first break first."""


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/dxgraph/traces.db`` (``~/.local/share/dxgraph/traces.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "dxgraph" / "traces.db"


def resolve_db_url(db: str | None) -> str:
    """A SQLAlchemy URL from a path or URL; ``None`` means $DXGRAPH_DB, else the default path."""
    db = db or os.environ.get(DB_ENV) or str(default_db_path())
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


class TraceStore:
    """Runs, events and artifacts in one SQL database."""

    def __init__(self, db: str | None = None, *, create: bool = True) -> None:
        self.url = resolve_db_url(db)
        """SQLAlchemy URL of the database."""
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = Path(self.url.removeprefix("sqlite:///"))
            if not create and not path.exists():
                raise StoreError(f"no trace store at {path}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the folder for the trace store {path}: {e}") from None
        connect_args: dict[str, Any] = {"timeout": 30} if self.is_sqlite else {}
        try:
            if self.url.startswith("postgresql"):  # runs.started_at has no zone: the server must not shift it
                given = sa.engine.make_url(self.url).query.get("options", "")
                connect_args["options"] = (
                    f"{given if isinstance(given, str) else ' '.join(given)} -c timezone=UTC"
                )
            self.engine = sa.create_engine(self.url, connect_args=connect_args)
        except Exception as e:  # noqa: BLE001 -- bad URLs raise many kinds
            raise StoreError(f"cannot open the trace store {self.url}: {e}") from None
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self._writer = self.engine.execution_options(dxgraph_write=True)
        """The engine for writing transactions (``BEGIN IMMEDIATE`` on SQLite: no lock upgrades)."""
        try:
            _with_retries(f"cannot open the trace store {self.url}", self._migrate)
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot open the trace store {self.url}: {e.__class__.__name__}: {e}") from None

    def _migrate(self) -> None:
        with self._writer.begin() as conn:
            apply_migrations(conn)

    def write_transaction(self) -> AbstractContextManager[sa.Connection]:
        """A transaction that holds the store's write lock from its first statement (``BEGIN IMMEDIATE``
        on SQLite, so a read-then-write cannot deadlock another writer; a plain one on PostgreSQL, where
        ``SELECT ... FOR UPDATE`` locks rows); committed on exit, rolled back on an exception."""
        return self._writer.begin()

    # -- writing -------------------------------------------------------------------------------

    def save(
        self,
        rec: TraceRecorder,
        *,
        task: str,
        case_id: str,
        status: str,
        label: str | None,
        also: Sequence[SQLModel] = (),
    ) -> None:
        """Persist a recorded run, its events and its artifacts in one transaction.

        ``also`` are rows written in the same transaction (a cohort's record of the case): when one of
        them is already stored, nothing is written and DuplicateRecord is raised. Retries, with a
        growing random pause, while other writers hold the database.
        """
        if not rec.events or not isinstance(rec.events[0], RunStarted):
            raise ValueError("a run must start with RunStarted")
        run = RunRow(
            run_id=rec.run_id,
            started_at=rec.events[0].ts,
            task=task,
            case_id=case_id,
            status=status,
            label=label,
            n_events=len(rec.events),
            head_sha256=rec.head_sha256,
            dxgraph_version=rec.events[0].header.dxgraph_version,
        )
        events = [  # plain rows for one executemany: building 10k ORM objects cost more than the writes
            {"run_id": rec.run_id, "seq": ev.seq, "event": ev.event, "sha256": ev.sha256, "body": body}
            for ev, body in zip(rec.events, rec.bodies, strict=True)
        ]
        _with_retries(f"cannot save run {rec.run_id}", lambda: self._write(rec, [run], also, events=events))

    def insert(self, rows: Sequence[SQLModel]) -> None:
        """Write rows in one transaction (insert only); DuplicateRecord when one is already stored."""
        _with_retries("cannot write to the trace store", lambda: self._write(None, rows))

    def _write(
        self,
        rec: TraceRecorder | None,
        rows: Sequence[SQLModel],
        also: Sequence[SQLModel] = (),
        *,
        events: Sequence[dict[str, Any]] = (),
    ) -> None:
        """One transaction: the recorder's artifacts, ``rows`` (a run's row), ``events`` (plain rows, one
        batched insert), then ``also`` (each flushed in turn, so foreign keys see their targets);
        DuplicateRecord, with nothing written, when a row is already stored."""
        try:
            with Session(self._writer) as s, s.begin():
                if rec is not None:
                    self._insert_artifacts(s, rec)
                _add_rows(s, rows)
                if events:
                    s.execute(sa.insert(EventRow.__table__), events)  # type: ignore[attr-defined]
                _add_rows(s, also)
        except sa.exc.IntegrityError as e:
            raise DuplicateRecord(f"already stored, nothing written: {e.orig}") from None

    def _insert_artifacts(self, s: Session, rec: TraceRecorder) -> None:
        blobs = rec.artifacts.blobs
        if not blobs:
            return
        table = ArtifactRow.__table__  # type: ignore[attr-defined]
        rows = [  # sorted: concurrent writers lock shared artifacts in one order, so never deadlock
            {"sha256": k, "media_type": mt, "size_bytes": len(data), "data": data}
            for k, (data, mt) in sorted(blobs.items())
        ]
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        s.execute(insert(table).on_conflict_do_nothing(index_elements=["sha256"]), rows)

    # -- reading -------------------------------------------------------------------------------

    def list_runs(
        self,
        limit: int | None = 50,
        task: str | None = None,
        since: datetime | None = None,
        case_id: str | None = None,
    ) -> list[RunRow]:
        """Most recent runs first; ``since`` keeps runs started at or after it (naive times are UTC)."""
        with Session(self.engine) as s:
            q = select(RunRow).order_by(col(RunRow.started_at).desc(), col(RunRow.run_id).desc()).limit(limit)
            if task:
                q = q.where(RunRow.task == task)
            if case_id:
                q = q.where(RunRow.case_id == case_id)
            if since is not None:
                q = q.where(col(RunRow.started_at) >= _aware_utc(since))
            return list(s.exec(q).all())

    def resolve_run_id(self, run_id: str) -> str:
        """The full id of a run from its id or a unique prefix; StoreError otherwise."""
        with Session(self.engine) as s:
            ids = s.exec(select(RunRow.run_id).where(col(RunRow.run_id).startswith(run_id)).limit(3)).all()
        if run_id in ids:
            return run_id
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise StoreError(f"no run {run_id!r} in {self.url}")
        raise StoreError(f"run id prefix {run_id!r} is ambiguous: {', '.join(ids)}, ...")

    def run(self, run_id: str) -> RunRow:
        """The run's row."""
        with Session(self.engine) as s:  # a full id is found in one query; a prefix is resolved first
            row = s.get(RunRow, run_id) or s.get(RunRow, self.resolve_run_id(run_id))
            assert row is not None
            return row

    def raw_events(self, run_id: str) -> list[EventRow]:
        """The run's stored event rows in order."""
        rid = self.resolve_run_id(run_id)
        with Session(self.engine) as s:
            return list(
                s.exec(select(EventRow).where(EventRow.run_id == rid).order_by(col(EventRow.seq))).all()
            )

    def events(self, run_id: str) -> list[Event]:
        """The run's events, parsed, in order."""
        return [EVENT_ADAPTER.validate_json(r.body) for r in self.raw_events(run_id)]

    def get_bytes(self, sha256: str) -> bytes:
        """Artifact bytes by hash; KeyError when absent."""
        with Session(self.engine) as s:
            row = s.get(ArtifactRow, sha256)
        if row is None:
            raise KeyError(sha256)
        return row.data

    def put_bytes(self, data: bytes, media_type: str) -> str:
        """Store artifact bytes (idempotent) and return their hash."""
        digest = hashlib.sha256(data).hexdigest()
        with Session(self._writer) as s, s.begin():
            if s.get(ArtifactRow, digest) is None:
                s.add(ArtifactRow(sha256=digest, media_type=media_type, size_bytes=len(data), data=data))
        return digest

    # -- checking ------------------------------------------------------------------------------

    def verify(self, run_id: str) -> ChainCheck:
        """Recompute every hash of the run's chain, the seal on the run row and the artifacts' hashes.

        Stops at the first broken event and names it; checks the run row and artifacts only on an intact chain.
        """
        run = self.run(run_id)
        run_id = run.run_id
        problems: list[str] = []
        prev = GENESIS_SHA256
        n = 0
        parsed: list[dict[str, Any]] = []  # the first event's body and those that may reference artifacts
        last: dict[str, Any] | bytes = b""
        # The quick route, inlined (a call per event cost a tenth of the time): the recorder stores an event as
        # canonical_json(body) and hashes canonical_json of the body without sha256, which is the stored text
        # with its top-level ,"sha256":"..." member cut out (never the first key: event and prev_sha256 sort
        # before it). So the stored bytes are hashed as they are, not parsed and serialised again, and any edit
        # to them changes that hash. Like the full check, the route refuses bytes that are not UTF-8 and a body
        # that does not parse as an event (one pydantic parse of the bytes), and compares the body's seq, run id,
        # kind, previous hash and hash with the row's. What it takes from the hash rather than re-serialising is
        # that the text is canonical: only a chain forged from an edited event to its end and resealed could hold
        # other bytes under a matching hash, and such a forgery, written canonically, passes the full check too
        # (the chain carries no signature). Where the route fails, _check_event names the problem (or accepts
        # what the route could not decide).
        validate, sha = _validate_event_json, hashlib.sha256
        with self._event_rows(run_id) as rows:
            for seq, kind, sha256, stored in rows:
                data = stored if isinstance(stored, bytes) else stored.encode()
                intact = False
                if seq == n and type(sha256) is str:
                    try:
                        event = validate(data if data.isascii() else data.decode())  # decode: UTF-8 or raise
                    except Exception:  # noqa: BLE001 -- a tampered body may fail anywhere
                        event = None
                    if (
                        event is not None
                        and event.seq == seq
                        and event.run_id == run_id
                        and event.event == kind
                        and event.prev_sha256 == prev
                        and event.sha256 == sha256
                    ):
                        member = b',"sha256":"' + sha256.encode() + b'"'
                        at = data.find(member)
                        intact = at >= 0 and sha(data[:at] + data[at + len(member) :]).hexdigest() == sha256
                body: dict[str, Any] | None = None
                if not intact:
                    body, problem = _check_event(run_id, n, seq, kind, sha256, stored, prev)
                    if problem:
                        problems.append(problem)
                        n += 1 + sum(1 for _ in rows)
                        break
                elif kind in _LISTING_ARTIFACTS or n == 0 or b"media_type" in data or _BACKSLASH in data:
                    body = json.loads(data)  # an artifact ref needs a media_type key (or an escaped one)
                if body is not None:
                    parsed.append(body)
                last = body if body is not None else data
                prev = sha256
                n += 1
        if not problems:
            if n != run.n_events:
                problems.append(f"run row says {run.n_events} events, store holds {n}")
            elif prev != run.head_sha256:
                problems.append(
                    "the last event's hash does not match the run's seal (events appended or cut)"
                )
        if not problems:
            problems += _run_row_problems(
                run, [parsed[0], json.loads(last) if isinstance(last, bytes) else last]
            )
        if not problems:
            problems += self._artifact_problems(parsed)
        return ChainCheck(run.run_id, not problems, n, tuple(problems))

    def verify_all(self, since: datetime | None = None) -> list[ChainCheck]:
        """Verify every run (started at or after ``since``), oldest first."""
        return [self.verify(r.run_id) for r in reversed(self.list_runs(limit=None, since=since))]

    @functools.cached_property
    def _events_sql(self) -> tuple[str, bool]:
        """(seq, event, sha256, body) of one run's events in order, as this store's driver takes it (SQLite bodies
        as raw bytes, even invalid UTF-8), and whether its one parameter, ``run_id``, is passed by position."""
        t = EventRow.__table__  # type: ignore[attr-defined]
        body = sa.cast(t.c.body, sa.LargeBinary) if self.is_sqlite else t.c.body
        query = sa.select(t.c.seq, t.c.event, t.c.sha256, body).where(t.c.run_id == sa.bindparam("run_id"))
        compiled = query.order_by(t.c.seq).compile(dialect=self.engine.dialect)
        return str(compiled), bool(compiled.positional)

    @contextmanager
    def _event_rows(self, run_id: str) -> Iterator[Iterator[tuple[int, str, str, str | bytes]]]:
        """The rows of ``_events_sql``, streamed from a plain DBAPI cursor: for a long run, building
        SQLAlchemy's row objects cost more than fetching the rows, and holding them all sets the GC going."""
        sql, positional = self._events_sql
        with self.engine.connect() as conn:
            cur = conn.connection.cursor()
            try:
                cur.execute(sql, (run_id,) if positional else {"run_id": run_id})
                yield itertools.chain.from_iterable(iter(lambda: cur.fetchmany(500), []))
            finally:
                cur.close()

    def _artifact_problems(self, bodies: list[dict[str, Any]]) -> list[str]:
        """Edited or missing artifacts, in the order the run first referenced them."""
        referenced, criteria_docs = referenced_artifacts(bodies)
        problems: list[str] = []
        with Session(self.engine) as s:
            for digest in referenced:
                row = s.get(ArtifactRow, digest)
                if row is None:
                    problems.append(f"artifact {digest[:12]} is missing")
                elif hashlib.sha256(row.data).hexdigest() != digest:
                    problems.append(f"artifact {digest[:12]} does not match its sha256 (edited)")
                elif row.size_bytes != len(row.data):
                    problems.append(
                        f"artifact {digest[:12]}: size column says {row.size_bytes}, data holds {len(row.data)}"
                    )
            for digest in criteria_docs:
                row = s.get(ArtifactRow, digest)
                if row is None:
                    continue  # runs recorded before criteria documents were stored with them
                if hashlib.sha256(row.data).hexdigest() != digest:
                    problems.append(f"criteria document {digest[:12]} does not match its sha256 (edited)")
        return problems


def _add_rows(s: Session, rows: Sequence[SQLModel]) -> None:
    """Add copies of ORM rows (fresh: a retry reuses the originals) and flush them."""
    s.add_all([type(r)(**r.model_dump()) for r in rows])
    s.flush()


def referenced_artifacts(bodies: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The artifacts a run needs (refs in events, images sent to models), in the order the chain first
    mentions them, and the criteria documents it cites that are not among those (older runs lack their bytes).
    """
    referenced: dict[str, None] = {}
    criteria_docs: dict[str, None] = {}
    for body in bodies:
        referenced |= dict.fromkeys(_artifact_hashes_in_order(body))
        if body.get("event") == "ModelCalled":  # images sent to the model, stored with the run
            referenced |= dict.fromkeys(str(h) for h in body.get("image_sha256", []))
        if body.get("event") == "CriteriaRetrieved":
            criteria_docs |= dict.fromkeys(str(d.get("sha256")) for d in body.get("documents", []))
    return list(referenced), [d for d in criteria_docs if d not in referenced]


def verify_all(store: TraceStore, since: datetime | None = None) -> list[ChainCheck]:
    """Verify every run in a store (started at or after ``since``), oldest first."""
    return store.verify_all(since=since)


def _artifact_hashes_in_order(obj: Any) -> list[str]:
    """The artifact hashes ``artifact_hashes`` finds, in the order they appear in the canonical JSON."""
    found: list[str] = []
    if isinstance(obj, dict):
        if isinstance(obj.get("sha256"), str) and "media_type" in obj:
            found.append(obj["sha256"])
        for v in obj.values():
            found += _artifact_hashes_in_order(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _artifact_hashes_in_order(v)
    return found


def _check_event(
    run_id: str, i: int, seq: int, kind: str, sha256: str, stored: str | bytes, prev: str
) -> tuple[dict[str, Any], str | None]:
    """The parsed body of the ``i``-th stored event and the first thing wrong with it, if any."""
    if seq > i:
        return {}, f"event {i} is missing (the next stored event is {seq})"
    where = f"event {seq} ({kind})"
    if seq < i:
        return {}, f"{where}: sequence number {seq}, expected {i}"
    try:
        text = stored.decode() if isinstance(stored, bytes) else stored
    except UnicodeDecodeError:
        return {}, f"{where}: body is not valid UTF-8 (edited)"
    try:
        body = json.loads(text)
        EVENT_ADAPTER.validate_python(body)
    except Exception as e:  # noqa: BLE001 -- a tampered body may fail anywhere
        return {}, f"{where}: does not parse as an event ({e.__class__.__name__})"
    if body["seq"] != seq:
        return body, f"{where}: its body says seq {body['seq']} (events reordered or edited)"
    if body["run_id"] != run_id:
        return body, f"{where}: its body belongs to run {body['run_id']} (moved between runs)"
    if body["event"] != kind:
        return body, f"{where}: its body is a {body['event']} event (edited)"
    if body["prev_sha256"] != prev:
        return body, f"{where}: prev_sha256 does not match the previous event's hash"
    if event_sha256(body) != body["sha256"] or sha256 != body["sha256"]:
        return body, f"{where}: content does not match its sha256 (edited)"
    if canonical_json(body) != text:
        return body, f"{where}: stored text is not the canonical JSON that was hashed (edited)"
    return body, None


def _run_row_problems(run: RunRow, bodies: list[dict[str, Any]]) -> list[str]:
    """Fields of the (unhashed) run row that disagree with the hashed events they summarise."""
    first, last = bodies[0], bodies[-1]
    claims: list[tuple[str, Any, int, Any]] = [
        ("task", run.task, 0, first["case"]["question"]),
        ("case_id", run.case_id, 0, first["case"]["case_id"]),
        ("dxgraph_version", run.dxgraph_version, 0, first["header"]["dxgraph_version"]),
        ("started_at", _aware_utc(run.started_at), 0, _aware_utc(datetime.fromisoformat(first["ts"]))),
    ]
    if last["event"] == "RunFinished":
        claims += [
            ("status", run.status, last["seq"], last["status"]),
            ("label", run.label, last["seq"], last["label"]),
        ]
    return [
        f"run row's {name} {value!r} differs from event {seq}'s {truth!r} (edited)"
        for name, value, seq, truth in claims
        if value != truth
    ]


def _aware_utc(t: datetime) -> datetime:
    """The same instant with tzinfo UTC (naive input is taken to be UTC already)."""
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def _with_retries(what: str, write: Callable[[], None]) -> None:
    """Run a write transaction, again after a growing random pause while other writers hold the database."""
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        try:
            write()
            return
        except sa.exc.OperationalError as e:
            if not _is_transient(e):  # disk full, read-only file, a damaged store: nothing was written
                raise StoreError(f"{what}: {e.orig} (nothing of it was written)") from None
            if attempt == SAVE_ATTEMPTS:
                raise StoreError(
                    f"{what}: the trace store stayed busy after {attempt} tries: {e.orig}"
                ) from None
            time.sleep(random.uniform(0.5, 1.0) * min(0.05 * 2**attempt, 2.0))


def _is_transient(e: sa.exc.OperationalError) -> bool:
    """Whether a failed write is worth retrying: SQLite busy/locked, PostgreSQL deadlock/serialisation."""
    text = str(e.orig).lower()
    return (
        "database is locked" in text
        or "database is busy" in text
        or getattr(e.orig, "sqlstate", None) in {"40P01", "40001"}
    )


def _sqlite_begin(conn: sa.Connection) -> None:
    """SQLAlchemy emits BEGIN itself; writers take the write lock up front (waiting out busy_timeout)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("dxgraph_write") else "BEGIN")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL, foreign keys and a 30 s busy wait; transactions are begun by ``_sqlite_begin``, not sqlite3."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
