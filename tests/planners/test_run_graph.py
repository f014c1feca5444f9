"""The LangGraph run: node order, events, tool failures recorded and the run going on."""

import dxgraph
from dxgraph.agent import NODES, RunDeps, build_graph
from dxgraph.traces import TraceStore

from _helpers import drawn_disc_cup_registry, fundus_like, write_rgb


def test_graph_has_its_nodes_in_order_and_review_loops_back_to_dispatch():
    from dxgraph.agent import RulesAggregator
    from dxgraph.criteria_kb import criteria_library
    from dxgraph.tools import ToolContext, default_tools
    from dxgraph.traces import TraceRecorder

    rec = TraceRecorder()
    g = build_graph(
        RunDeps(default_tools(), rec, RulesAggregator(), ToolContext(rec.artifacts), criteria_library())
    )
    assert type(g).__name__ == "CompiledStateGraph"
    graph = g.get_graph()
    assert [n for n in graph.nodes if not n.startswith("__")] == list(NODES)
    assert NODES == ("retrieve", "plan", "dispatch", "review", "aggregate", "decide")
    edges = {(e.source, e.target, e.conditional) for e in graph.edges}
    assert {
        ("review", "dispatch", True),
        ("review", "aggregate", True),
        ("dispatch", "review", False),
    } <= edges


def test_a_run_leaves_the_full_event_sequence_with_an_intact_chain(tmp_path, db):
    path = write_rgb(tmp_path / "f.png", fundus_like())
    r = dxgraph.diagnose(
        "glaucoma", path, db=db, modality="fundus", registry=drawn_disc_cup_registry(cup_radius_px=38)
    )
    store = TraceStore(db)
    events = store.events(r.run_id)
    assert [e.event for e in events] == [
        "RunStarted",
        "CriteriaRetrieved",
        "PlanMade",
        "ToolCalled",
        "ToolCalled",
        "ToolCalled",
        "DiagnosisMade",
        "RunFinished",
    ]
    assert store.verify(r.run_id).ok
    vcdr = next(e for e in r.evidence if e.indicator == "vcdr")
    assert vcdr.value == 77 / 101  # drawn circles: cup 2*38+1 rows, disc 2*50+1 rows
    assert r.diagnosis.label == "glaucoma_suspect"  # 0.76 ≥ 0.7
    assert "s2:vcdr" in r.diagnosis.cited_evidence
    assert events[0].header.tools["segment_optic_disc_cup"] == "9.9.9"


def test_a_failing_tool_is_recorded_and_the_run_abstains(tmp_path, db):
    path = write_rgb(tmp_path / "f.png", fundus_like())
    reg = drawn_disc_cup_registry(fail_with="no optic disc candidate in the field of view")
    r = dxgraph.diagnose("glaucoma", path, db=db, modality="fundus", registry=reg)
    assert r.diagnosis.label == "not_assessable" and r.diagnosis.abstained
    assert r.diagnosis.confidence == 0.0
    calls = [e for e in TraceStore(db).events(r.run_id) if e.event == "ToolCalled"]
    assert [(c.tool, c.status) for c in calls] == [
        ("segment_optic_disc_cup", "failed"),
        ("measure_cup_disc", "skipped"),
        ("crop_zoom", "skipped"),
    ]
    assert calls[0].error == "no optic disc candidate in the field of view"
    assert calls[0].quality_flags == ("disc_not_found",)
    vcdr = r.diagnosis.criteria[0].indicators[0]
    assert vcdr.finding == "not_assessable"
    assert "no optic disc candidate" in vcdr.reason
    assert TraceStore(db).verify(r.run_id).ok


def test_a_bug_in_a_tool_surfaces_and_the_run_is_stored_as_error(tmp_path, db):
    import pytest

    from dxgraph.tools import ToolRegistry, default_tools, tool
    from dxgraph.tools.fundus import DiscCupMasks, SegmentDiscCupInput

    reg = ToolRegistry()
    for name in ("measure_cup_disc", "crop_zoom"):
        reg.register(default_tools().get(name))

    @tool(name="segment_optic_disc_cup", version="0.0.1", modalities=("fundus",), registry=reg)
    def broken(inp: SegmentDiscCupInput) -> DiscCupMasks:
        """Has a bug."""
        return 1 / 0  # type: ignore[return-value]

    path = write_rgb(tmp_path / "f.png", fundus_like())
    with pytest.raises(ZeroDivisionError):
        dxgraph.diagnose("glaucoma", path, db=db, modality="fundus", registry=reg)
    store = TraceStore(db)
    (run,) = store.list_runs()
    assert run.status == "error"
    last = store.events(run.run_id)[-1]
    assert last.event == "RunFinished" and "ZeroDivisionError" in last.error
    assert store.verify(run.run_id).ok
