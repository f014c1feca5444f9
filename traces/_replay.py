"""Replaying a stored run, and what changed: from its record, with its tools re-run, or live today.

Three modes:

- ``recorded``: the whole graph runs again, every tool call answered from the run's recorded outputs
  and every model call from its recorded replies, with the criteria documents stored with the run.
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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from dxgraph.agent._chat import ChatBackend, ChatReply, ChatRequest, ModelError
from dxgraph.agent._model_calls import TracedChat
from dxgraph.agent.case import Case
from dxgraph.agent.diagnosis import Diagnosis
from dxgraph.agent.evidence import Evidence
from dxgraph.errors import DxgraphError, StoreError, ToolError, UserError
from dxgraph.traces._artifacts import ArtifactRef, MemoryArtifacts, decode_array
from dxgraph.traces._events import (
    CriteriaRetrieved,
    DiagnosisMade,
    Event,
    LanguageModelRef,
    ModelCalled,
    PlanMade,
    RunFinished,
    RunHeader,
    RunStarted,
    ToolCalled,
)
from dxgraph.traces._store import TraceStore

if TYPE_CHECKING:
    from dxgraph.criteria_kb import LoadedCriteria
    from dxgraph.tools._registry import ToolRegistry

Mode = Literal["recorded", "tools", "live"]
MODES: tuple[str, ...] = ("recorded", "tools", "live")
"""Replay modes."""

DEFAULT_TOLERANCES: dict[str, float] = {
    "_mm": 1e-3,
    "_mm2": 1e-3,
    "_ml": 1e-3,
    "_px": 1e-3,
    "_xy": 1e-3,
    "ratio": 1e-6,
    "cdr": 1e-6,
    "_fraction": 1e-6,
    "confidence": 1e-6,
    "score": 1e-6,
}
"""Absolute tolerance by field-name suffix (longest suffix wins); numbers in other fields use ``DEFAULT_TOLERANCE``."""
DEFAULT_TOLERANCE = 1e-6
"""Absolute tolerance of a number whose field name matches no suffix of the table."""
UNIT_SUFFIX = {"1": "ratio", "mm": "_mm", "mm2": "_mm2", "ml": "_ml", "px": "_px"}
"""Evidence unit -> the table suffix that gives its tolerance."""


@dataclass(frozen=True)
class Difference:
    """One thing the replay did not reproduce."""

    kind: str
    """What differs: ``evidence``, ``verdict``, ``label``, ``confidence``, ``diagnosis``, ``rationale``,
    ``plan``, ``criteria``, ``tool_output``, ``tool_input``, ``tool_version``, ``model`` or ``run``."""
    where: str
    """Which step, evidence, indicator or field."""
    recorded: Any
    """The recorded value (None when it was absent)."""
    replayed: Any
    """The replayed value (None when it is absent)."""
    delta: float | None = None
    """replayed - recorded for numbers; the fraction of differing pixels for masks."""
    tolerance: float | None = None
    """The tolerance the numbers were compared with."""

    def line(self) -> str:
        """One readable line."""
        if self.kind in ("tool_output", "tool_input") and _is_ref(self.recorded) and _is_ref(self.replayed):
            text = f"sha256 {self.recorded['sha256'][:12]} -> {self.replayed['sha256'][:12]}"
            if self.delta is not None:
                text += f" ({self.delta:.2%} of pixels differ)"
        else:
            text = f"{_short(self.recorded)} -> {_short(self.replayed)}"
            if self.delta is not None:
                text += f" (delta {self.delta:+.6g}"
                text += f", tolerance {self.tolerance:g})" if self.tolerance is not None else ")"
        return f"{self.kind} {self.where}: {text}" if self.where else f"{self.kind}: {text}"


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
        elif isinstance(ev, ToolCalled):
            rec.tool_calls.append(ev)
        elif isinstance(ev, ModelCalled):
            rec.model_calls.append(ev)
        elif isinstance(ev, DiagnosisMade):
            rec.diagnosis = ev
        elif isinstance(ev, RunFinished):
            rec.finished = ev
    return rec


class StoreBackedArtifacts(MemoryArtifacts):
    """Artifacts written in memory, read from memory first and then from a trace store (never written to it)."""

    def __init__(self, store: TraceStore) -> None:
        super().__init__()
        self.store = store
        """The store read for artifacts the replay did not make."""

    def get_bytes(self, sha256: str) -> bytes:
        """Bytes made by the replay, else the stored ones; KeyError when neither has them."""
        if sha256 in self.blobs:
            return self.blobs[sha256][0]
        return self.store.get_bytes(sha256)


# -- comparing ---------------------------------------------------------------------------------


def tolerance_for(name: str, tolerances: dict[str, float] | None = None) -> float:
    """The absolute tolerance of a numeric field, by the longest matching name suffix."""
    table = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    for suffix in sorted(table, key=len, reverse=True):
        if name.endswith(suffix):
            return table[suffix]
    return table.get("", DEFAULT_TOLERANCE)


def _is_ref(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("sha256"), str) and "media_type" in v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    text = repr(v) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "..."


def _mask_fraction(a: dict[str, Any], b: dict[str, Any], arts: StoreBackedArtifacts) -> float | None:
    """Fraction of differing pixels between two stored arrays of the same shape (None when not comparable)."""
    try:
        ra, rb = ArtifactRef.model_validate(a), ArtifactRef.model_validate(b)
        xa = decode_array(arts.get_bytes(ra.sha256), ra.media_type, kind=ra.kind)
        xb = decode_array(arts.get_bytes(rb.sha256), rb.media_type, kind=rb.kind)
    except (KeyError, ValueError, ValidationError):
        return None
    if xa.shape != xb.shape:
        return None
    diff = xa != xb
    if diff.ndim == 3:
        diff = diff.any(axis=2)
    return float(diff.mean())


def compare_json(
    recorded: Any,
    replayed: Any,
    where: str,
    *,
    kind: str = "tool_output",
    tolerances: dict[str, float] | None = None,
    artifacts: StoreBackedArtifacts | None = None,
    name: str = "",
) -> list[Difference]:
    """Field-by-field differences between two JSON values: numbers within tolerance, artifacts by sha256."""
    if _is_ref(recorded) and _is_ref(replayed):
        if recorded["sha256"] == replayed["sha256"]:
            return []
        frac = _mask_fraction(recorded, replayed, artifacts) if artifacts is not None else None
        return [Difference(kind, where, recorded, replayed, frac, 0.0 if frac is not None else None)]
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        out: list[Difference] = []
        for k in list(dict.fromkeys([*recorded, *replayed])):
            sub = f"{where}.{k}"
            if k not in recorded or k not in replayed:
                out.append(Difference(kind, sub, recorded.get(k), replayed.get(k)))
                continue
            out += compare_json(
                recorded[k], replayed[k], sub, kind=kind, tolerances=tolerances, artifacts=artifacts, name=k
            )
        return out
    if isinstance(recorded, list) and isinstance(replayed, list):
        if len(recorded) != len(replayed):
            return [Difference(kind, f"{where} (length)", len(recorded), len(replayed))]
        out = []
        for i, (a, b) in enumerate(zip(recorded, replayed, strict=True)):
            out += compare_json(
                a, b, f"{where}[{i}]", kind=kind, tolerances=tolerances, artifacts=artifacts, name=name
            )
        return out
    if _is_number(recorded) and _is_number(replayed):
        tol = tolerance_for(name, tolerances)
        delta = float(replayed) - float(recorded)
        if math.isfinite(delta) and abs(delta) <= tol:
            return []
        return [Difference(kind, where, recorded, replayed, delta, tol)]
    if recorded != replayed or type(recorded) is not type(replayed):
        return [Difference(kind, where, recorded, replayed)]
    return []


def _evidence_key(e: Evidence) -> str:
    return f"{e.criteria_id}.{e.indicator}"


def _diff_evidence(
    recorded: tuple[Evidence, ...],
    replayed: tuple[Evidence, ...],
    tolerances: dict[str, float] | None,
    *,
    full: bool,
) -> list[Difference]:
    """Evidence compared by indicator: values within the unit's tolerance; with ``full`` every field exactly."""
    old = {_evidence_key(e): e for e in recorded}
    new = {_evidence_key(e): e for e in replayed}
    out: list[Difference] = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            out.append(Difference("evidence", key, a.value if a else None, b.value if b else None))
            continue
        if _is_number(a.value) and _is_number(b.value):
            tol = tolerance_for(UNIT_SUFFIX.get(a.unit, a.indicator), tolerances)
            delta = float(b.value) - float(a.value)
            if abs(delta) > tol:
                out.append(Difference("evidence", f"{key} ({a.name})", a.value, b.value, delta, tol))
        elif a.value != b.value:
            out.append(Difference("evidence", f"{key} ({a.name})", a.value, b.value))
        skip = {"value"} if full else {"value", "input_sha256", "artifacts"}
        da, db = a.model_dump(mode="json", exclude=skip), b.model_dump(mode="json", exclude=skip)
        out += compare_json(da, db, key, kind="evidence")
    return out


