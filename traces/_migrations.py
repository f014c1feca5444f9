"""Numbered schema migrations. A migration, once released, never changes: add a new one instead."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from dxgraph.errors import StoreError


def _m001_initial(conn: sa.Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "runs",
        md,
        sa.Column("run_id", sa.String, primary_key=True),
        sa.Column("started_at", sa.DateTime, nullable=False, index=True),
        sa.Column("task", sa.String, nullable=False, index=True),
        sa.Column("case_id", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("label", sa.String, nullable=True),
        sa.Column("n_events", sa.Integer, nullable=False),
        sa.Column("head_sha256", sa.String, nullable=False),
        sa.Column("dxgraph_version", sa.String, nullable=False),
    )
    sa.Table(
        "events",
        md,
        sa.Column("run_id", sa.String, sa.ForeignKey("runs.run_id"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("event", sa.String, nullable=False),
        sa.Column("sha256", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    sa.Table(
        "artifacts",
        md,
        sa.Column("sha256", sa.String, primary_key=True),
        sa.Column("media_type", sa.String, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    md.create_all(conn)


def _m002_lookup_indexes(conn: sa.Connection) -> None:
    """Indexes for audit look-ups across runs: every run of a case, every event of a kind."""
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_runs_case_id ON runs (case_id)"))
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_events_event ON events (event)"))


def _m003_cohorts(conn: sa.Connection) -> None:
    """Cohort bookkeeping: one row per cohort, one per attempt at each of its cases (insert-only)."""
    md = sa.MetaData()
    sa.Table(
        "cohorts",
        md,
        sa.Column("cohort_id", sa.String, primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("info", sa.Text, nullable=False),
    )
    sa.Table(
        "cohort_cases",
        md,
        sa.Column("cohort_id", sa.String, sa.ForeignKey("cohorts.cohort_id"), primary_key=True),
        sa.Column("case_id", sa.String, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("run_id", sa.String, nullable=True, index=True),
        sa.Column("label", sa.String, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
    )
    md.create_all(conn)


def _m004_accounts(conn: sa.Connection) -> None:
    """The server's accounts (insert-only): API tokens (a salted hash, never the secret), their
    revocations, and the access log of who read or did what."""
    md = sa.MetaData()
    sa.Table(
        "api_tokens",
        md,
        sa.Column("token_id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False, unique=True),
        sa.Column("role", sa.String, nullable=False),
        sa.Column("salt_hex", sa.String, nullable=False),
        sa.Column("secret_sha256_hex", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "api_token_revocations",
        md,
        sa.Column("token_id", sa.String, sa.ForeignKey("api_tokens.token_id"), primary_key=True),
        sa.Column("revoked_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "access_log",
        md,
        sa.Column("access_id", sa.String, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False, index=True),
        sa.Column("token_name", sa.String, nullable=False, index=True),
        sa.Column("role", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("target", sa.String, nullable=False, index=True),
    )
    md.create_all(conn)


def _m005_jobs(conn: sa.Connection) -> None:
    """The server's job queue (insert-only): submitted jobs, each worker's claim on one with its lease,
    the heartbeats that renew a lease, and the one result that ends a job."""
    md = sa.MetaData()
    sa.Table(
        "jobs",
        md,
        sa.Column("job_id", sa.String, primary_key=True),
        sa.Column("submitted_at", sa.DateTime, nullable=False, index=True),
        sa.Column("submitted_by", sa.String, nullable=False, index=True),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
    )
    sa.Table(
        "job_claims",
        md,
        sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("worker", sa.String, nullable=False),
        sa.Column("claimed_at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=False),
    )
    sa.Table(
        "job_heartbeats",
        md,
        sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("beat", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=False),
    )
    sa.Table(
        "job_results",
        md,
        sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("run_id", sa.String, nullable=True, index=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.String, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
    )
    md.create_all(conn)


def _m006_server_cohorts(conn: sa.Connection) -> None:
    """Cohorts submitted to the server (insert-only): which job runs which case of which cohort, and who
    submitted the cohort (a cohort's cases are jobs of the queue)."""
    md = sa.MetaData()
    sa.Table(
        "cohort_jobs",
        md,
        sa.Column("job_id", sa.String, primary_key=True),  # a job of ``jobs``
        sa.Column("cohort_id", sa.String, nullable=False, index=True),  # a cohort of ``cohorts``
        sa.Column("case_id", sa.String, nullable=False),
        sa.Column("submitted_by", sa.String, nullable=False, index=True),
    )
    md.create_all(conn)


def _m007_run_verifications(conn: sa.Connection) -> None:
    """Verifications of stored runs (insert-only): who checked a run's hash chain, when, and the outcome."""
    md = sa.MetaData()
    sa.Table(
        "run_verifications",
        md,
        sa.Column("verification_id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, nullable=False, index=True),
        sa.Column("at", sa.DateTime, nullable=False, index=True),
        sa.Column("verified_by", sa.String, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("n_events", sa.Integer, nullable=False),
        sa.Column("problem", sa.Text, nullable=True),
    )
    md.create_all(conn)


def _m008_web_sessions(conn: sa.Connection) -> None:
    """The web app's sessions (insert-only): the key that signs session cookies, shared by every server of
    the store, and the sessions ended by signing out before they expired."""
    md = sa.MetaData()
    sa.Table(
        "web_session_keys",
        md,
        sa.Column("key_id", sa.String, primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False, index=True),
        sa.Column("key_hex", sa.String, nullable=False),
    )
    sa.Table(
        "web_session_ends",
        md,
        sa.Column("nonce", sa.String, primary_key=True),
        sa.Column("ended_at", sa.DateTime, nullable=False),
    )
    md.create_all(conn)


def _m009_pacs_pushes(conn: sa.Connection) -> None:
    """Results sent to a PACS (insert-only): which run's DICOM SR and SEG went to which PACS, and when."""
    md = sa.MetaData()
    sa.Table(
        "pacs_pushes",
        md,
        sa.Column("push_id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, nullable=False, index=True),
        sa.Column("pacs_url", sa.String, nullable=False),
        sa.Column("study_uid", sa.String, nullable=False),
        sa.Column("sr_series_uid", sa.String, nullable=False),
        sa.Column("sr_sop_uid", sa.String, nullable=False),
        sa.Column("seg_series_uid", sa.String, nullable=True),
        sa.Column("seg_sop_uid", sa.String, nullable=True),
        sa.Column("pushed_at", sa.DateTime, nullable=False),
    )
    md.create_all(conn)


def _m010_pacs_watch(conn: sa.Connection) -> None:
    """Watch mode's state (insert-only): the change-feed cursor per PACS (the newest row wins), the studies
    claimed before their pull and push, and each study's outcome (processed, skipped or failed), once."""
    md = sa.MetaData()
    sa.Table(
        "pacs_watch_cursors",
        md,
        sa.Column("cursor_id", sa.String, primary_key=True),
        sa.Column("pacs_url", sa.String, nullable=False, index=True),
        sa.Column("cursor", sa.String, nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "pacs_watch_claims",
        md,
        sa.Column("pacs_url", sa.String, primary_key=True),
        sa.Column("study_uid", sa.String, primary_key=True),
        sa.Column("task", sa.String, nullable=False),
        sa.Column("claimed_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "pacs_watch_studies",
        md,
        sa.Column("pacs_url", sa.String, primary_key=True),
        sa.Column("study_uid", sa.String, primary_key=True),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("run_id", sa.String, nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    md.create_all(conn)


def _m011_pacs_watch_attempts(conn: sa.Connection) -> None:
    """Watch mode's attempts (insert-only): each claim of a study by a watcher (its owner id and lease),
    the heartbeats that renew a lease, and how each attempt ended (failed with its retry time, interrupted,
    lapsed, processed or skipped). Schema 10's claims without an outcome become lapsed first attempts."""
    md = sa.MetaData()
    attempts = sa.Table(
        "pacs_watch_attempts",
        md,
        sa.Column("pacs_url", sa.String, primary_key=True),
        sa.Column("study_uid", sa.String, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("task", sa.String, nullable=True),
        sa.Column("claimed_at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=False),
    )
    sa.Table(
        "pacs_watch_heartbeats",
        md,
        sa.Column("pacs_url", sa.String, primary_key=True),
        sa.Column("study_uid", sa.String, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("beat", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("lease_until", sa.DateTime, nullable=False),
    )
    sa.Table(
        "pacs_watch_attempt_ends",
        md,
        sa.Column("pacs_url", sa.String, primary_key=True),
        sa.Column("study_uid", sa.String, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("run_id", sa.String, nullable=True),
        sa.Column("retry_after", sa.DateTime, nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    md.create_all(conn)
    claims = sa.table(
        "pacs_watch_claims",
        sa.column("pacs_url", sa.String),
        sa.column("study_uid", sa.String),
        sa.column("task", sa.String),
        sa.column("claimed_at", sa.DateTime),
    )
    studies = sa.table(
        "pacs_watch_studies", sa.column("pacs_url", sa.String), sa.column("study_uid", sa.String)
    )
    done = (
        sa.select(studies.c.study_uid)
        .where(studies.c.pacs_url == claims.c.pacs_url, studies.c.study_uid == claims.c.study_uid)
        .exists()
    )
    unfinished = sa.select(
        claims.c.pacs_url,
        claims.c.study_uid,
        sa.literal(1),
        sa.literal("schema-10 watcher"),
        claims.c.task,
        claims.c.claimed_at,
        claims.c.claimed_at,
    ).where(~done)
    cols = ["pacs_url", "study_uid", "attempt", "owner", "task", "claimed_at", "lease_until"]
    conn.execute(sa.insert(attempts).from_select(cols, unfinished))


def _m012_pacs_push_objects(conn: sa.Connection) -> None:
    """Every DICOM object a push sent (insert-only): a push of several SEGs (one per source series and frame
    of reference) names each of them, and the study it went into."""
    md = sa.MetaData()
    sa.Table(
        "pacs_push_objects",
        md,
        sa.Column("push_id", sa.String, primary_key=True),
        sa.Column("sop_uid", sa.String, primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("modality", sa.String, nullable=False),
        sa.Column("series_uid", sa.String, nullable=False),
        sa.Column("study_uid", sa.String, nullable=False),
    )
    md.create_all(conn)


MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {
    1: _m001_initial,
    2: _m002_lookup_indexes,
    3: _m003_cohorts,
    4: _m004_accounts,
    5: _m005_jobs,
    6: _m006_server_cohorts,
    7: _m007_run_verifications,
    8: _m008_web_sessions,
    9: _m009_pacs_pushes,
    10: _m010_pacs_watch,
    11: _m011_pacs_watch_attempts,
    12: _m012_pacs_push_objects,
}
"""Schema version -> the migration that brings the previous version to it."""
SCHEMA_VERSION = max(MIGRATIONS)
"""The schema version this code reads and writes."""


def current_version(conn: sa.Connection) -> int:
    """The store's schema version (0 for an empty database)."""
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar() or 0)


def apply_migrations(conn: sa.Connection, upto: int | None = None) -> int:
    """Bring the store up to ``upto`` (default SCHEMA_VERSION) inside the caller's transaction; return it.

    On PostgreSQL a transaction-scoped advisory lock serialises stores opened at the same time; on
    SQLite the caller's ``BEGIN IMMEDIATE`` does.
    """
    target = SCHEMA_VERSION if upto is None else upto
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"no schema version {target}: this dxgraph knows 0..{SCHEMA_VERSION}")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    if not sa.inspect(conn).has_table("schema_version"):
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at VARCHAR)"
            )
        )
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the trace store has schema version {version}; this dxgraph reads up to {SCHEMA_VERSION}: upgrade dxgraph"
        )
    for v in range(version + 1, target + 1):
        MIGRATIONS[v](conn)
        conn.execute(
            sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)"),
            {"v": v, "t": datetime.now(UTC).isoformat()},
        )
    return max(version, target)


_PG_LOCK_KEY = 0x6478677261706831  # "dxgraph1": the advisory lock taken while migrating
