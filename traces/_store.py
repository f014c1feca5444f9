"""The trace store: runs, hash-chained events and content-addressed artifacts in SQL (sqlmodel).

SQLite by default, PostgreSQL from a URL. The API only inserts: nothing updates or deletes an
event. A run is written in one transaction, so a store never holds half a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
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
    artifact_hashes,
    event_sha256,
)
from dxgraph.traces._migrations import apply_migrations
from dxgraph.traces._recorder import TraceRecorder

DB_ENV = "DXGRAPH_DB"
"""Environment variable naming the store (a path or a SQLAlchemy URL)."""


class RunRow(SQLModel, table=True):
    """One run: what it was about and how it ended."""

    __tablename__ = "runs"
    run_id: str = Field(primary_key=True)
    """Run id."""
    started_at: datetime = Field(index=True)
    """Start time (UTC)."""
    task: str = Field(index=True)
    """The question asked."""
    case_id: str
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
    event: str
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
            self.engine = sa.create_engine(self.url, connect_args=connect_args)
        except Exception as e:  # noqa: BLE001 -- bad URLs raise many kinds
            raise StoreError(f"cannot open the trace store {self.url}: {e}") from None
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            with self.engine.begin() as conn:
                apply_migrations(conn)
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot open the trace store {self.url}: {e.__class__.__name__}: {e}") from None

    # -- writing -------------------------------------------------------------------------------

    def save(self, rec: TraceRecorder, *, task: str, case_id: str, status: str, label: str | None) -> None:
        """Persist a recorded run, its events and its artifacts in one transaction."""
        if not rec.events or not isinstance(rec.events[0], RunStarted):
            raise ValueError("a run must start with RunStarted")
        header = rec.events[0].header
        with Session(self.engine) as s, s.begin():
            self._insert_artifacts(s, rec)
            s.add(
                RunRow(
                    run_id=rec.run_id,
                    started_at=rec.events[0].ts,
                    task=task,
                    case_id=case_id,
                    status=status,
                    label=label,
                    n_events=len(rec.events),
                    head_sha256=rec.head_sha256,
                    dxgraph_version=header.dxgraph_version,
                )
            )
            s.flush()
            for ev, body in zip(rec.events, rec.bodies, strict=True):
                s.add(EventRow(run_id=rec.run_id, seq=ev.seq, event=ev.event, sha256=ev.sha256, body=body))

    def _insert_artifacts(self, s: Session, rec: TraceRecorder) -> None:
        blobs = rec.artifacts.blobs
        if not blobs:
            return
        table = ArtifactRow.__table__  # type: ignore[attr-defined]
        rows = [
            {"sha256": k, "media_type": mt, "size_bytes": len(data), "data": data}
            for k, (data, mt) in blobs.items()
        ]
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        s.execute(insert(table).on_conflict_do_nothing(index_elements=["sha256"]), rows)

    # -- reading -------------------------------------------------------------------------------

    def list_runs(self, limit: int = 50, task: str | None = None) -> list[RunRow]:
        """Most recent runs first."""
        with Session(self.engine) as s:
            q = select(RunRow).order_by(col(RunRow.started_at).desc(), col(RunRow.run_id).desc()).limit(limit)
            if task:
                q = q.where(RunRow.task == task)
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
        rid = self.resolve_run_id(run_id)
        with Session(self.engine) as s:
            row = s.get(RunRow, rid)
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
        with Session(self.engine) as s, s.begin():
            if s.get(ArtifactRow, digest) is None:
                s.add(ArtifactRow(sha256=digest, media_type=media_type, size_bytes=len(data), data=data))
        return digest

    # -- checking ------------------------------------------------------------------------------

    def verify(self, run_id: str) -> ChainCheck:
        """Recompute every hash of the run's chain, the seal on the run row and the artifacts' hashes."""
        run = self.run(run_id)
        rows = self.raw_events(run.run_id)
        problems: list[str] = []
        prev = GENESIS_SHA256
        referenced: set[str] = set()
        criteria_docs: set[str] = set()  # their bytes, when the run stored them
        for i, row in enumerate(rows):
            where = f"event {row.seq} ({row.event})"
            try:
                body = json.loads(row.body)
                EVENT_ADAPTER.validate_python(body)
            except Exception as e:  # noqa: BLE001 -- a tampered body may fail anywhere
                problems.append(f"{where}: does not parse as an event ({e.__class__.__name__})")
                break
            if row.seq != i:
                problems.append(f"{where}: sequence number {row.seq}, expected {i}")
            if body.get("prev_sha256") != prev:
                problems.append(f"{where}: prev_sha256 does not match the previous event's hash")
            if event_sha256(body) != body.get("sha256") or row.sha256 != body.get("sha256"):
                problems.append(f"{where}: content does not match its sha256 (edited)")
            prev = body.get("sha256", "")
            referenced |= artifact_hashes(body)
            if body.get("event") == "ModelCalled":  # images sent to the model, stored with the run
                referenced |= {str(h) for h in body.get("image_sha256", [])}
            if body.get("event") == "CriteriaRetrieved":
                criteria_docs |= {str(d.get("sha256")) for d in body.get("documents", [])}
            if problems:
                break
        if not problems:
            if len(rows) != run.n_events:
                problems.append(f"run row says {run.n_events} events, store holds {len(rows)}")
            elif prev != run.head_sha256:
                problems.append(
                    "the last event's hash does not match the run's seal (events appended or cut)"
                )
        if not problems:
            for digest in sorted(referenced):
                try:
                    data = self.get_bytes(digest)
                except KeyError:
                    problems.append(f"artifact {digest[:12]} is missing")
                    continue
                if hashlib.sha256(data).hexdigest() != digest:
                    problems.append(f"artifact {digest[:12]} does not match its sha256 (edited)")
            for digest in sorted(criteria_docs - referenced):
                try:
                    data = self.get_bytes(digest)
                except KeyError:
                    continue  # runs recorded before criteria documents were stored with them
                if hashlib.sha256(data).hexdigest() != digest:
                    problems.append(f"criteria document {digest[:12]} does not match its sha256 (edited)")
        return ChainCheck(run.run_id, not problems, len(rows), tuple(problems))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
