"""Portable traces: a run exported to a .dxtrace zip imports into another store intact, and tampering is refused."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

import dxgraph
from dxgraph.agent import RunOptions
from dxgraph.errors import StoreError
from dxgraph.testing import ScriptedChat
from dxgraph.traces import (
    FORMAT_VERSION,
    GENESIS_SHA256,
    ModelCalled,
    TraceStore,
    canonical_json,
    event_sha256,
    export_run,
    import_run,
)

from _helpers import diagnosis_reply, drawn_disc_cup_registry, fundus_like, reply_evidence_ids, write_rgb

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _reply(request) -> str:  # type: ignore[no-untyped-def]
    return diagnosis_reply("no_glaucoma_signs", reply_evidence_ids(request)[:1], 0.8)


@pytest.fixture
def source(tmp_path: Path, db: str) -> tuple[TraceStore, str]:
    """A store with one real run: image, disc and cup masks, a crop and the criteria document."""
    path = write_rgb(tmp_path / "f.png", fundus_like())
    r = dxgraph.diagnose(
        "glaucoma", path, db=db, modality="fundus", registry=drawn_disc_cup_registry(cup_radius_px=38)
    )
    return TraceStore(db), r.run_id


def _rewrite(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """Copy a zip, passing each (name, bytes) through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


def test_exported_run_imports_into_a_fresh_store_and_verifies(source, tmp_path):
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace", exported_at=WHEN)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("manifest.json"))
        lines = zf.read("events.jsonl").decode().splitlines()
        media = {a["sha256"]: a["media_type"] for a in manifest["artifacts"]}
        for digest in media:
            assert hashlib.sha256(zf.read(f"artifacts/{digest}")).hexdigest() == digest
    assert names[2:] == sorted(names[2:]) and names[:2] == ["manifest.json", "events.jsonl"]
    assert lines == [r.body for r in store.raw_events(run_id)]
    assert manifest["format_version"] == FORMAT_VERSION and manifest["run_id"] == run_id
    assert manifest["n_events"] == 8 and manifest["head_sha256"] == store.run(run_id).head_sha256
    kinds = sorted(media.values())
    # image, disc mask, cup mask, crop, and the criteria document
    assert kinds == ["application/yaml"] + ["image/png"] * 4

    target = TraceStore(str(tmp_path / "other.db"))
    assert import_run(target, out) == run_id
    assert target.verify(run_id).ok
    assert target.events(run_id) == store.events(run_id)
    assert [r.body for r in target.raw_events(run_id)] == lines
    src_row, dst_row = store.run(run_id), target.run(run_id)
    assert dst_row.model_dump() == src_row.model_dump()
    for digest in media:
        assert target.get_bytes(digest) == store.get_bytes(digest)


def test_export_is_byte_for_byte_deterministic(source, tmp_path):
    store, run_id = source
    a = export_run(store, run_id, tmp_path / "a.dxtrace", exported_at=WHEN).read_bytes()
    b = export_run(store, run_id, tmp_path / "b.dxtrace", exported_at=WHEN).read_bytes()
    assert a == b


