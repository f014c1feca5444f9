"""The LangGraph state graph of one run: retrieve → plan → dispatch → review → aggregate → decide.

The review node reads the evidence against the criteria and may add measurements (a fallback, a second
opinion, an in-domain method): then the graph goes back to dispatch, which runs only the new steps, at
most ``MAX_REVIEW_ROUNDS`` times.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from dxgraph.agent._aggregate import Aggregator, EvidenceBundle
from dxgraph.agent._dispatch import StepResult, collect_evidence, dispatch, failure_reason
from dxgraph.agent._llm_planner import draft_plan, propose_revisions
from dxgraph.agent._measurements import reconcile
from dxgraph.agent._model_calls import TracedChat
from dxgraph.agent._review import MAX_REVIEW_ROUNDS, review
from dxgraph.core import Case, Diagnosis, Evidence, Plan, check_citations
from dxgraph.criteria_kb import LoadedCriteria, RetrievedCriteria, retrieve
from dxgraph.planners import VIEW_TOOL, plan_from_criteria, validate_plan
from dxgraph.tools import ToolCaller, ToolContext, ToolRegistry
from dxgraph.traces import (
    CriteriaRetrieved,
    DiagnosisMade,
    PlanMade,
    PlanRevised,
    RetrievedRef,
    TraceRecorder,
)

CRITERIA_MEDIA_TYPE = "application/yaml"
"""Media type under which retrieved criteria documents are stored with a run."""
NODES = ("retrieve", "plan", "dispatch", "review", "aggregate", "decide")
"""The graph's nodes, in order (review may lead back to dispatch)."""


Retriever = Callable[[str, str | None, tuple[LoadedCriteria, ...]], list[RetrievedCriteria]]
"""(question, clinical text, library) -> the retrieved documents, best first."""


class RunState(TypedDict, total=False):
    """What flows between the nodes."""

    case: Case
    retrieved: list[RetrievedCriteria]
    plan: Plan
    results: dict[str, StepResult]
    evidence: list[Evidence]
    diagnosis: Diagnosis
    review_round: int
    revised: bool


@dataclass(frozen=True)
class RunDeps:
    """What the nodes need besides the state."""

    registry: ToolRegistry
    """Tools available to the plan."""
    recorder: TraceRecorder
    """Where events go."""
    aggregator: Aggregator
    """The deciding backend."""
    tool_context: ToolContext
    """Artifacts, seed and device for tool calls."""
    library: tuple[LoadedCriteria, ...]
    """The criteria documents retrieval searches."""
    prefer: tuple[str, ...] = ()
    """Tools the planner picks first where several fit."""
    batcher: ToolCaller | None = None
    """Shared by concurrent runs so batchable tools get batches."""
    planner_chat: TracedChat | None = None
    """When set, a language model drafts the plan (``--planner llm``); the deterministic plan backs it."""
    retriever: Retriever | None = None
    """Replaces ``criteria_kb.retrieve`` (a replay answers retrieval from the record); None: retrieve."""
    review_rounds: int = MAX_REVIEW_ROUNDS
    """Most review rounds (0: the fixed graph, no measurement is ever added)."""


