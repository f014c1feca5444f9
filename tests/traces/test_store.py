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


# -- the quick verify route: the same verdicts as the full check, and the same bytes as before -----------


def _replace_body(store, run_id, seq, text, **extra):
    sets = ", ".join(["body = :b", *(f"{k} = :{k}" for k in extra)])
    _sql(store, f"UPDATE events SET {sets} WHERE run_id = :r AND seq = :s", b=text, r=run_id, s=seq, **extra)


def test_the_recorder_writes_what_the_two_pass_definition_writes():
    """Each stored body is canonical_json of the body with sha256 = event_sha256 of it: the bytes and the hash
    chain runs recorded before the one-pass serialisation hold; awkward text and a nested ``sha256`` too."""
    from datetime import UTC, datetime

    from dxgraph.traces import RunFinished, ToolCalled, TraceRecorder

    rec = TraceRecorder("20261201T000000-abcdef", clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    odd = {"sha256": "0" * 64, "media_type": "x", "text": 'é "q" \\ \u2028 \x00 \U0001f600', "v": 1e-7}
    for i in range(3):
        rec.emit(
            ToolCalled,
            step_id=f"s{i}",
            tool="t",
            tool_version="1",
            status="ok",
            inputs={**odd, "i": i},
            outputs={"nested": [odd]},
            duration_ms=0.5,
        )
    rec.emit(RunFinished, status="completed", label="x", duration_ms=1.0)
    prev = GENESIS_SHA256
    for ev, text in zip(rec.events, rec.bodies, strict=True):
        body = json.loads(text)
        assert body["prev_sha256"] == prev and body["sha256"] == ev.sha256 == event_sha256(body)
        assert text == canonical_json(body)
        prev = ev.sha256


def test_a_body_rewritten_in_another_json_form_is_named(stored_run):
    """Same content and hash, other bytes: spaces, or keys out of order."""
    store, run_id = stored_run
    row = store.raw_events(run_id)[4]
    body = json.loads(row.body)
    for text in (
        json.dumps(body, sort_keys=True),
        json.dumps(dict(reversed(body.items())), separators=(",", ":")),
    ):
        _replace_body(store, run_id, 4, text)
        assert store.verify(run_id).problems[0] == (
            "event 4 (ToolCalled): stored text is not the canonical JSON that was hashed (edited)"
        )
    _replace_body(store, run_id, 4, row.body)
    assert store.verify(run_id).ok


def test_edited_columns_beside_the_body_are_named(stored_run):
    store, run_id = stored_run
    row = store.raw_events(run_id)[3]
    _sql(store, "UPDATE events SET sha256 = :h WHERE run_id = :r AND seq = 3", h="f" * 64, r=run_id)
    assert (
        store.verify(run_id).problems[0] == "event 3 (ToolCalled): content does not match its sha256 (edited)"
    )
    _sql(
        store,
        "UPDATE events SET sha256 = :h, event = 'ModelCalled' WHERE run_id = :r AND seq = 3",
        h=row.sha256,
        r=run_id,
    )
    assert (
        store.verify(run_id).problems[0] == "event 3 (ModelCalled): its body is a ToolCalled event (edited)"
    )


def test_a_body_from_another_run_or_one_that_does_not_parse_is_named(tmp_path, stored_run):
    from _helpers import drawn_run

    store, run_id = stored_run
    other = drawn_run(tmp_path, store.url.removeprefix("sqlite:///"), cup_radius_px=38.0).run_id
    foreign = store.raw_events(other)[0]
    _replace_body(store, run_id, 0, foreign.body, sha256=foreign.sha256)
    assert (
        store.verify(run_id).problems[0]
        == f"event 0 (RunStarted): its body belongs to run {other} (moved between runs)"
    )
    _replace_body(store, run_id, 0, foreign.body[:-1])
    assert (
        store.verify(run_id).problems[0]
        == "event 0 (RunStarted): does not parse as an event (JSONDecodeError)"
    )


def test_a_forged_tail_that_is_not_an_event_is_still_refused(stored_run):
    """Rehashed and resealed, so only the check that every body is an event can tell."""
    store, run_id = stored_run
    last = json.loads(store.raw_events(run_id)[-1].body)
    forged = {**last, "status": "rewritten", "sha256": ""}
    forged["sha256"] = event_sha256(forged)
    _replace_body(store, run_id, 7, canonical_json(forged), sha256=forged["sha256"])
    _sql(store, "UPDATE runs SET head_sha256 = :h WHERE run_id = :r", h=forged["sha256"], r=run_id)
    assert (
        store.verify(run_id).problems[0]
        == "event 7 (RunFinished): does not parse as an event (ValidationError)"
    )


def test_a_broken_chain_still_counts_every_stored_event(stored_run):
    store, run_id = stored_run
    _sql(store, "DELETE FROM events WHERE run_id = :r AND seq = 2", r=run_id)
    check = store.verify(run_id)
    assert check.problems == ("event 2 is missing (the next stored event is 3)",) and check.n_events == 7


def test_an_artifact_named_only_in_a_middle_event_is_checked(stored_run):
    """Verify reads artifact references from the events that can hold them, wherever they are in the chain."""
    store, run_id = stored_run
    rows = store.raw_events(run_id)
    first_refs = {d for d in json.loads(rows[0].body)["case"]["images"][0].values() if isinstance(d, str)}
    crops = [
        (r.seq, json.loads(r.body)["outputs"])
        for r in rows
        if r.event == "ToolCalled"
        and json.loads(r.body)["tool"] == "crop_zoom"
        and json.loads(r.body)["outputs"]
    ]
    assert crops, "the drawn run crops the disc"
    seq, outputs = crops[0]
    sha = next(v["sha256"] for v in outputs.values() if isinstance(v, dict) and "media_type" in v)
    assert sha not in first_refs and 0 < seq < len(rows) - 1
    _sql(store, "DELETE FROM artifacts WHERE sha256 = :s", s=sha)
    assert store.verify(run_id).problems == (f"artifact {sha[:12]} is missing",)
