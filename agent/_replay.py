"""Replaying a stored run, and what changed: from its record, with its tools re-run, or live today.

Three modes:

- ``recorded``: the whole graph runs again, retrieval answered from the run's ``CriteriaRetrieved`` event
  (the criteria documents stored with the run, with their recorded scores), every tool call from the
  run's recorded outputs and every model call from its recorded replies.
  It must reproduce the plan and the Diagnosis exactly: it checks that the recorded decision follows
  from the recorded measurements with today's code.
- ``tools``: every successful tool call is re-run on its recorded inputs (artifacts read from the
  store) and its output compared with the recorded one, field by field: numbers within a tolerance
  keyed by the field's unit (``DEFAULT_TOLERANCES``), artifacts by sha256 (masks: with the fraction of
  pixels that differ), everything else exactly.
- ``live``: the case runs again with today's tools and criteria and the run's aggregator and planner;
  its evidence (by indicator), verdicts and label are compared with the recorded ones.

Nothing is written to the store by a replay.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from dxgraph.agent._chat import ChatBackend
from dxgraph.agent._graph import Retriever
from dxgraph.agent._language_models import BASE_URL_ENV
from dxgraph.agent._options import RunOptions
from dxgraph.agent._replay_chat import ReplayChat
from dxgraph.agent._run import assemble_run
from dxgraph.core import Case, Diagnosis, Evidence
from dxgraph.criteria_kb import LoadedCriteria, RetrievedCriteria, criteria_library, parse_document
from dxgraph.errors import DxgraphError, StoreError, ToolError, UserError
from dxgraph.tools import ToolContext, ToolRegistry, default_tools, pick_device, tool_context
from dxgraph.traces import (
    CriteriaRetrieved,
    DiagnosisMade,
    Difference,
    Event,
    ModelCalled,
    PlanMade,
    PlanRevised,
    RunFinished,
    RunHeader,
    RunStarted,
    StoreBackedArtifacts,
    ToolCalled,
    TraceRecorder,
    TraceStore,
    compare_json,
    diff_criteria,
    diff_diagnosis,
    diff_evidence,
    diff_model_calls,
    diff_tool_calls,
)

Mode = Literal["recorded", "tools", "live"]
MODES: tuple[str, ...] = ("recorded", "tools", "live")
"""Replay modes."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay found."""

    run_id: str
    """The replayed run."""
    mode: str
    """``recorded``, ``tools`` or ``live``."""
    same: bool
    """Whether nothing differs."""
    differences: tuple[Difference, ...]
    """What differs, in the order of the run."""
    diagnosis: Diagnosis | None = None
    """The replayed Diagnosis (``recorded`` and ``live`` modes)."""
    recorded_diagnosis: Diagnosis | None = None
    """The recorded Diagnosis, when the run reached one."""
    n_tool_calls: int = 0
    """Tool calls answered from the record (``recorded``), re-run (``tools``) or made (``live``)."""
    n_model_calls: int = 0
    """Model calls answered from the record or made."""
    duration_ms: float = 0.0
    """Wall time of the replay."""
    recorded_duration_ms: float | None = None
    """Wall time of the original run, from its RunFinished event."""

    def render(self) -> str:
        """A short human-readable account: same or not, which evidence changed and by how much, the label."""
        head = f"replay ({self.mode}) of run {self.run_id}: "
        rec_label = self.recorded_diagnosis.label if self.recorded_diagnosis else None
        new_label = self.diagnosis.label if self.diagnosis else None
        calls = f"{self.n_tool_calls} tool call(s), {self.n_model_calls} model call(s)"
        if self.same:
            what = f"label {rec_label} reproduced, " if self.mode != "tools" and rec_label else ""
            return head + f"same -- {what}{calls}"
        lines = [head + f"DIFFERENT -- {len(self.differences)} difference(s); {calls}"]
        if self.mode != "tools":
            if rec_label != new_label:
                lines.append(f"  label CHANGED: {rec_label} -> {new_label}")
            else:
                lines.append(f"  label unchanged: {rec_label}")
            n_verdicts = sum(d.kind == "verdict" for d in self.differences)
            lines.append(f"  verdicts changed: {n_verdicts}")
        lines += [f"  {d.line()}" for d in self.differences]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (for ``--json`` output)."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "same": self.same,
            "differences": [dataclasses.asdict(d) for d in self.differences],
            "label": self.diagnosis.label if self.diagnosis else None,
            "recorded_label": self.recorded_diagnosis.label if self.recorded_diagnosis else None,
            "duration_ms": self.duration_ms,
            "recorded_duration_ms": self.recorded_duration_ms,
        }


