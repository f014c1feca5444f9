"""The trace store on SQLite and PostgreSQL: tampering is named at the first bad event, concurrent writers
lose nothing, an older schema is migrated, and runs round-trip byte for byte.

PostgreSQL tests use ``$DXGRAPH_TEST_PG_URL`` (``bash .ci/postgres.sh`` starts a server and prints one);
they skip without it, and fail under ``CI=true``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from dxgraph.traces import (
    SCHEMA_VERSION,
    TraceRecorder,
    TraceStore,
    apply_migrations,
    current_version,
    verify_all,
)

from _helpers import drawn_disc_cup_registry, drawn_run

N_EVENTS = 8
"""Events in a drawn-registry glaucoma run."""


def _diagnose(url: str, tmp_path: Path, cup_radius_px: float = 25.0) -> str:
    """A real (fast) glaucoma run saved into the store; its run id."""
    return drawn_run(tmp_path, url, cup_radius_px).run_id


@pytest.fixture
def real_run(url: str, tmp_path: Path) -> tuple[TraceStore, str]:
    """A store holding one real run, and that run's id."""
    run_id = _diagnose(url, tmp_path)
    return TraceStore(url), run_id


def _clone(
    src: TraceStore,
    run_id: str,
    dst: TraceStore,
    *,
    case_id: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> str:
    """Re-record a stored run under a new id and time (same content and artifacts) into ``dst``;
    ``clock`` gives the new times (default: now)."""
    row = src.run(run_id)
    rec = TraceRecorder(clock=clock)
    for ev in src.events(run_id):
        fields = ev.model_dump(mode="json", exclude={"run_id", "seq", "ts", "prev_sha256", "sha256", "event"})
        if case_id and ev.event == "RunStarted":
            fields["case"]["case_id"] = case_id
        rec.emit(type(ev), **fields)
    rec.artifacts.blobs.update(_artifacts_of(src))
    dst.save(rec, task=row.task, case_id=case_id or row.case_id, status=row.status, label=row.label)
    return rec.run_id


def _sql(store: TraceStore, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def _first_problem(store: TraceStore, run_id: str) -> str:
    check = store.verify(run_id)
    assert not check.ok and check.problems, "tampering went unnoticed"
    return check.problems[0]


# -- round trip -----------------------------------------------------------------------------------------


def test_a_run_round_trips_byte_for_byte(url, tmp_path):
    sqlite_store = TraceStore(str(tmp_path / "reference.db"))
    ref_id = _diagnose(str(tmp_path / "reference.db"), tmp_path)
    store = TraceStore(url)
    store.save(
        _recorder_of(sqlite_store, ref_id),
        task="glaucoma",
        case_id=sqlite_store.run(ref_id).case_id,
        status="completed",
        label=sqlite_store.run(ref_id).label,
    )
    assert [r.body for r in store.raw_events(ref_id)] == [r.body for r in sqlite_store.raw_events(ref_id)]
    assert store.events(ref_id) == sqlite_store.events(ref_id)
    src, dst = sqlite_store.run(ref_id), store.run(ref_id)
    assert dst.model_dump() == src.model_dump() and dst.started_at.tzinfo is not None
    mask = json.loads(store.raw_events(ref_id)[3].body)["outputs"]["disc_mask"]["sha256"]
    assert store.get_bytes(mask) == sqlite_store.get_bytes(mask)
    assert store.verify(ref_id).ok and store.verify(ref_id).n_events == N_EVENTS


def _recorder_of(store: TraceStore, run_id: str) -> TraceRecorder:
    """The stored run as the recorder that produced it (same events, bodies and artifacts)."""
    rec = TraceRecorder(run_id)
    rec.events = store.events(run_id)
    rec.bodies = [r.body for r in store.raw_events(run_id)]
    rec.artifacts.blobs.update(_artifacts_of(store))
    return rec


def _artifacts_of(store: TraceStore) -> dict[str, tuple[bytes, str]]:
    """Every artifact in the store: sha256 -> (bytes, media type)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sha256, media_type, data FROM artifacts"))
        return {sha: (bytes(data), media_type) for sha, media_type, data in rows}


def test_untouched_runs_never_raise_an_alarm(url, tmp_path):
    ids = [_diagnose(url, tmp_path, r) for r in (20.0, 38.0)]
    store = TraceStore(url)
    ids += [_clone(store, ids[0], store) for _ in range(3)]
    checks = verify_all(store)
    assert [c.run_id for c in checks] == ids, "oldest first"
    assert all(c.ok and c.problems == () and c.n_events == N_EVENTS for c in checks)
    assert store.verify_all(since=store.run(ids[2]).started_at) == checks[2:]


def test_list_runs_filters_by_time_task_and_case(url, tmp_path):
    store = TraceStore(url)
    template = _diagnose(url, tmp_path)
    ids = [template]
    start = store.run(template).started_at
    ticks = (start + timedelta(seconds=s) for s in itertools.count(1))  # one second apart, after the template
    for i in range(3):
        ids.append(_clone(store, template, store, case_id=f"case-{i}", clock=ticks.__next__))
    assert [r.run_id for r in store.list_runs()] == ids[::-1]
    third = store.run(ids[2]).started_at
    assert [r.run_id for r in store.list_runs(since=third)] == ids[:1:-1]
    naive = third.astimezone(UTC).replace(tzinfo=None)
    assert store.list_runs(since=naive) == store.list_runs(since=third), "naive times are UTC"
    east = third.astimezone(timezone(timedelta(hours=5)))
    assert store.list_runs(since=east) == store.list_runs(since=third), "any zone, same instant"
    assert store.list_runs(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert [r.run_id for r in store.list_runs(case_id="case-1")] == [ids[2]]
    assert len(store.list_runs(limit=2, task="glaucoma")) == 2 and store.list_runs(task="nope") == []


# -- tampering ------------------------------------------------------------------------------------------


def test_a_flipped_byte_anywhere_in_any_event_is_named_at_that_event(real_run):
    store, run_id = real_run
    rng = np.random.default_rng(7)
    tried = 0
    for row in store.raw_events(run_id):
        raw = row.body.encode()
        positions = {0, len(raw) // 3, len(raw) // 2, len(raw) - 1, *rng.integers(0, len(raw), 6).tolist()}
        for pos in sorted(positions):
            flipped = bytearray(raw)
            flipped[pos] ^= 0x01
            try:
                text = flipped.decode()
            except UnicodeDecodeError:
                continue  # XOR 1 on a UTF-8 lead byte; the invalid-UTF-8 case has its own test
            q = "UPDATE events SET body = :b WHERE run_id = :r AND seq = :s"
            _sql(store, q, b=text, r=run_id, s=row.seq)
            assert _first_problem(store, run_id).startswith(f"event {row.seq} ({row.event}): "), pos
            _sql(store, q, b=row.body, r=run_id, s=row.seq)
            tried += 1
    assert tried >= 6 * N_EVENTS
    assert store.verify(run_id).ok, "restored"


def test_a_body_that_is_not_utf8_is_named_at_that_event(db, tmp_path):
    """Only SQLite can hold such text; PostgreSQL refuses it on write."""
    run_id = _diagnose(db, tmp_path)
    store = TraceStore(db)
    raw = bytearray(store.raw_events(run_id)[2].body.encode())
    raw[10] ^= 0x80
    _sql(
        store,
        "UPDATE events SET body = CAST(:b AS TEXT) WHERE run_id = :r AND seq = 2",
        b=bytes(raw),
        r=run_id,
    )
    assert _first_problem(store, run_id) == "event 2 (PlanMade): body is not valid UTF-8 (edited)"


@pytest.mark.parametrize("seq", [0, 4])
def test_a_deleted_event_is_named(real_run, seq):
    store, run_id = real_run
    _sql(store, "DELETE FROM events WHERE run_id = :r AND seq = :s", r=run_id, s=seq)
    assert _first_problem(store, run_id) == f"event {seq} is missing (the next stored event is {seq + 1})"


def test_a_deleted_last_event_is_caught_by_the_seal(real_run):
    store, run_id = real_run
    _sql(store, "DELETE FROM events WHERE run_id = :r AND seq = :s", r=run_id, s=N_EVENTS - 1)
    assert store.verify(run_id).problems == (f"run row says {N_EVENTS} events, store holds {N_EVENTS - 1}",)


@pytest.mark.parametrize("a", [0, 3, N_EVENTS - 2])
def test_two_swapped_events_are_named_at_the_first(real_run, a):
    store, run_id = real_run
    kind = store.raw_events(run_id)[a + 1].event
    for old, new in ((a, -1), (a + 1, a), (-1, a + 1)):
        _sql(store, "UPDATE events SET seq = :n WHERE run_id = :r AND seq = :o", n=new, o=old, r=run_id)
    assert _first_problem(store, run_id) == (
        f"event {a} ({kind}): its body says seq {a + 1} (events reordered or edited)"
    )


def test_edited_artifact_bytes_are_named_by_hash_prefix(real_run):
    store, run_id = real_run
    outputs = json.loads(store.raw_events(run_id)[3].body)["outputs"]
    disc, cup = outputs["disc_mask"]["sha256"], outputs["cup_mask"]["sha256"]
    for sha in (
        disc,
        cup,
    ):  # both edited: the one the chain mentions first (cup_mask < disc_mask) comes first
        data = bytearray(store.get_bytes(sha))
        data[len(data) // 2] ^= 0x01
        _sql(store, "UPDATE artifacts SET data = :d WHERE sha256 = :s", d=bytes(data), s=sha)
    assert store.verify(run_id).problems == (
        f"artifact {cup[:12]} does not match its sha256 (edited)",
        f"artifact {disc[:12]} does not match its sha256 (edited)",
    )


def test_an_edited_run_row_is_named_against_its_event(real_run):
    store, run_id = real_run
    label = store.run(run_id).label
    _sql(store, "UPDATE runs SET label = 'no_glaucoma' WHERE run_id = :r", r=run_id)
    assert store.verify(run_id).problems == (
        f"run row's label 'no_glaucoma' differs from event {N_EVENTS - 1}'s {label!r} (edited)",
    )


# -- concurrency ----------------------------------------------------------------------------------------

_WORKER = """
import sys, time
from pathlib import Path
from dxgraph.traces._store import TraceStore
sys.path[:0] = [sys.argv[4], str(Path(sys.argv[4]).parent)]  # the test module and tests/_helpers
from test_store_backends import _clone
src = TraceStore(sys.argv[1])
template = src.list_runs()[0].run_id
start_at, n = float(sys.argv[3]), int(sys.argv[5])
time.sleep(max(0.0, start_at - time.time()))
dst = TraceStore(sys.argv[2])  # both workers open the fresh store at once: the migration race too
for _ in range(n):
    _clone(src, template, dst)
"""


def test_two_processes_writing_at_once_lose_nothing(url, tmp_path):
    template_db = str(tmp_path / "template.db")
    _diagnose(template_db, tmp_path)
    n = 10
    start_at = time.time() + 4.0  # after both interpreters have imported dxgraph
    args = [template_db, url, str(start_at), str(Path(__file__).parent), str(n)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, *args], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    store = TraceStore(url)
    checks = verify_all(store)
    assert len(checks) == 2 * n and all(c.ok for c in checks), [c.problems for c in checks if not c.ok]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() == 2 * n * N_EVENTS
        assert conn.execute(sa.text("SELECT COUNT(*) FROM schema_version")).scalar() == SCHEMA_VERSION


# -- migrations -----------------------------------------------------------------------------------------


def test_a_version_1_store_is_migrated_and_its_runs_still_verify(url, tmp_path):
    template_db = str(tmp_path / "template.db")
    run_id = _diagnose(template_db, tmp_path)
    rec = _recorder_of(TraceStore(template_db), run_id)
    row = TraceStore(template_db).run(run_id)

    engine = sa.create_engine(_sqlalchemy_url(url))
    with engine.begin() as conn:
        assert apply_migrations(conn, upto=1) == 1
    with engine.begin() as conn:  # a run saved by the version-1 code: plain rows in the version-1 tables
        md = sa.MetaData()
        md.reflect(conn)
        runs, events, artifacts = md.tables["runs"], md.tables["events"], md.tables["artifacts"]
        assert {c.name for c in runs.columns} >= {"run_id", "head_sha256"}
        conn.execute(
            artifacts.insert(),
            [
                {"sha256": k, "media_type": mt, "size_bytes": len(d), "data": d}
                for k, (d, mt) in rec.artifacts.blobs.items()
            ],
        )
        conn.execute(
            runs.insert(),
            {
                **row.model_dump(),
                "started_at": row.started_at.astimezone(UTC).replace(tzinfo=None),
            },
        )
        conn.execute(
            events.insert(),
            [
                {"run_id": run_id, "seq": e.seq, "event": e.event, "sha256": e.sha256, "body": b}
                for e, b in zip(rec.events, rec.bodies, strict=True)
            ],
        )
    with engine.connect() as conn:
        assert current_version(conn) == 1
        assert "ix_runs_case_id" not in {i["name"] for i in sa.inspect(conn).get_indexes("runs")}
    engine.dispose()

    store = TraceStore(url)  # migrates 1 -> 12
    with store.engine.connect() as conn:
        assert current_version(conn) == SCHEMA_VERSION == 12
        insp = sa.inspect(conn)
        assert {
            "cohorts",
            "cohort_cases",
            "api_tokens",
            "api_token_revocations",
            "access_log",
            "jobs",
            "job_claims",
            "job_heartbeats",
            "job_results",
            "cohort_jobs",
            "run_verifications",
            "web_session_keys",
            "web_session_ends",
            "pacs_pushes",
            "pacs_watch_cursors",
            "pacs_watch_claims",
            "pacs_watch_studies",
            "pacs_watch_attempts",
            "pacs_watch_heartbeats",
            "pacs_watch_attempt_ends",
            "pacs_push_objects",
        } <= set(insp.get_table_names())
        assert "ix_runs_case_id" in {i["name"] for i in insp.get_indexes("runs")}
        assert "ix_events_event" in {i["name"] for i in insp.get_indexes("events")}
    check = store.verify(run_id)
    assert check.ok and check.n_events == N_EVENTS
    assert store.events(run_id) == rec.events
    assert [r.run_id for r in store.list_runs(case_id=row.case_id)] == [run_id]
    assert store.run(run_id).started_at == row.started_at
    _clone(store, run_id, store)  # and the migrated store takes new runs
    assert all(c.ok for c in verify_all(store)) and len(store.list_runs()) == 2


def _sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL of a fixture store (a SQLite path or already a URL)."""
    return url if "://" in url else f"sqlite:///{url}"


def test_migrating_past_the_known_versions_is_refused(db):
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn, pytest.raises(ValueError, match=f"no schema version {SCHEMA_VERSION + 1}"):
        apply_migrations(conn, upto=SCHEMA_VERSION + 1)
    engine.dispose()


def test_export_import_and_replay_work_on_either_backend(url: str, tmp_path: Path, db: str) -> None:
    """A run exported from one SQLite store imports into this backend, verifies, and replays the same."""
    from dxgraph.agent import replay
    from dxgraph.traces import export_run, import_run

    source_db = str(tmp_path / "source.db")
    run_id = _diagnose(source_db, tmp_path, cup_radius_px=38.0)
    file = export_run(TraceStore(source_db), run_id, tmp_path / "run.dxtrace")
    store = TraceStore(url)
    assert import_run(store, file) == run_id
    assert store.verify(run_id).ok
    assert [e.sha256 for e in store.events(run_id)] == [
        e.sha256 for e in TraceStore(source_db).events(run_id)
    ]
    result = replay(store, run_id, "recorded", registry=drawn_disc_cup_registry(cup_radius_px=38.0))
    assert result.same and result.diagnosis is not None and result.diagnosis.label == "glaucoma_suspect"


def test_two_workers_racing_for_one_cohort_case_record_it_once(url: str, tmp_path: Path) -> None:
    """The cohort record commits with its run: the loser of a race stores neither and reads the winner's."""
    from datetime import UTC, datetime

    from dxgraph.agent import RunOptions
    from dxgraph.agent.cohort import (
        CaseJob,
        CaseWorker,
        CohortCase,
        CohortInfo,
        CohortSettings,
        CohortStore,
        task_labels,
    )
    from dxgraph.core import ImageSpec
    from dxgraph.criteria_kb import get_criteria

    from _helpers import fundus_like, write_rgb

    labels = task_labels(get_criteria("glaucoma.onh-structure").document)
    store = TraceStore(url)
    info = CohortInfo(
        cohort_id="race", task="glaucoma", created_at=datetime.now(UTC), manifest="-", manifest_sha256="0" * 64,
        n_rows=1, labels=labels,
    )  # fmt: skip
    assert CohortStore(store).start(info) == info and CohortStore(store).start(info).cohort_id == "race"
    image = write_rgb(tmp_path / "f.png", fundus_like())
    case = CohortCase(case_id="c1", line=2, images=(ImageSpec(path=image),), modality="fundus")
    settings = CohortSettings(
        cohort_id="race",
        task="glaucoma",
        db_url=store.url,
        labels=labels,
        options=RunOptions(device="cpu"),
        registry=drawn_disc_cup_registry(cup_radius_px=35.0),
    )
    first = CaseWorker(settings).run(CaseJob(case))
    second = CaseWorker(settings).run(CaseJob(case))  # the same attempt again: loses, stores nothing
    assert first.status == "completed" and first.label == "glaucoma_suspect"
    assert second == first
    assert [r.run_id for r in store.list_runs(limit=None)] == [first.run_id]
    assert CohortStore(store).attempts("race") == {"c1": (1, "completed")}
    assert first.measured["vcdr"] == pytest.approx(0.7, abs=0.02) and first.cost.tool_calls >= 2