def _diff_diagnosis(
    recorded: Diagnosis | None, replayed: Diagnosis | None, *, rationale: bool
) -> list[Difference]:
    """Label, confidence, citations, flags and every verdict; the rationale too when asked."""
    if recorded is None or replayed is None:
        if recorded is replayed:
            return []
        return [
            Difference(
                "label",
                "diagnosis",
                recorded.label if recorded else None,
                replayed.label if replayed else None,
            )
        ]
    out: list[Difference] = []
    if recorded.label != replayed.label:
        out.append(Difference("label", "", recorded.label, replayed.label))
    delta = replayed.confidence - recorded.confidence
    if abs(delta) > DEFAULT_TOLERANCES["confidence"]:
        tol = DEFAULT_TOLERANCES["confidence"]
        out.append(Difference("confidence", "", recorded.confidence, replayed.confidence, delta, tol))
    for name in ("abstained", "cited_evidence", "flags", "model_label", "aggregator"):
        a, b = getattr(recorded, name), getattr(replayed, name)
        if a != b:
            out.append(Difference("diagnosis", name, a, b))
    if rationale and recorded.rationale != replayed.rationale:
        out.append(Difference("rationale", "rationale", recorded.rationale, replayed.rationale))
    old = {c.criteria_id: c for c in recorded.criteria}
    new = {c.criteria_id: c for c in replayed.criteria}
    for cid in dict.fromkeys([*old, *new]):
        ca, cb = old.get(cid), new.get(cid)
        if ca is None or cb is None:
            out.append(Difference("verdict", cid, ca.label if ca else None, cb.label if cb else None))
            continue
        if (ca.label, ca.satisfied) != (cb.label, cb.satisfied):
            out.append(
                Difference("verdict", cid, f"{ca.label} ({ca.satisfied})", f"{cb.label} ({cb.satisfied})")
            )
        ia = {i.indicator: i for i in ca.indicators}
        ib = {i.indicator: i for i in cb.indicators}
        for ind in dict.fromkeys([*ia, *ib]):
            va, vb = ia.get(ind), ib.get(ind)
            fa, fb = (va.finding if va else None), (vb.finding if vb else None)
            if fa != fb:
                out.append(Difference("verdict", f"{cid}.{ind}", fa, fb))
            elif (
                va is not None and vb is not None and (va.rule, va.evidence_ids) != (vb.rule, vb.evidence_ids)
            ):
                out.append(
                    Difference(
                        "verdict",
                        f"{cid}.{ind} (rule, evidence)",
                        (va.rule, va.evidence_ids),
                        (vb.rule, vb.evidence_ids),
                    )
                )
    return out


