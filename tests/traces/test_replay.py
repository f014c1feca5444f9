"""Replaying stored runs: from the record, with the tools re-run, and live, with a readable diff.

Runs are made in the tests: a fast fundus registry whose segmenter draws a disc of radius 50 px and a
cup of a chosen radius (see ``drawn_disc_cup_registry``), and one run of the real default registry on a
synthetic fundus phantom.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

import dxgraph
from dxgraph.agent import replay
from dxgraph.agent._replay_chat import reply_text
from dxgraph.errors import StoreError, UserError
from dxgraph.phantoms import fundus_phantom
from dxgraph.testing import ScriptedChat
from dxgraph.tools import ToolRegistry
from dxgraph.traces import DEFAULT_TOLERANCES, TraceStore, compare_json, tolerance_for

from _helpers import diagnosis_reply, drawn_disc_cup_registry, drawn_run, reply_evidence_ids, write_rgb


def _grey_run(tmp_path, db, cup_radius_px=38.0, **options):
    return drawn_run(tmp_path, db, cup_radius_px, **options)


def _store_size(store: TraceStore) -> tuple[int, int]:
    runs = store.list_runs(limit=1000)
    return len(runs), sum(len(store.raw_events(r.run_id)) for r in runs)


def test_recorded_replay_of_a_rules_run_reproduces_the_diagnosis_and_writes_nothing(tmp_path, db):
    _grey_run(tmp_path, db)  # warms the embedding model, so the timed run below is a fair reference
    r = _grey_run(tmp_path, db)
    store = TraceStore(db)
    before = _store_size(store)
    res = replay(store, r.run_id[:-1], "recorded", registry=drawn_disc_cup_registry(cup_radius_px=38))
    assert res.same, res.render()
    assert res.differences == ()
    assert res.run_id == r.run_id and res.mode == "recorded"
    assert res.diagnosis == r.diagnosis == res.recorded_diagnosis
    assert res.n_tool_calls == 3 and res.n_model_calls == 0
    assert "same" in res.render() and "glaucoma_suspect" in res.render()
    assert _store_size(store) == before, "a replay writes nothing"
    assert store.verify(r.run_id).ok
    assert res.recorded_duration_ms is not None
    ratio = res.duration_ms / res.recorded_duration_ms
    print(
        f"\nrecorded replay {res.duration_ms:.0f} ms vs original run {res.recorded_duration_ms:.0f} ms"
        f" (ratio {ratio:.2f})"
    )
    # the recorded outputs answer the tool calls: the drawn segmenter's current radius does not matter
    other = replay(store, r.run_id, "recorded", registry=drawn_disc_cup_registry(cup_radius_px=10))
    assert other.same and other.diagnosis == r.diagnosis


def test_recorded_replay_with_the_default_registry_supplies_only_the_tool_models(tmp_path, db):
    r = _grey_run(tmp_path, db)
    res = replay(TraceStore(db), r.run_id, "recorded")  # default registry: its segmenter has another version
    assert res.same, res.render()
    assert res.diagnosis == r.diagnosis


def test_recorded_replay_of_a_language_model_run_replays_its_replies_in_order(tmp_path, db):
    chat = ScriptedChat(
        [
            "no JSON here",  # rejected, then repaired
            lambda req: diagnosis_reply("glaucoma_suspect", reply_evidence_ids(req)[:1], 0.77),
        ]
    )
    r = _grey_run(tmp_path, db, aggregator="scripted", language_model=chat)
    assert r.diagnosis.aggregator == "scripted" and len(chat.requests) == 2
    store = TraceStore(db)
    before = _store_size(store)
    t0 = time.perf_counter()
    res = replay(store, r.run_id, "recorded", registry=drawn_disc_cup_registry(cup_radius_px=38))
    print(f"\nrecorded replay of a model-backed run: {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert res.same, res.render()
    assert res.diagnosis == r.diagnosis
    assert res.diagnosis is not None and res.diagnosis.confidence == pytest.approx(0.77)
    assert res.n_model_calls == 2
    assert _store_size(store) == before


def test_live_replay_of_a_model_run_needs_the_model_and_diffs_its_new_answer(tmp_path, db):
    chat = ScriptedChat([lambda req: diagnosis_reply("glaucoma_suspect", reply_evidence_ids(req)[:1], 0.77)])
    r = _grey_run(tmp_path, db, aggregator="scripted", language_model=chat)
    store = TraceStore(db)
    with pytest.raises(UserError, match="scripted model scripted"):
        replay(store, r.run_id, "live", registry=drawn_disc_cup_registry(cup_radius_px=38))
    # today's model answers differently: same evidence, another confidence and citations
    other = ScriptedChat([lambda req: diagnosis_reply("glaucoma_suspect", reply_evidence_ids(req)[:2], 0.6)])
    live = replay(
        store, r.run_id, "live", registry=drawn_disc_cup_registry(cup_radius_px=38), language_model=other
    )
    assert not live.same
    assert not [d for d in live.differences if d.kind in ("evidence", "label")], live.render()
    conf = next(d for d in live.differences if d.kind == "confidence")
    assert conf.delta == pytest.approx(0.6 - 0.77)
    assert "label unchanged: glaucoma_suspect" in live.render()


def test_tools_replay_of_the_default_registry_on_a_phantom_gives_zero_differences(tmp_path, db):
    path = write_rgb(tmp_path / "phantom.png", fundus_phantom(0.5, seed=3).rgb)
    r = dxgraph.diagnose("glaucoma", path, db=db, modality="fundus")
    store = TraceStore(db)
    tools = replay(store, r.run_id, "tools")
    assert tools.same, tools.render()
    assert tools.n_tool_calls >= 3
    recorded = replay(store, r.run_id, "recorded")
    assert recorded.same, recorded.render()
    assert recorded.diagnosis == r.diagnosis
    assert recorded.recorded_duration_ms is not None
    print(
        f"\nphantom, default registry: recorded replay {recorded.duration_ms:.0f} ms, tools replay "
        f"{tools.duration_ms:.0f} ms, original run {recorded.recorded_duration_ms:.0f} ms"
        f" (recorded/original {recorded.duration_ms / recorded.recorded_duration_ms:.2f})"
    )
    live = replay(store, r.run_id, "live")
    assert live.same, live.render()


def _circle_area_px(radius: int) -> int:
    img = np.zeros((200, 200), np.uint8)
    cv2.circle(img, (100, 100), radius, 1, -1)
    return int(img.sum())


def test_tools_replay_reports_a_changed_tool_output_with_its_magnitude(tmp_path, db):
    r = _grey_run(tmp_path, db, cup_radius_px=38)
    store = TraceStore(db)
    same = replay(store, r.run_id, "tools", registry=drawn_disc_cup_registry(cup_radius_px=38))
    assert same.same and same.n_tool_calls == 3, same.render()

    res = replay(store, r.run_id, "tools", registry=drawn_disc_cup_registry(cup_radius_px=30))
    assert not res.same
    # the measuring tools re-run on the recorded masks, so only the segmenter's cup mask differs
    assert len(res.differences) == 1, res.render()
    d = res.differences[0]
    assert (d.kind, d.where) == ("tool_output", "s1 (segment_optic_disc_cup).cup_mask")
    expected = (_circle_area_px(38) - _circle_area_px(30)) / (200 * 200)
    assert d.delta == pytest.approx(expected, abs=1e-9)
    text = res.render()
    assert "DIFFERENT" in text and "cup_mask" in text and f"{expected:.2%}" in text
    print("\n" + text)


def test_tools_replay_reports_another_tool_version(tmp_path, db):
    r = _grey_run(tmp_path, db)
    res = replay(TraceStore(db), r.run_id, "tools")  # the default registry's segmenter is not 9.9.9
    versions = [d for d in res.differences if d.kind == "tool_version"]
    assert [(d.where, d.recorded) for d in versions] == [("s1 (segment_optic_disc_cup)", "9.9.9")]
    assert not res.same


def test_live_replay_with_another_tool_changes_the_label_and_says_so(tmp_path, db):
    r = _grey_run(tmp_path, db, cup_radius_px=38)
    assert r.diagnosis.label == "glaucoma_suspect"
    store = TraceStore(db)
    before = _store_size(store)
    res = replay(store, r.run_id, "live", registry=drawn_disc_cup_registry(cup_radius_px=25))
    assert not res.same
    assert res.diagnosis is not None and res.diagnosis.label == "no_glaucoma_signs"
    by_kind = {(d.kind, d.where): d for d in res.differences}
    label = by_kind[("label", "")]
    assert (label.recorded, label.replayed) == ("glaucoma_suspect", "no_glaucoma_signs")
    vcdr = next(d for d in res.differences if d.kind == "evidence" and ".vcdr" in d.where)
    assert vcdr.delta == pytest.approx(float(vcdr.replayed) - float(vcdr.recorded))
    assert vcdr.delta is not None and vcdr.delta < -0.2  # 38/50 -> 25/50 cup radius
    assert any(d.kind == "verdict" for d in res.differences)
    text = res.render()
    assert "label CHANGED: glaucoma_suspect -> no_glaucoma_signs" in text and "vcdr" in text
    assert _store_size(store) == before
    print("\n" + text)


def test_bad_mode_and_unknown_run_are_user_errors(tmp_path, db):
    r = _grey_run(tmp_path, db)
    store = TraceStore(db)
    with pytest.raises(UserError, match="unknown replay mode"):
        replay(store, r.run_id, "bogus")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="no run"):
        replay(store, "nope", "recorded")


def test_reply_text_reads_each_backend_and_tolerances_follow_units():
    assert reply_text("openai", {"choices": [{"message": {"content": "{}"}}]}) == "{}"
    assert reply_text("transformers", {"text": " {} \n", "finish_reason": "stop"}) == "{}"
    assert reply_text("scripted", {"text": " x"}) == " x"
    with pytest.raises(StoreError):
        reply_text("openai", {"nothing": 1})
    assert tolerance_for("disc_height_mm") == DEFAULT_TOLERANCES["_mm"]
    assert tolerance_for("vcdr") == tolerance_for("rim_to_disc_ratio") == 1e-6
    assert tolerance_for("rim_superior_px", {"_px": 0.5}) == 0.5
    assert compare_json({"a_mm": 1.0}, {"a_mm": 1.0005}, "out") == []
    [d] = compare_json({"a_mm": 1.0, "ok": True}, {"a_mm": 1.01, "ok": True}, "out")
    assert (d.where, d.tolerance) == ("out.a_mm", 1e-3) and d.delta == pytest.approx(0.01)
    [d] = compare_json({"flag": True}, {"flag": 1}, "out")
    assert d.where == "out.flag"


def test_recorded_replay_reports_a_tool_the_registry_no_longer_has(tmp_path, db):
    r = _grey_run(tmp_path, db)
    drawn = drawn_disc_cup_registry(cup_radius_px=38)
    without_crop = ToolRegistry()
    for name in ("segment_optic_disc_cup", "measure_cup_disc"):
        without_crop.register(drawn.get(name))
    res = replay(TraceStore(db), r.run_id, "recorded", registry=without_crop)
    assert not res.same
    kinds = {d.kind for d in res.differences}
    assert "tool_version" in kinds and "plan" in kinds, res.render()
    assert "crop_zoom (not in the registry)" in res.render()


def test_recorded_replay_answers_retrieval_from_the_record(tmp_path, db, monkeypatch):
    """Retrieval changed since the run (embeddings off): recorded replay still reproduces it exactly,
    while a live replay reports the retrieval difference."""
    from dxgraph.criteria_kb import embedding_model_available

    r = _grey_run(tmp_path, db)
    store = TraceStore(db)
    recorded = next(e for e in store.events(r.run_id) if e.event == "CriteriaRetrieved")
    monkeypatch.setenv("DXGRAPH_NO_EMBEDDINGS", "1")
    assert not embedding_model_available()
    result = replay(store, r.run_id, "recorded", registry=drawn_disc_cup_registry(cup_radius_px=38.0))
    assert result.same, result.render()
    if recorded.documents[0].method != "lexical":  # the run used embeddings: today's lexical scores differ
        live = replay(store, r.run_id, "live", registry=drawn_disc_cup_registry(cup_radius_px=38.0))
        assert any(d.kind == "criteria" for d in live.differences), live.render()