def build_graph(deps: RunDeps) -> Any:
    """Compile the run graph with its dependencies bound."""
    from langgraph.graph import END, START, StateGraph  # heavy: imported when a run is assembled

    def retrieve_node(state: RunState) -> RunState:
        case = state["case"]
        hits = (deps.retriever or retrieve)(case.question, case.clinical_text, deps.library)
        for h in hits:  # the documents' bytes travel with the trace, content-addressed by their sha256
            deps.recorder.artifacts.put_bytes(h.criteria.raw, CRITERIA_MEDIA_TYPE)
        deps.recorder.emit(
            CriteriaRetrieved,
            question=case.question,
            documents=tuple(
                RetrievedRef(
                    id=h.criteria.document.id,
                    version=h.criteria.document.version,
                    sha256=h.criteria.sha256,
                    score=h.score,
                    matched_terms=h.matched_terms,
                    method=getattr(h, "method", "lexical"),
                )
                for h in hits
            ),
        )
        return {"retrieved": hits}

    def plan_node(state: RunState) -> RunState:
        criteria = [h.criteria for h in state["retrieved"]]
        plan = plan_from_criteria(criteria, state["case"], deps.registry, deps.prefer)
        validate_plan(plan, deps.registry, state["case"])
        fallback = None
        if deps.planner_chat is not None:
            plan, fallback = draft_plan(deps.planner_chat, criteria, state["case"], deps.registry, plan)
        deps.recorder.emit(PlanMade, plan=plan, fallback_reason=fallback)
        return {"plan": plan}

    def dispatch_node(state: RunState) -> RunState:
        plan, case = state["plan"], state["case"]
        results = dispatch(
            plan,
            case,
            deps.registry,
            deps.tool_context,
            deps.recorder,
            deps.batcher,
            done=state.get("results"),
        )
        criteria = [h.criteria for h in state["retrieved"]]
        measured = collect_evidence(plan, results, criteria, deps.registry, case)
        return {"results": results, "evidence": reconcile(measured, criteria)}

    def review_node(state: RunState) -> RunState:
        round_ = state.get("review_round", 0) + 1
        if round_ > deps.review_rounds:
            return {"revised": False}
        criteria = [h.criteria for h in state["retrieved"]]
        plan, revisions = review(
            state["plan"],
            state["case"],
            state["results"],
            state["evidence"],
            criteria,
            deps.registry,
            round_,
            deps.prefer,
        )
        if deps.planner_chat is not None:  # the language-model planner may ask for more, validated alike
            failures = {
                p.step_id: reason
                for p in plan.indicators
                if p.step_id in state["results"]
                and (reason := failure_reason(plan, state["results"], p.step_id)) is not None
            }
            plan, proposed, _ = propose_revisions(
                deps.planner_chat,
                plan,
                state["case"],
                deps.registry,
                criteria,
                state["evidence"],
                failures,
                round_,
            )
            revisions = (*revisions, *proposed)
        if not revisions:
            return {"revised": False}
        deps.recorder.emit(PlanRevised, round=round_, revisions=revisions, plan=plan)
        return {"plan": plan, "review_round": round_, "revised": True}

    def aggregate_node(state: RunState) -> RunState:
        plan, results = state["plan"], state["results"]
        missing = {(n.criteria_id, n.indicator): n.reason for n in plan.not_assessable}
        for p in plan.indicators:
            reason = failure_reason(plan, results, p.step_id)
            if reason is not None:
                key = (p.criteria_id, p.indicator)
                missing[key] = f"{missing[key]}; {reason}" if key in missing else reason
        views = tuple(
            r.output.crop  # type: ignore[attr-defined]
            for r in results.values()
            if r.tool == VIEW_TOOL and r.output is not None
        )
        bundle = EvidenceBundle(
            criteria=tuple(h.criteria for h in state["retrieved"]),
            evidence=tuple(state["evidence"]),
            missing=missing,
            views=views,
            question=state["case"].question,
            clinical_text=state["case"].clinical_text,
        )
        return {"diagnosis": deps.aggregator.aggregate(bundle)}

    def decide_node(state: RunState) -> RunState:
        check_citations(state["diagnosis"], state["evidence"])
        deps.recorder.emit(DiagnosisMade, evidence=tuple(state["evidence"]), diagnosis=state["diagnosis"])
        return {}

    g = StateGraph(RunState)
    nodes = (retrieve_node, plan_node, dispatch_node, review_node, aggregate_node, decide_node)
    for name, fn in zip(NODES, nodes, strict=True):
        g.add_node(name, fn)
    g.add_edge(START, NODES[0])
    for a, b in itertools.pairwise(NODES):
        if a != "review":
            g.add_edge(a, b)
    g.add_conditional_edges(
        "review", lambda state: "dispatch" if state.get("revised") else "aggregate", ["dispatch", "aggregate"]
    )
    g.add_edge(NODES[-1], END)
    return g.compile()