# -- the record --------------------------------------------------------------------------------


@dataclass
class _Record:
    """A stored run's events, by kind."""

    run_id: str
    started: RunStarted
    criteria: CriteriaRetrieved | None = None
    plan: PlanMade | None = None
    revisions: list[PlanRevised] = field(default_factory=list)
    tool_calls: list[ToolCalled] = field(default_factory=list)
    model_calls: list[ModelCalled] = field(default_factory=list)
    diagnosis: DiagnosisMade | None = None
    finished: RunFinished | None = None

    @property
    def header(self) -> RunHeader:
        return self.started.header

    @property
    def case(self) -> Case:
        return self.started.case


def _split(run_id: str, events: list[Event]) -> _Record:
    if not events or not isinstance(events[0], RunStarted):
        raise StoreError(f"run {run_id} does not start with RunStarted")
    rec = _Record(run_id, events[0])
    for ev in events[1:]:
        if isinstance(ev, CriteriaRetrieved):
            rec.criteria = ev
        elif isinstance(ev, PlanMade):
            rec.plan = ev
        elif isinstance(ev, PlanRevised):
            rec.revisions.append(ev)
        elif isinstance(ev, ToolCalled):
            rec.tool_calls.append(ev)
        elif isinstance(ev, ModelCalled):
            rec.model_calls.append(ev)
        elif isinstance(ev, DiagnosisMade):
            rec.diagnosis = ev
        elif isinstance(ev, RunFinished):
            rec.finished = ev
    return rec


# -- comparing ---------------------------------------------------------------------------------


def _replaying_registry(rec: _Record, base: ToolRegistry, diffs: list[Difference]) -> ToolRegistry:
    """The run's tools (by name, recorded version) whose calls answer from the record, matched by inputs."""

    reg = ToolRegistry()
    pending: dict[str, list[ToolCalled]] = {}
    for call in rec.tool_calls:
        if call.status != "skipped":
            pending.setdefault(call.tool, []).append(call)
    for name, version in rec.header.tools.items():
        if name not in base:
            used = name in pending
            if used:
                diffs.append(Difference("tool_version", f"{name} (not in the registry)", version, None))
            continue
        spec = base.get(name)
        same = spec.version == version  # an error model is measured for one version of a tool
        reg.register(
            dataclasses.replace(
                spec,
                version=version,
                error_models=spec.error_models if same else {},
                method=spec.method if same else "unspecified",
                fn=_answer_from_record(name, spec.output_model, pending, diffs),
                batchable=False,
                batch_fn=None,
            )
        )
    return reg


def _answer_from_record(
    name: str, output_model: type[BaseModel], pending: dict[str, list[ToolCalled]], diffs: list[Difference]
) -> Callable[[Any], BaseModel]:
    """A tool function giving the recorded output of the call with the same inputs (else the next call)."""

    def answer(inp: BaseModel) -> BaseModel:
        calls = pending.get(name, [])
        asked = inp.model_dump(mode="json")
        if not calls:
            diffs.append(Difference("tool_input", f"{name} (no recorded call left)", None, asked))
            raise ToolError(f"replay: the recorded run made no further call to {name}")
        call = next((c for c in calls if c.inputs == asked), None)
        if call is None:
            call = calls[0]
            diffs.extend(
                compare_json(call.inputs, asked, f"{call.step_id} ({name}) inputs", kind="tool_input")
            )
        calls.remove(call)
        if call.status != "ok" or call.outputs is None:
            raise ToolError(call.error or f"{name} failed", flags=tuple(call.quality_flags))
        return output_model.model_validate(call.outputs)

    answer.__name__ = f"replay_{name}"
    return answer


