"""The trace store: hash chain verification catches edits, the seal catches cuts, artifacts are checked."""

import itertools
import json

import pytest
import sqlalchemy as sa

import dxgraph
from dxgraph.agent import RunOptions
from dxgraph.errors import StoreError
from dxgraph.traces import GENESIS_SHA256, SCHEMA_VERSION, TraceStore, canonical_json, event_sha256

from _helpers import drawn_disc_cup_registry, fundus_like, write_rgb


@pytest.fixture
def stored_run(tmp_path, db):
    path = write_rgb(tmp_path / "f.png", fundus_like())
    r = dxgraph.diagnose("glaucoma", path, db=db, modality="fundus", registry=drawn_disc_cup_registry())
    return TraceStore(db), r.run_id


def _sql(store, statement, **params):
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_intact_run_verifies(stored_run):
    store, run_id = stored_run
    check = store.verify(run_id)
    assert check.ok and check.problems == () and check.n_events == 8
    rows = store.raw_events(run_id)
    assert json.loads(rows[0].body)["prev_sha256"] == GENESIS_SHA256
    for prev, row in itertools.pairwise(rows):
        assert json.loads(row.body)["prev_sha256"] == prev.sha256
        assert event_sha256(json.loads(row.body)) == row.sha256


def test_editing_a_value_breaks_the_chain_at_that_event(stored_run):
    store, run_id = stored_run
    row = store.raw_events(run_id)[4]  # measure_cup_disc
    body = json.loads(row.body)
    body["outputs"]["vcdr"] = 0.31
    _sql(store, "UPDATE events SET body = :b WHERE run_id = :r AND seq = 4", b=canonical_json(body), r=run_id)
    check = store.verify(run_id)
    assert not check.ok
    assert check.problems[0] == "event 4 (ToolCalled): content does not match its sha256 (edited)"


def test_rehashing_an_edited_event_is_caught_by_the_next_link(stored_run):
    store, run_id = stored_run
    row = store.raw_events(run_id)[4]
    body = json.loads(row.body)
    body["outputs"]["vcdr"] = 0.31
    body["sha256"] = event_sha256(body)
    _sql(
        store,
        "UPDATE events SET body = :b, sha256 = :h WHERE run_id = :r AND seq = 4",
        b=canonical_json(body),
        h=body["sha256"],
        r=run_id,
    )
    check = store.verify(run_id)
    assert check.problems[0] == "event 5 (ToolCalled): prev_sha256 does not match the previous event's hash"


def test_cutting_the_last_event_is_caught_by_the_seal(stored_run):
    store, run_id = stored_run
    _sql(store, "DELETE FROM events WHERE run_id = :r AND seq = 7", r=run_id)
    assert store.verify(run_id).problems == ("run row says 8 events, store holds 7",)


def test_an_edited_artifact_is_caught(stored_run):
    store, run_id = stored_run
    mask_sha = json.loads(store.raw_events(run_id)[3].body)["outputs"]["disc_mask"]["sha256"]
    _sql(store, "UPDATE artifacts SET data = :d WHERE sha256 = :s", d=b"not the mask", s=mask_sha)
    assert store.verify(run_id).problems == (f"artifact {mask_sha[:12]} does not match its sha256 (edited)",)


def test_schema_is_migrated_and_versioned(db):
    store = TraceStore(db)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar() == SCHEMA_VERSION
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    TraceStore(db)  # reopening applies nothing twice
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM schema_version")).scalar() == SCHEMA_VERSION


def test_a_newer_schema_is_refused(db):
    store = TraceStore(db)
    _sql(store, "INSERT INTO schema_version (version, applied_at) VALUES (99, 'future')")
    with pytest.raises(StoreError, match="schema version 99"):
        TraceStore(db)


def test_unknown_runs_and_missing_stores_are_user_errors(tmp_path, stored_run):
    store, run_id = stored_run
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.events("nope")
    assert store.resolve_run_id(run_id[:17]) == run_id
    with pytest.raises(StoreError, match="no trace store at"):
        TraceStore(str(tmp_path / "absent.db"), create=False)


def test_extra_criteria_travel_with_the_run_into_its_report_and_are_verified(tmp_path, db):
    from dxgraph.criteria_kb import packaged_criteria
    from dxgraph.traces import render_report

    text = next(c for c in packaged_criteria() if c.document.id == "glaucoma.onh-structure").raw.decode()
    text = text.replace("id: glaucoma.onh-structure", "id: site.glaucoma-local").replace(
        "disease: glaucoma", "disease: glaucoma_local"
    )
    text = text.replace(
        "European Glaucoma Society.", "European Glaucoma Society (local copy, site protocol 7)."
    )
    crit = tmp_path / "criteria"
    crit.mkdir()
    (crit / "local.yaml").write_text(text)
    path = write_rgb(tmp_path / "f.png", fundus_like())
    r = dxgraph.diagnose(
        "glaucoma_local",
        path,
        db=db,
        modality="fundus",
        registry=drawn_disc_cup_registry(),
        options=RunOptions(criteria_dirs=[crit]),
    )
    (crit / "local.yaml").unlink()  # the report must not need the folder any more
    store = TraceStore(db)
    html = render_report(store, r.run_id)
    assert "site protocol 7" in html
    retrieved = json.loads(store.raw_events(r.run_id)[1].body)
    (doc,) = [d for d in retrieved["documents"] if d["id"] == "site.glaucoma-local"]
    assert store.verify(r.run_id).ok
    _sql(store, "UPDATE artifacts SET data = :d WHERE sha256 = :s", d=b"id: forged", s=doc["sha256"])
    assert store.verify(r.run_id).problems == (
        f"criteria document {doc['sha256'][:12]} does not match its sha256 (edited)",
    )


def test_a_full_disk_fails_the_save_cleanly_and_leaves_earlier_runs_intact(tmp_path, db, monkeypatch):
    """SQLite's max_page_count stands in for a full disk: the save is refused whole, with the reason."""
    import sqlalchemy as sa

    from dxgraph.errors import StoreError

    from _helpers import drawn_run

    first = drawn_run(tmp_path, db)
    with TraceStore(db).engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    opened = TraceStore.__init__

    def full_disk_store(self, *a, **kw):  # type: ignore[no-untyped-def]
        opened(self, *a, **kw)
        self.engine.dispose()
        sa.event.listen(self.engine, "connect", lambda c, _: c.execute(f"PRAGMA max_page_count = {pages}"))

    monkeypatch.setattr(TraceStore, "__init__", full_disk_store)
    with pytest.raises(StoreError, match="database or disk is full") as e:
        drawn_run(tmp_path, db, cup_radius_px=38.0)
    monkeypatch.undo()
    assert "nothing of it was written" in str(e.value)
    store = TraceStore(db)
    assert [r.run_id for r in store.list_runs()] == [first.run_id] and store.verify(first.run_id).ok
