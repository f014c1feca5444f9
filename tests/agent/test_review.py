"""The review step: fallback, out-of-domain and second-opinion measurements, combination and disagreement.

Two drawn segmenters stand in for the classical and the learned fundus segmenter: each draws a disc of
radius 50 px and a concentric cup of a given radius, so the vCDR each leads to is known (cup radius / 50),
and each declares a measured error model. The measurement, retrieval, planning, rules and trace are real.
"""

from __future__ import annotations

import math

import pytest

import dxgraph
from dxgraph.agent import RunOptions, replay
from dxgraph.criteria_kb import get_criteria
from dxgraph.planners import alternative_measurement
from dxgraph.tools import ErrorModel, ToolRegistry, default_tools
from dxgraph.traces import PlanRevised, ToolCalled, TraceStore, render_report

from _helpers import fundus_like, register_drawn_segmenter, write_rgb

CLASSICAL_SD, LEARNED_SD = 0.05, 0.04
CLASSICAL, LEARNED, THIRD = (
    "segment_optic_disc_cup",
    "segment_optic_disc_cup_unet",
    "segment_optic_disc_cup_zz",
)


def _registry(classical=None, learned=None, third=None) -> ToolRegistry:
    """measure_cup_disc and crop_zoom, plus drawn segmenters given as dicts of _segmenter arguments."""
    reg = ToolRegistry()
    for name in ("measure_cup_disc", "crop_zoom"):
        reg.register(default_tools().get(name))
    for name, method, sd, kw in (
        (CLASSICAL, "classical", CLASSICAL_SD, classical),
        (LEARNED, "learned", LEARNED_SD, learned),
        (THIRD, "classical", CLASSICAL_SD, third),
    ):
        if kw is not None:
            model = {"vcdr": ErrorModel(bias=0.0, sd=sd, n=50, source="test double")}
            register_drawn_segmenter(
                reg,
                name,
                kw["cup_radius_px"],
                kw.get("fail"),
                kw.get("flags", ()),
                method=method,
                error_models=model,
            )
    return reg


def _run(tmp_path, db, reg, prefer=(CLASSICAL,), rounds=2):
    path = write_rgb(tmp_path / "f.png", fundus_like())
    options = RunOptions(prefer_tools=prefer, review_rounds=rounds)
    return dxgraph.diagnose("glaucoma", path, options, db=db, modality="fundus", registry=reg)


def _revisions(db, run_id):
    return [e for e in TraceStore(db).events(run_id) if isinstance(e, PlanRevised)]


def _tools_called(db, run_id):
    return [e.tool for e in TraceStore(db).events(run_id) if isinstance(e, ToolCalled)]


def _vcdr(result):
    return next(e for e in result.evidence if e.indicator == "vcdr" and e.superseded_by is None)


def test_a_value_far_from_every_threshold_is_measured_once(tmp_path, db):
    r = _run(tmp_path, db, _registry(classical={"cup_radius_px": 15}, learned={"cup_radius_px": 15}))
    assert _revisions(db, r.run_id) == [] and LEARNED not in _tools_called(db, r.run_id)
    ev = _vcdr(r)
    assert ev.value == pytest.approx(0.30, abs=0.02) and ev.uncertainty_sd == pytest.approx(CLASSICAL_SD)
    assert (
        ev.method == "classical" and "bias +0, SD 0.05 over 50 cases (test double)" in ev.uncertainty_source
    )
    assert r.diagnosis.label == "no_glaucoma_signs"


def test_a_failed_segmenter_falls_back_to_the_other_one(tmp_path, db):
    reg = _registry(
        classical={"cup_radius_px": 0, "fail": "no disc-like edge"}, learned={"cup_radius_px": 40}
    )
    r = _run(tmp_path, db, reg)
    (revised,) = _revisions(db, r.run_id)
    rev = revised.revisions[0]
    assert rev.indicator == "vcdr" and len(revised.revisions) == 1  # the other indicators come with it
    assert (revised.round, rev.reason, rev.trigger_step_id) == (1, "fallback", "s1")
    assert "segment_optic_disc_cup failed: no disc-like edge" in rev.detail
    assert [revised.plan.step(s).tool for s in rev.added_steps] == [LEARNED, "measure_cup_disc"]
    assert _vcdr(r).value == pytest.approx(0.80, abs=0.02) and _vcdr(r).tool == "measure_cup_disc"
    assert r.diagnosis.label == "glaucoma_suspect" and TraceStore(db).verify(r.run_id).ok