def _device(recorded: str) -> str:
    """The recorded device where it is present, else the CPU (a GPU run replays anywhere)."""
    try:
        return pick_device(recorded if recorded in ("cpu", "cuda") else "auto")
    except DxgraphError:
        return "cpu"


@dataclass
class _Rerun:
    """What a re-run of the graph produced."""

    events: list[Event]
    diagnosis: Diagnosis | None
    evidence: tuple[Evidence, ...]
    error: str | None


def _run_graph(
    rec: _Record,
    options: RunOptions,
    registry: ToolRegistry,
    library: tuple[LoadedCriteria, ...],
    arts: StoreBackedArtifacts,
    backend: ChatBackend | None,
    retriever: Retriever | None = None,
) -> _Rerun:
    """The run graph on the recorded case, in memory, assembled as ``diagnose`` assembles it."""
    recorder = TraceRecorder(run_id=rec.run_id, artifacts=arts)
    run = assemble_run(
        options,
        recorder,
        registry=registry,
        language_model=backend,
        library=library,
        retriever=retriever,
        header=rec.header,
    )
    run.start(rec.case)
    try:
        state = run.graph.invoke({"case": rec.case})
    except DxgraphError as e:
        return _Rerun(recorder.events, None, (), f"{type(e).__name__}: {e}")
    return _Rerun(recorder.events, state.get("diagnosis"), tuple(state.get("evidence") or ()), None)


def _needs_model(h: RunHeader) -> bool:
    return h.aggregator != "rules" or h.planner == "llm"


def _recorded_options(rec: _Record, registry: ToolRegistry, endpoint: RunOptions | None = None) -> RunOptions:
    """The run's own options (aggregator, planner, seed, preferred tools still registered, device here),
    with the model endpoint of ``endpoint`` where the run consulted a model."""
    h = rec.header
    model: dict[str, Any] = {}
    if endpoint is not None and _needs_model(h):
        model = {"base_url": endpoint.base_url, "model": endpoint.model, "model_path": endpoint.model_path}
    return RunOptions.of_run(
        h,
        prefer_tools=tuple(t for t in h.preferred_tools if t in registry),
        device=_device(h.device),
        **model,
    )


def _first(events: list[Event], kind: type[Any]) -> Any:
    return next((e for e in events if isinstance(e, kind)), None)


def _stored_library(store: TraceStore, rec: _Record) -> tuple[LoadedCriteria, ...]:

    if rec.criteria is None:
        raise StoreError(f"run {rec.run_id} retrieved no criteria; nothing to replay")
    docs = []
    for d in rec.criteria.documents:
        try:
            data = store.get_bytes(d.sha256)
        except KeyError:
            raise StoreError(
                f"run {rec.run_id} was recorded before criteria documents were stored with runs "
                f"({d.id} {d.version} is missing); replay it with mode live"
            ) from None
        docs.append(parse_document(data, f"{d.id}.yaml"))
    return tuple(sorted(docs, key=lambda c: c.document.id))


def recorded_retriever(rec: _Record, library: tuple[LoadedCriteria, ...]) -> Retriever:
    """Retrieval answered from the run's ``CriteriaRetrieved`` event (documents, scores, terms, method),
    so a recorded replay does not depend on today's retrieval (an embedding model may have changed)."""

    assert rec.criteria is not None
    by_sha = {c.sha256: c for c in library}
    hits = [
        RetrievedCriteria(by_sha[d.sha256], d.score, tuple(d.matched_terms), d.method)
        for d in rec.criteria.documents
    ]

    def retriever(
        question: str, clinical_text: str | None, _library: tuple[LoadedCriteria, ...]
    ) -> list[Any]:
        return list(hits)

    return retriever


