"""Runs that use the learned segmenter: the choice and the weights hash are in the trace, and cases
run together through the batching dispatcher give what they give alone."""

import json

import pytest

from dxgraph.agent import PREFERRED_TOOLS, RunOptions

pytest.importorskip("torch")

from dxgraph.agent import diagnose, diagnose_many
from dxgraph.phantoms import fundus_phantom
from dxgraph.tools import PACKAGED_LOCK, BatchingDispatcher, read_lock
from dxgraph.traces import TraceStore

from _helpers import write_rgb

UNET = "segment_optic_disc_cup_unet"


@pytest.fixture(scope="module")
def phantom_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    return [
        write_rgb(folder / f"p{i}.png", fundus_phantom(vcdr=v, seed=20 + i).rgb)
        for i, v in enumerate((0.4, 0.55, 0.7, 0.8))
    ]


def tool_calls(db, run_id):
    events = [json.loads(r.body) for r in TraceStore(db, create=False).raw_events(run_id)]
    return events, {e["tool"]: e for e in events if e.get("event") == "ToolCalled"}


def test_default_plan_uses_the_classical_segmenter_and_a_preference_switches_it(phantom_paths, db):
    fixed = RunOptions(device="cpu", review_rounds=0)  # one tool per indicator: which one the plan chose
    classical = diagnose("glaucoma", phantom_paths[0], db=db, options=fixed)
    _, calls = tool_calls(db, classical.run_id)
    assert "segment_optic_disc_cup" in calls and UNET not in calls

    learned = diagnose(
        "glaucoma", phantom_paths[0], db=db, options=fixed.model_copy(update={"prefer_tools": (UNET,)})
    )
    events, calls = tool_calls(db, learned.run_id)
    assert UNET in calls and "segment_optic_disc_cup" not in calls
    header = events[0]["header"]
    assert header["preferred_tools"] == [UNET, *PREFERRED_TOOLS]
    shipped = read_lock(PACKAGED_LOCK).entries["fundus_disc_cup_unet.pt"].sha256
    assert calls[UNET]["outputs"]["weights_sha256"] == shipped
    assert header["models"]["dxgraph/tools/weights/fundus_disc_cup_unet.pt"] == shipped
    vcdr = next(e for e in learned.evidence if e.indicator == "vcdr")
    assert vcdr.tool == "measure_cup_disc" and 0 < vcdr.value <= 1  # phantoms are not its domain


def test_cases_run_together_are_batched_and_match_single_runs(phantom_paths, db):
    alone = [
        diagnose("glaucoma", p, db=db, options=RunOptions(device="cpu", prefer_tools=[UNET]))
        for p in phantom_paths
    ]
    batcher = BatchingDispatcher(max_batch=4, max_wait_ms=2000)
    together = diagnose_many(
        "glaucoma",
        phantom_paths,
        workers=4,
        db=db,
        batcher=batcher,
        options=RunOptions(device="cpu", prefer_tools=[UNET]),
    )
    assert batcher.stats.calls == 4 and batcher.stats.batches < 4 and batcher.stats.largest_batch >= 2
    for a, t in zip(alone, together, strict=True):
        assert t.run_id != a.run_id
        assert [(e.evidence_id, e.value) for e in t.evidence] == [
            (e.evidence_id, e.value) for e in a.evidence
        ]
        assert t.diagnosis.label == a.diagnosis.label
        assert TraceStore(db, create=False).verify(t.run_id).ok


def test_unknown_preferred_tool_is_a_user_error(phantom_paths, db):
    from dxgraph.errors import UserError

    with pytest.raises(UserError, match="unknown tool segment_everything"):
        diagnose("glaucoma", phantom_paths[0], db=db, options=RunOptions(prefer_tools=["segment_everything"]))