def test_an_out_of_domain_learned_measurement_gives_way_to_the_classical_one(tmp_path, db):
    reg = _registry(
        classical={"cup_radius_px": 15}, learned={"cup_radius_px": 40, "flags": ("out_of_domain",)}
    )
    r = _run(tmp_path, db, reg, prefer=(LEARNED,))
    (revised,) = _revisions(db, r.run_id)
    assert [x.reason for x in revised.revisions] == ["out_of_domain"]
    ood = next(e for e in r.evidence if e.indicator == "vcdr" and "out_of_domain" in e.quality_flags)
    kept = _vcdr(r)
    assert ood.superseded_by == kept.evidence_id and kept.value == pytest.approx(0.30, abs=0.02)
    assert kept.method == "classical" and r.diagnosis.label == "no_glaucoma_signs"


def test_a_value_on_the_threshold_gets_a_second_opinion_and_agreeing_values_are_combined(tmp_path, db):
    # classical 0.68 +- 1.645 * 0.05 straddles vCDR 0.7; the learned method reads 0.72
    r = _run(tmp_path, db, _registry(classical={"cup_radius_px": 34}, learned={"cup_radius_px": 36}))
    (revised,) = _revisions(db, r.run_id)
    assert revised.revisions[0].reason == "second_opinion" and "could flip" in revised.revisions[0].detail
    parts = {e.evidence_id: e for e in r.evidence if e.indicator == "vcdr" and e.superseded_by}
    combined = _vcdr(r)
    assert set(combined.combined_from) == set(parts) and len(parts) == 2
    a, b = (parts[i].value for i in combined.combined_from)
    wa, wb = 1 / CLASSICAL_SD**2, 1 / LEARNED_SD**2
    assert combined.value == pytest.approx((wa * a + wb * b) / (wa + wb), abs=1e-6)
    assert combined.uncertainty_sd == pytest.approx(1 / math.sqrt(wa + wb), abs=1e-6)
    assert combined.uncertainty_sd < LEARNED_SD
    assert "methods_combined" in combined.quality_flags
    # the rim-to-disc ratio came from the learned step too, at no extra cost
    assert {m.indicator for m in revised.revisions[0].measurements} >= {"vcdr", "rim_to_disc_ratio"}
    assert r.diagnosis.cited_evidence and set(r.diagnosis.cited_evidence) <= {
        e.evidence_id for e in r.evidence
    }


def test_methods_that_disagree_where_the_label_depends_on_them_make_the_run_abstain(tmp_path, db):
    r = _run(tmp_path, db, _registry(classical={"cup_radius_px": 33}, learned={"cup_radius_px": 45}))
    combined = _vcdr(r)
    assert {"methods_disagree", "methods_disagree_decisive"} <= set(combined.quality_flags)
    verdict = next(v for v in r.diagnosis.criteria[0].indicators if v.indicator == "vcdr")
    assert verdict.finding == "not_assessable" and "independent methods disagree" in verdict.reason
    assert r.diagnosis.abstained and r.diagnosis.label == "not_assessable"


def test_review_rounds_are_bounded_and_the_fixed_graph_adds_nothing(tmp_path, db):
    reg = _registry(
        classical={"cup_radius_px": 0, "fail": "no disc"},
        learned={"cup_radius_px": 40, "flags": ("out_of_domain",)},
        third={"cup_radius_px": 36},
    )
    r = _run(tmp_path, db, reg)
    assert [(e.round, e.revisions[0].reason) for e in _revisions(db, r.run_id)] == [
        (1, "fallback"),
        (2, "out_of_domain"),
    ]
    assert _vcdr(r).value == pytest.approx(0.72, abs=0.02) and _vcdr(r).tool == "measure_cup_disc"
    one = _run(tmp_path, db, reg, rounds=1)
    assert [e.round for e in _revisions(db, one.run_id)] == [1] and THIRD not in _tools_called(db, one.run_id)
    fixed = _run(tmp_path, db, reg, rounds=0)
    assert _revisions(db, fixed.run_id) == [] and fixed.diagnosis.label == "not_assessable"