def _replay_recorded(
    store: TraceStore, rec: _Record, registry: ToolRegistry | None, tolerances: dict[str, float] | None
) -> tuple[list[Difference], _Rerun]:
    diffs: list[Difference] = []
    arts = StoreBackedArtifacts(store)
    library = _stored_library(store, rec)
    base = registry if registry is not None else default_tools()
    reg = _replaying_registry(rec, base, diffs)
    h = rec.header
    if _needs_model(h):
        if h.language_model is None:
            raise StoreError(
                f"run {rec.run_id} used aggregator {h.aggregator!r} but recorded no language model"
            )
        backend: ChatBackend | None = ReplayChat(h.language_model, rec.model_calls, diffs)
    else:
        backend = None
    options = _recorded_options(rec, reg)
    rerun = _run_graph(rec, options, reg, library, arts, backend, recorded_retriever(rec, library))
    if rerun.error:
        diffs.append(Difference("run", "replay", "completed", rerun.error))
    diffs += diff_criteria(rec.criteria, _first(rerun.events, CriteriaRetrieved))
    new_plan = _first(rerun.events, PlanMade)
    diffs += compare_json(
        rec.plan.model_dump(mode="json", include={"plan", "fallback_reason"}) if rec.plan else None,
        new_plan.model_dump(mode="json", include={"plan", "fallback_reason"}) if new_plan else None,
        "plan",
        kind="plan",
    )
    diffs += compare_json(
        [r.model_dump(mode="json", include={"round", "revisions"}) for r in rec.revisions],
        [
            r.model_dump(mode="json", include={"round", "revisions"})
            for r in rerun.events
            if isinstance(r, PlanRevised)
        ],
        "plan revisions",
        kind="plan",
    )
    diffs += diff_tool_calls(
        rec.tool_calls, [e for e in rerun.events if isinstance(e, ToolCalled)], tolerances
    )
    diffs += diff_model_calls(rec.model_calls, [e for e in rerun.events if isinstance(e, ModelCalled)])
    rec_ev = rec.diagnosis.evidence if rec.diagnosis else ()
    diffs += diff_evidence(rec_ev, rerun.evidence, tolerances, full=True)
    diffs += diff_diagnosis(
        rec.diagnosis.diagnosis if rec.diagnosis else None, rerun.diagnosis, rationale=True
    )
    return diffs, rerun


def _replay_tools(
    store: TraceStore, rec: _Record, registry: ToolRegistry | None, tolerances: dict[str, float] | None
) -> tuple[list[Difference], int]:
    diffs: list[Difference] = []
    reg = registry if registry is not None else default_tools()
    arts = StoreBackedArtifacts(store)
    ctx = ToolContext(artifacts=arts, seed=rec.header.seed, device=_device(rec.header.device))
    n = 0
    for call in rec.tool_calls:
        if call.status != "ok":
            continue
        where = f"{call.step_id} ({call.tool})"
        if call.tool not in reg:
            diffs.append(
                Difference("tool_version", f"{where} (not in the registry)", call.tool_version, None)
            )
            continue
        spec = reg.get(call.tool)
        if spec.version != call.tool_version:
            diffs.append(Difference("tool_version", where, call.tool_version, spec.version))
        try:
            inp = spec.input_model.model_validate(call.inputs)
        except ValidationError as e:
            diffs.append(
                Difference("tool_input", where, call.inputs, f"does not validate: {e.errors()[0]['msg']}")
            )
            continue
        n += 1
        try:
            with tool_context(ctx):
                out = spec.fn(inp)
        except ToolError as e:
            diffs.append(Difference("tool_output", where, "ok", f"failed: {e}"))
            continue
        diffs += compare_json(
            call.outputs, out.model_dump(mode="json"), where, tolerances=tolerances, artifacts=arts
        )
    return diffs, n