def _diff_criteria(
    recorded: CriteriaRetrieved | None, replayed: CriteriaRetrieved | None
) -> list[Difference]:
    a = [(d.id, d.version, d.sha256) for d in recorded.documents] if recorded else []
    b = [(d.id, d.version, d.sha256) for d in replayed.documents] if replayed else []
    if a != b:
        return [Difference("criteria", "retrieved documents", a, b)]
    out: list[Difference] = []
    for da, db in zip(
        recorded.documents if recorded else (), replayed.documents if replayed else (), strict=True
    ):
        if da.method != db.method:
            out.append(Difference("criteria", f"{da.id} retrieval method", da.method, db.method))
        elif abs(da.score - db.score) > DEFAULT_TOLERANCES["score"]:
            out.append(
                Difference("criteria", f"{da.id} score", da.score, db.score, db.score - da.score, 1e-6)
            )
    return out


# -- the replaying tool registry and language model ----------------------------------------------


def _replaying_registry(rec: _Record, base: ToolRegistry, diffs: list[Difference]) -> ToolRegistry:
    """The run's tools (by name, recorded version) whose calls answer from the record, matched by inputs."""
    from dxgraph.tools._registry import ToolRegistry

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
        reg.register(
            dataclasses.replace(
                spec,
                version=version,
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


def reply_text(backend: str, response: Any) -> str:
    """The reply text inside a recorded raw response: OpenAI ``choices[0].message.content``, else ``text``."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        if "choices" in response:
            content = response["choices"][0]["message"]["content"]
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
        if "text" in response:
            text = str(response["text"])
            return text.strip() if backend == "transformers" else text
    raise StoreError(f"cannot find the reply text in a recorded {backend} response")


def _request_texts(raw: Any) -> list[str]:
    """The message texts of a raw request, whatever the backend's format."""
    if not isinstance(raw, dict):
        return []
    texts = [str(raw["prompt"])] if isinstance(raw.get("prompt"), str) else []
    for m in raw.get("messages") or []:
        if not isinstance(m, dict):
            continue
        if isinstance(m.get("text"), str):
            texts.append(m["text"])
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [str(p.get("text")) for p in content if isinstance(p, dict) and p.get("text")]
    return texts


class ReplayChat:
    """A chat backend answering with a run's recorded replies, in order; checks the requests it gets."""

    def __init__(self, ref: LanguageModelRef, calls: list[ModelCalled], diffs: list[Difference]) -> None:
        self.name = ref.backend
        """Backend kind, as recorded."""
        self.model_id = ref.model
        """Model id, as recorded."""
        self.model_sha256 = ref.sha256
        """Weights hash, as recorded."""
        self.accepts_images = any(c.image_sha256 for c in calls)
        """Whether the recorded run sent images."""
        self.calls = calls
        """The recorded exchanges, in order."""
        self.diffs = diffs
        """Where request mismatches go."""
        self.n_asked = 0
        """Requests answered so far."""

    def complete(self, request: ChatRequest) -> ChatReply:
        """The next recorded reply (or its recorded error)."""
        i = self.n_asked
        self.n_asked += 1
        if i >= len(self.calls):
            self.diffs.append(Difference("model", f"call {i + 1}", None, request.purpose))
            raise ModelError("replay: the recorded run made no further model call")
        call = self.calls[i]
        where = f"call {i + 1} ({call.purpose})"
        if call.purpose != request.purpose:
            self.diffs.append(Difference("model", f"{where} purpose", call.purpose, request.purpose))
        recorded_text = "\n".join(_request_texts(call.request))
        for m in request.messages:
            if m.text.strip() and m.text.strip() not in recorded_text:
                self.diffs.append(Difference("model", f"{where} {m.role} message", "(recorded text)", m.text))
        if call.status == "error":
            raise ModelError(
                call.error or "model error", raw_request=call.request, latency_ms=call.latency_ms
            )
        return ChatReply(
            text=reply_text(call.backend, call.response),
            model=call.model,
            latency_ms=call.latency_ms,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            structured_output=call.structured_output,
            raw_request=call.request,
            raw_response=call.response,
            attempts=call.attempts,
        )


# -- running -----------------------------------------------------------------------------------


def _device(recorded: str) -> str:
    from dxgraph.tools._torch_runtime import pick_device

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
    registry: ToolRegistry,
    library: tuple[LoadedCriteria, ...],
    arts: StoreBackedArtifacts,
    backend: ChatBackend | None,
) -> _Rerun:
    """The run graph on the recorded case, in memory, with the recorded header's settings."""
    from dxgraph.agent.run import make_aggregator
    from dxgraph.planners._graph import RunDeps, build_graph
    from dxgraph.tools._context import ToolContext
    from dxgraph.traces._recorder import TraceRecorder

    h = rec.header
    recorder = TraceRecorder(run_id=rec.run_id, artifacts=arts)
    chat = TracedChat(backend, recorder) if backend is not None else None
    agg = make_aggregator(h.aggregator, h.seed, chat)
    recorder.emit(RunStarted, header=h, case=rec.case)
    graph = build_graph(
        RunDeps(
            registry=registry,
            recorder=recorder,
            aggregator=agg,
            tool_context=ToolContext(artifacts=arts, seed=h.seed, device=_device(h.device)),
            library=library,
            prefer=tuple(t for t in h.preferred_tools if t in registry),
            planner_chat=chat if h.planner == "llm" else None,
        )
    )
    try:
        state = graph.invoke({"case": rec.case})
    except DxgraphError as e:
        return _Rerun(recorder.events, None, (), f"{type(e).__name__}: {e}")
    return _Rerun(recorder.events, state.get("diagnosis"), tuple(state.get("evidence") or ()), None)


def _first(events: list[Event], kind: type[Any]) -> Any:
    return next((e for e in events if isinstance(e, kind)), None)


def _stored_library(store: TraceStore, rec: _Record) -> tuple[LoadedCriteria, ...]:
    from dxgraph.criteria_kb import parse_document

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


def _replay_recorded(
    store: TraceStore, rec: _Record, registry: ToolRegistry | None, tolerances: dict[str, float] | None
) -> tuple[list[Difference], _Rerun]:
    diffs: list[Difference] = []
    arts = StoreBackedArtifacts(store)
    library = _stored_library(store, rec)
    base = registry if registry is not None else _default_registry()
    reg = _replaying_registry(rec, base, diffs)
    h = rec.header
    if h.aggregator != "rules" or h.planner == "llm":
        if h.language_model is None:
            raise StoreError(
                f"run {rec.run_id} used aggregator {h.aggregator!r} but recorded no language model"
            )
        backend: ChatBackend | None = ReplayChat(h.language_model, rec.model_calls, diffs)
    else:
        backend = None
    rerun = _run_graph(rec, reg, library, arts, backend)
    if rerun.error:
        diffs.append(Difference("run", "replay", "completed", rerun.error))
    diffs += _diff_criteria(rec.criteria, _first(rerun.events, CriteriaRetrieved))
    new_plan = _first(rerun.events, PlanMade)
    diffs += compare_json(
        rec.plan.model_dump(mode="json", include={"plan", "fallback_reason"}) if rec.plan else None,
        new_plan.model_dump(mode="json", include={"plan", "fallback_reason"}) if new_plan else None,
        "plan",
        kind="plan",
    )
    diffs += _diff_tool_calls(
        rec.tool_calls, [e for e in rerun.events if isinstance(e, ToolCalled)], tolerances
    )
    diffs += _diff_model_calls(rec.model_calls, [e for e in rerun.events if isinstance(e, ModelCalled)])
    rec_ev = rec.diagnosis.evidence if rec.diagnosis else ()
    diffs += _diff_evidence(rec_ev, rerun.evidence, tolerances, full=True)
    diffs += _diff_diagnosis(
        rec.diagnosis.diagnosis if rec.diagnosis else None, rerun.diagnosis, rationale=True
    )
    return diffs, rerun


def _diff_tool_calls(
    old: list[ToolCalled], new: list[ToolCalled], tolerances: dict[str, float] | None
) -> list[Difference]:
    out: list[Difference] = []
    fields = {"step_id", "tool", "tool_version", "status", "inputs", "outputs", "error", "quality_flags"}
    if len(old) != len(new):
        out.append(Difference("tool_output", "number of tool calls", len(old), len(new)))
    for a, b in zip(old, new, strict=False):
        out += compare_json(
            a.model_dump(mode="json", include=fields),
            b.model_dump(mode="json", include=fields),
            f"{a.step_id} ({a.tool})",
            tolerances=tolerances,
        )
    return out


def _diff_model_calls(old: list[ModelCalled], new: list[ModelCalled]) -> list[Difference]:
    out: list[Difference] = []
    if len(old) != len(new):
        out.append(Difference("model", "number of model calls", len(old), len(new)))
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        for name in ("purpose", "status", "error", "image_sha256"):
            if getattr(a, name) != getattr(b, name):
                out.append(
                    Difference(
                        "model", f"call {i + 1} ({a.purpose}) {name}", getattr(a, name), getattr(b, name)
                    )
                )
    return out


def _replay_tools(
    store: TraceStore, rec: _Record, registry: ToolRegistry | None, tolerances: dict[str, float] | None
) -> tuple[list[Difference], int]:
    from dxgraph.tools._context import ToolContext, tool_context

    diffs: list[Difference] = []
    reg = registry if registry is not None else _default_registry()
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
) -> tuple[list[Difference], _Rerun]:
    from dxgraph.criteria_kb import criteria_library

    h = rec.header
    needs_model = h.aggregator != "rules" or h.planner == "llm"
    if needs_model and language_model is None:
        lm = h.language_model
        model = f"{lm.backend} model {lm.model}" if lm else "a language model"
        raise UserError(
            f"run {rec.run_id} consulted {model} (aggregator {h.aggregator}, planner {h.planner}); "
            "a live replay needs that model: pass a language model (--base-url or --model-path)"
        )
    reg = registry if registry is not None else _default_registry()
    diffs: list[Difference] = []
    rerun = _run_graph(
        rec, reg, criteria_library(), StoreBackedArtifacts(store), language_model if needs_model else None
    )
    if rerun.error:
        diffs.append(Difference("run", "replay", "completed", rerun.error))
    diffs += _diff_criteria(rec.criteria, _first(rerun.events, CriteriaRetrieved))
    new_calls = {c.step_id: c for c in rerun.events if isinstance(c, ToolCalled)}
    for call in rec.tool_calls:
        now = new_calls.get(call.step_id)
        now_tool = (now.tool, now.tool_version) if now else None
        if now_tool != (call.tool, call.tool_version):
            diffs.append(Difference("tool_version", call.step_id, (call.tool, call.tool_version), now_tool))
    rec_ev = rec.diagnosis.evidence if rec.diagnosis else ()
    diffs += _diff_evidence(rec_ev, rerun.evidence, tolerances, full=False)
    diffs += _diff_diagnosis(
        rec.diagnosis.diagnosis if rec.diagnosis else None, rerun.diagnosis, rationale=False
    )
    return diffs, rerun


def _default_registry() -> ToolRegistry:
    from dxgraph.tools import default_registry

    return default_registry


def replay(
    store: TraceStore,
    run_id: str,
    mode: Mode,
    *,
    registry: ToolRegistry | None = None,
    tolerances: dict[str, float] | None = None,
    language_model: ChatBackend | None = None,
) -> ReplayResult:
    """Replay a stored run in ``mode`` and report what differs; nothing is written to the store.

    ``registry`` replaces the default tool registry (``recorded`` mode takes only the tools' input and
    output models from it); ``tolerances`` override ``DEFAULT_TOLERANCES`` by field-name suffix;
    ``language_model`` is the backend a ``live`` replay of a model-backed run consults.
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
            diffs, rerun = _replay_live(store, rec, registry, tolerances, language_model)
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