def test_a_revised_run_replays_exactly_and_its_report_shows_the_rounds(tmp_path, db):
    reg = _registry(classical={"cup_radius_px": 34}, learned={"cup_radius_px": 36})
    r = _run(tmp_path, db, reg)
    store = TraceStore(db)
    for mode in ("recorded", "tools"):
        result = replay(store, r.run_id, mode, registry=reg)
        assert result.same, result.render()
    html = render_report(store, r.run_id)
    assert 'id="revisions"' in html and "second opinion" in html and 'data-reason="second_opinion"' in html
    assert "methods_combined" in html and "measured on real data" in html


def test_alternative_measurement_reuses_nothing_it_must_not_and_numbers_after_the_plan(tmp_path, db):
    reg = _registry(classical={"cup_radius_px": 15}, learned={"cup_radius_px": 15})
    r = _run(tmp_path, db, reg, rounds=0)
    criteria = get_criteria("glaucoma.onh-structure")
    steps, measurement = alternative_measurement(r.plan, r.case, reg, criteria, "vcdr", {CLASSICAL})
    taken = {s.step_id for s in r.plan.steps}
    assert [s.tool for s in steps] == [LEARNED, "measure_cup_disc"] and not taken & {s.step_id for s in steps}
    assert measurement.step_id == steps[-1].step_id and measurement.quantity == "vcdr"
    assert alternative_measurement(r.plan, r.case, reg, criteria, "vcdr", {CLASSICAL, LEARNED}) is None


def _by_purpose(revise):
    """A scripted model: an invalid plan draft (the deterministic plan runs), then ``revise`` for revisions."""
    import json

    def answer(req):
        if req.purpose.startswith("revise"):
            return json.dumps(revise(req)) if callable(revise) else json.dumps(revise)
        return "no plan"

    return answer


def _llm_run(tmp_path, db, reg, chat):
    path = write_rgb(tmp_path / "f.png", fundus_like())
    options = RunOptions(planner="llm", aggregator="rules", prefer_tools=(CLASSICAL,))
    return dxgraph.diagnose(
        "glaucoma", path, options, db=db, modality="fundus", registry=reg, language_model=chat
    )


def test_the_language_model_planner_may_ask_for_a_measurement_the_rules_did_not(tmp_path, db):
    from dxgraph.testing import ScriptedChat

    # vCDR 0.30 is far from every threshold: the review's rules add nothing, the model asks anyway
    reg = _registry(classical={"cup_radius_px": 15}, learned={"cup_radius_px": 16})
    ask = {
        "revisions": [{"indicator": "vcdr", "tool": LEARNED, "reason": "second_opinion", "why": "check it"}]
    }
    chat = ScriptedChat([_by_purpose(ask)])
    r = _llm_run(tmp_path, db, reg, chat)
    (revised,) = _revisions(db, r.run_id)
    (rev,) = revised.revisions
    assert (rev.proposed_by, rev.reason, rev.detail) == ("language_model", "second_opinion", "check it")
    assert [revised.plan.step(s).tool for s in rev.added_steps] == [LEARNED, "measure_cup_disc"]
    assert "methods_combined" in _vcdr(r).quality_flags
    sent = next(q for q in chat.requests if q.purpose == "revise")
    assert "options: segment_optic_disc_cup_unet" in sent.messages[-1].text
    assert sent.json_schema["$defs"]["ProposedRevision"]["properties"]["tool"]["enum"] == [LEARNED]
    replayed = replay(TraceStore(db), r.run_id, "recorded", registry=reg)  # model replies from the record
    assert replayed.same, replayed.render()


def test_a_model_asking_for_a_tool_that_is_not_an_option_is_repaired_then_ignored(tmp_path, db):
    from dxgraph.testing import ScriptedChat
    from dxgraph.traces import ModelCalled

    reg = _registry(classical={"cup_radius_px": 15}, learned={"cup_radius_px": 16})
    bad = {"revisions": [{"indicator": "vcdr", "tool": "crop_zoom", "reason": "fallback", "why": "x"}]}
    r = _llm_run(tmp_path, db, reg, ScriptedChat([_by_purpose(bad)]))
    assert _revisions(db, r.run_id) == [] and LEARNED not in _tools_called(db, r.run_id)
    calls = [
        e for e in TraceStore(db).events(r.run_id) if isinstance(e, ModelCalled) and "revise" in e.purpose
    ]
    assert [(c.purpose, c.status) for c in calls] == [("revise", "invalid"), ("revise-repair", "invalid")]
    assert "crop_zoom is not an option for vcdr" in (calls[0].error or "")