def _replay_live(
    store: TraceStore,
    rec: _Record,
    registry: ToolRegistry | None,
    tolerances: dict[str, float] | None,
    language_model: ChatBackend | None,
    endpoint: RunOptions | None,
) -> tuple[list[Difference], _Rerun]:
    h = rec.header
    given = endpoint is not None and (
        endpoint.base_url or endpoint.model_path or os.environ.get(BASE_URL_ENV)
    )
    if _needs_model(h) and language_model is None and not given:
        lm = h.language_model
        model = f"{lm.backend} model {lm.model}" if lm else "a language model"
        raise UserError(
            f"run {rec.run_id} consulted {model} (aggregator {h.aggregator}, planner {h.planner}); "
            "a live replay needs that model: pass a language model (--base-url or --model-path)"
        )
    reg = registry if registry is not None else default_tools()
    options = _recorded_options(rec, reg, endpoint or RunOptions())
    diffs: list[Difference] = []
    rerun = _run_graph(
        rec,
        options,
        reg,
        criteria_library(options.criteria_dirs),
        StoreBackedArtifacts(store),
        language_model if _needs_model(h) else None,
    )
    if rerun.error:
        diffs.append(Difference("run", "replay", "completed", rerun.error))
    diffs += diff_criteria(rec.criteria, _first(rerun.events, CriteriaRetrieved))
    new_calls = {c.step_id: c for c in rerun.events if isinstance(c, ToolCalled)}
    for call in rec.tool_calls:
        now = new_calls.get(call.step_id)
        now_tool = (now.tool, now.tool_version) if now else None
        if now_tool != (call.tool, call.tool_version):
            diffs.append(Difference("tool_version", call.step_id, (call.tool, call.tool_version), now_tool))
    rec_ev = rec.diagnosis.evidence if rec.diagnosis else ()
    diffs += diff_evidence(rec_ev, rerun.evidence, tolerances, full=False)
    diffs += diff_diagnosis(
        rec.diagnosis.diagnosis if rec.diagnosis else None, rerun.diagnosis, rationale=False
    )
    return diffs, rerun


def replay(
    store: TraceStore,
    run_id: str,
    mode: Mode,
    options: RunOptions | None = None,
    *,
    registry: ToolRegistry | None = None,
    tolerances: dict[str, float] | None = None,
    language_model: ChatBackend | None = None,
) -> ReplayResult:
    """Replay a stored run in ``mode`` and report what differs; nothing is written to the store.

    The run is re-assembled with its recorded aggregator, planner, seed and preferred tools; of
    ``options`` (``RunOptions``) a ``live`` replay of a model-backed run takes the model endpoint
    (``base_url``, ``model``, ``model_path``) and the extra criteria folders. ``registry`` replaces the
    default tool registry (``recorded`` mode takes only the tools' input and output models from it);
    ``tolerances`` override ``DEFAULT_TOLERANCES`` by field-name suffix; ``language_model`` passes a ready
    backend for a ``live`` replay of a model-backed run instead.
    StoreError for an unknown run, UserError for an unknown mode or a live replay lacking its model.
    """
    if mode not in MODES:
        raise UserError(f"unknown replay mode {mode!r}; use {', '.join(MODES)}")
    rid = store.resolve_run_id(run_id)
    rec = _split(rid, store.events(rid))
    t0 = time.perf_counter()
    diagnosis: Diagnosis | None = None
    n_model = 0
    if mode == "tools":
        diffs, n_tools = _replay_tools(store, rec, registry, tolerances)
    else:
        if mode == "recorded":
            diffs, rerun = _replay_recorded(store, rec, registry, tolerances)
        else:
            diffs, rerun = _replay_live(store, rec, registry, tolerances, language_model, options)
        diagnosis = rerun.diagnosis
        n_tools = sum(isinstance(e, ToolCalled) and e.status != "skipped" for e in rerun.events)
        n_model = sum(isinstance(e, ModelCalled) for e in rerun.events)
    return ReplayResult(
        run_id=rid,
        mode=mode,
        same=not diffs,
        differences=tuple(diffs),
        diagnosis=diagnosis,
        recorded_diagnosis=rec.diagnosis.diagnosis if rec.diagnosis else None,
        n_tool_calls=n_tools,
        n_model_calls=n_model,
        duration_ms=(time.perf_counter() - t0) * 1000,
        recorded_duration_ms=rec.finished.duration_ms if rec.finished else None,
    )