def test_model_images_travel_with_the_run(tmp_path, db):
    path = write_rgb(tmp_path / "f.png", fundus_like())
    chat = ScriptedChat([_reply])
    r = dxgraph.diagnose(
        "glaucoma",
        path,
        db=db,
        modality="fundus",
        registry=drawn_disc_cup_registry(),
        language_model=chat,
        options=RunOptions(aggregator="scripted"),
    )
    store = TraceStore(db)
    (call,) = [e for e in store.events(r.run_id) if isinstance(e, ModelCalled)]
    out = export_run(store, r.run_id, tmp_path / "llm.dxtrace")
    with zipfile.ZipFile(out) as zf:
        assert f"artifacts/{call.image_sha256[0]}" in zf.namelist()
    target = TraceStore(str(tmp_path / "other.db"))
    import_run(target, out)
    assert target.verify(r.run_id).ok and target.events(r.run_id) == store.events(r.run_id)
    assert target.get_bytes(call.image_sha256[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_same_run_twice_is_a_no_op(source, tmp_path):
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace")
    assert import_run(store, out) == run_id  # into its own store
    target = TraceStore(str(tmp_path / "other.db"))
    import_run(target, out)
    import_run(target, out)
    assert [r.run_id for r in target.list_runs()] == [run_id]
    assert len(target.raw_events(run_id)) == 8 and target.verify(run_id).ok


def test_an_import_that_fails_midway_leaves_nothing_behind(source, tmp_path):
    """The events go in as one batch, in the transaction that holds the run row and the artifacts."""
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace")
    target = TraceStore(str(tmp_path / "other.db"))
    with target.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fail_at_5 BEFORE INSERT ON events WHEN NEW.seq = 5 BEGIN SELECT RAISE(ABORT, 'disk'); END"
        )
    with pytest.raises(
        StoreError, match=f"run {run_id} could not be imported, nothing of it was written: disk"
    ):
        import_run(target, out)
    with target.engine.connect() as conn:
        counts = [
            conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
            for t in ("runs", "events", "artifacts")
        ]
    assert counts == [0, 0, 0]
    with target.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fail_at_5")
    assert import_run(target, out) == run_id and target.verify(run_id).ok


def _flip_in_value(data: bytes, needle: bytes) -> bytes:
    i = data.index(needle)
    return data[:i] + needle.replace(b"0.", b"1.", 1) + data[i + len(needle) :]


def test_an_edited_event_line_is_refused(source, tmp_path):
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace")
    vcdr = json.loads(store.raw_events(run_id)[4].body)["outputs"]["vcdr"]
    needle = f'"vcdr":{vcdr}'.encode()

    def edit(name: str, data: bytes) -> bytes:
        return data.replace(needle, b'"vcdr":0.31') if name == "events.jsonl" else data

    bad = _rewrite(out, tmp_path / "bad.dxtrace", edit)
    target = TraceStore(str(tmp_path / "other.db"))
    with pytest.raises(StoreError, match=r"event line 5 \(ToolCalled\): content does not match its sha256"):
        import_run(target, bad)
    assert target.list_runs() == [], "nothing is written"

    def garble(name: str, data: bytes) -> bytes:
        return data.replace(b'"event":"PlanMade"', b'"event":"PlanMode"') if name == "events.jsonl" else data

    with pytest.raises(StoreError, match=r"event line 3 does not parse as an event"):
        import_run(target, _rewrite(out, tmp_path / "bad2.dxtrace", garble))

    def drop(name: str, data: bytes) -> bytes:
        if name != "events.jsonl":
            return data
        lines = data.decode().splitlines(keepends=True)
        return "".join(lines[:3] + lines[4:]).encode()

    with pytest.raises(
        StoreError, match=r"event line 4 \(ToolCalled\) has run id .* and seq 4, expected .*, 3"
    ):
        import_run(target, _rewrite(out, tmp_path / "bad3.dxtrace", drop))


def test_an_edited_artifact_is_refused(source, tmp_path):
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace")
    mask_sha = json.loads(store.raw_events(run_id)[3].body)["outputs"]["disc_mask"]["sha256"]

    def edit(name: str, data: bytes) -> bytes:
        if name == f"artifacts/{mask_sha}":
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    with pytest.raises(StoreError, match=rf"artifact {mask_sha[:12]} does not match its sha256 \(edited\)"):
        import_run(TraceStore(str(tmp_path / "other.db")), _rewrite(out, tmp_path / "bad.dxtrace", edit))

    def remove(name: str, data: bytes) -> bytes | None:
        return None if name == f"artifacts/{mask_sha}" else data

    with pytest.raises(StoreError, match="artifact list does not match"):
        import_run(TraceStore(str(tmp_path / "other.db")), _rewrite(out, tmp_path / "bad2.dxtrace", remove))


def test_manifest_lies_are_refused(source, tmp_path):
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace")
    target = TraceStore(str(tmp_path / "other.db"))

    def manifest_edit(change):  # type: ignore[no-untyped-def]
        def edit(name: str, data: bytes) -> bytes:
            if name != "manifest.json":
                return data
            m = json.loads(data)
            change(m)
            return json.dumps(m).encode()

        return edit

    relabel = manifest_edit(lambda m: m["run"].update(label="no_glaucoma_signs"))
    with pytest.raises(StoreError, match="run fields disagree with the events: label"):
        import_run(target, _rewrite(out, tmp_path / "a.dxtrace", relabel))
    future = manifest_edit(lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(StoreError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        import_run(target, _rewrite(out, tmp_path / "b.dxtrace", future))
    no_manifest = _rewrite(out, tmp_path / "c.dxtrace", lambda n, d: None if n == "manifest.json" else d)
    with pytest.raises(StoreError, match=r"no manifest\.json"):
        import_run(target, no_manifest)
    (tmp_path / "d.dxtrace").write_bytes(b"just text")
    with pytest.raises(StoreError, match="not a zip file"):
        import_run(target, tmp_path / "d.dxtrace")
    assert target.list_runs() == []


def test_a_run_id_clash_with_different_content_is_refused(source, tmp_path):
    store, run_id = source
    out = export_run(store, run_id, tmp_path / "run.dxtrace")
    # another real run, renamed to the first run's id and re-chained, so it is valid on its own
    other = TraceStore(str(tmp_path / "other.db"))
    path = write_rgb(tmp_path / "g.png", fundus_like())
    r2 = dxgraph.diagnose(
        "glaucoma", path, db=str(tmp_path / "other.db"), modality="fundus", registry=drawn_disc_cup_registry()
    )
    out2 = export_run(other, r2.run_id, tmp_path / "run2.dxtrace")
    with zipfile.ZipFile(out2) as zf:
        prev, lines = GENESIS_SHA256, []
        for line in zf.read("events.jsonl").decode().splitlines():
            body = json.loads(line)
            body.update(run_id=run_id, prev_sha256=prev)
            body["sha256"] = prev = event_sha256(body)
            lines.append(canonical_json(body) + "\n")

    def rename(name: str, data: bytes) -> bytes:
        if name == "events.jsonl":
            return "".join(lines).encode()
        if name == "manifest.json":
            m = json.loads(data)
            m["run_id"] = m["run"]["run_id"] = run_id
            m["head_sha256"] = m["run"]["head_sha256"] = prev
            return json.dumps(m).encode()
        return data

    clash = _rewrite(out2, tmp_path / "clash.dxtrace", rename)
    fresh = TraceStore(str(tmp_path / "fresh.db"))
    assert import_run(fresh, clash) == run_id and fresh.verify(run_id).ok, "valid on its own"
    with pytest.raises(StoreError, match=f"run {run_id} is already in the store with different content"):
        import_run(store, clash)
    assert store.verify(run_id).ok and import_run(store, out) == run_id
