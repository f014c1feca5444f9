"""The LLM planner: a drafted plan runs only if it validates; else one repair, else the deterministic plan."""

from __future__ import annotations

import json

import pytest

import dxgraph
from dxgraph.agent import ChatRequest, ModelError, RunOptions
from dxgraph.testing import ScriptedChat
from dxgraph.tools import default_tools
from dxgraph.traces import ModelCalled, PlanMade, RunStarted, TraceStore

from _helpers import drawn_disc_cup_registry, fundus_like, write_rgb


def _draft(steps: list[dict], indicators: list[dict], not_assessable: list[dict] | None = None) -> str:
    return json.dumps({"steps": steps, "indicators": indicators, "not_assessable": not_assessable or []})


SEGMENT = {
    "step_id": "s1",
    "tool": "segment_optic_disc_cup",
    "inputs": {"image": {"kind": "image", "image_id": "img0"}},
    "purpose": "find disc and cup",
}
MEASURE = {
    "step_id": "s2",
    "tool": "measure_cup_disc",
    "inputs": {
        "disc_mask": {"kind": "step", "step_id": "s1", "field": "disc_mask"},
        "cup_mask": {"kind": "step", "step_id": "s1", "field": "cup_mask"},
        "image": {"kind": "image", "image_id": "img0"},
        "laterality": {"kind": "case", "field": "laterality"},
    },
    "purpose": "measure the ratios",
}
CRITERIA = "glaucoma.onh-structure"
INDICATORS = [
    {"criteria_id": CRITERIA, "indicator": "vcdr", "step_id": "s2", "quantity": "vcdr"},
    {
        "criteria_id": CRITERIA,
        "indicator": "rim_to_disc_ratio",
        "step_id": "s2",
        "quantity": "rim_to_disc_ratio",
    },
    {"criteria_id": CRITERIA, "indicator": "isnt_rule", "step_id": "s2", "quantity": "isnt_violated"},
]
GOOD = _draft([SEGMENT, MEASURE], INDICATORS)


def _run(tmp_path, db, script, registry=None):
    chat = ScriptedChat(script)
    path = write_rgb(tmp_path / "f.png", fundus_like())
    r = dxgraph.diagnose(
        "glaucoma",
        path,
        db=db,
        modality="fundus",
        laterality="OD",
        registry=registry or drawn_disc_cup_registry(cup_radius_px=38),
        language_model=chat,
        options=RunOptions(planner="llm"),
    )
    events = TraceStore(db).events(r.run_id)
    plan_made = next(e for e in events if isinstance(e, PlanMade))
    calls = [e for e in events if isinstance(e, ModelCalled)]
    return r, plan_made, calls, chat


def test_a_valid_draft_is_the_plan_that_runs(tmp_path, db):
    r, made, calls, chat = _run(tmp_path, db, [GOOD])
    assert r.plan.planner == "llm" and made.fallback_reason is None
    # the draft's steps, then the zoomed view of the disc the deterministic planner would add too
    assert [s.tool for s in r.plan.steps] == ["segment_optic_disc_cup", "measure_cup_disc", "crop_zoom"]
    view = r.plan.steps[2]
    assert view.step_id == "s3" and view.inputs["roi"].step_id == "s1"  # type: ignore[union-attr]
    assert r.diagnosis.label == "glaucoma_suspect" and r.diagnosis.aggregator == "rules"
    vcdr = next(e for e in r.evidence if e.indicator == "vcdr")
    assert vcdr.value == pytest.approx(0.76, abs=0.02) and vcdr.step_id == "s2"
    assert [(c.purpose, c.status) for c in calls] == [("plan", "ok")]
    header = next(e for e in TraceStore(db).events(r.run_id) if isinstance(e, RunStarted)).header
    assert header.planner == "llm"
    prompt = chat.requests[0].messages[1].text
    assert "measure_cup_disc" in prompt and "quantity vcdr" in prompt and "img0: fundus, 2d" in prompt


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_draft([MEASURE, SEGMENT], INDICATORS), "does not run before it"),  # order / cycle
        (_draft([{**SEGMENT, "tool": "segment_everything"}, MEASURE], INDICATORS), "no tool named"),
        (
            _draft([SEGMENT, MEASURE], [{**INDICATORS[0], "quantity": "hcdr"}, *INDICATORS[1:]]),
            "measured by quantity 'vcdr'",
        ),
        (_draft([SEGMENT, MEASURE], INDICATORS[:2]), "not accounted for"),
        (
            _draft(
                [SEGMENT, MEASURE],
                INDICATORS[:2],
                [{"criteria_id": CRITERIA, "indicator": "isnt_rule", "reason": "too hard"}],
            ),
            "can be measured on this case",
        ),
        ("Step 1: segment the disc. Step 2: measure.", "no JSON object"),
    ],
)
def test_an_invalid_draft_is_repaired_once(tmp_path, db, bad, reason):
    r, made, calls, chat = _run(tmp_path, db, [bad, GOOD])
    assert r.plan.planner == "llm" and made.fallback_reason is None
    assert [(c.purpose, c.status) for c in calls] == [("plan", "invalid"), ("plan-repair", "ok")]
    assert reason in (calls[0].error or "")
    assert reason in chat.requests[1].messages[-1].text


def test_a_draft_invalid_twice_leaves_the_deterministic_plan_and_the_reason(tmp_path, db):
    bad = _draft([MEASURE], INDICATORS)
    r, made, calls, _ = _run(tmp_path, db, [bad])
    assert r.plan.planner == "deterministic" and [c.status for c in calls] == ["invalid", "invalid"]
    assert made.fallback_reason is not None and "invalid after repair" in made.fallback_reason
    assert r.diagnosis.label == "glaucoma_suspect", "the deterministic plan still measures everything"


def test_an_unreachable_planner_model_leaves_the_deterministic_plan(tmp_path, db):
    r, made, calls, _ = _run(tmp_path, db, [ModelError("connection refused")])
    assert r.plan.planner == "deterministic" and "could not be reached" in (made.fallback_reason or "")
    assert [c.status for c in calls] == ["error"]


def test_the_draft_may_choose_the_learned_segmenter(tmp_path, db):
    from dxgraph.tools import ToolRegistry

    reg = ToolRegistry()
    for name in ("segment_optic_disc_cup", "segment_optic_disc_cup_unet", "measure_cup_disc", "crop_zoom"):
        reg.register(default_tools().get(name))
    learned = _draft([{**SEGMENT, "tool": "segment_optic_disc_cup_unet"}, MEASURE], INDICATORS)

    def by_purpose(req: ChatRequest) -> str:
        assert req.purpose == "plan"
        return learned

    from dxgraph.phantoms import fundus_phantom

    ph = fundus_phantom(0.5, seed=3)
    path = write_rgb(tmp_path / "p.png", ph.rgb)
    r = dxgraph.diagnose(
        "glaucoma",
        path,
        db=db,
        modality="fundus",
        registry=reg,
        language_model=ScriptedChat([by_purpose]),
        options=RunOptions(planner="llm"),
    )
    assert r.plan.planner == "llm" and r.plan.steps[0].tool == "segment_optic_disc_cup_unet"
    assert r.plan.steps[0].tool_version == default_tools().get("segment_optic_disc_cup_unet").version
