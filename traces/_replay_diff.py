"""What a replay compares, and how: tolerances by unit, JSON outputs field by field, evidence, verdicts,
the diagnosis, criteria, tool and model calls. Each mismatch is a :class:`Difference`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dxgraph.core import ArtifactRef, Diagnosis, Evidence, MemoryArtifacts, decode_array
from dxgraph.traces._events import CriteriaRetrieved, ModelCalled, ToolCalled
from dxgraph.traces._store import TraceStore


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


def evidence_key(e: Evidence) -> str:
    """The decisive evidence of an indicator by ``criteria.indicator``; a measurement another replaced
    (combined, or out of domain) by that and its own id."""
    key = f"{e.criteria_id}.{e.indicator}"
    return key if e.superseded_by is None else f"{key}[{e.evidence_id}]"


def diff_evidence(
    recorded: tuple[Evidence, ...],
    replayed: tuple[Evidence, ...],
    tolerances: dict[str, float] | None,
    *,
    full: bool,
) -> list[Difference]:
    """Evidence compared by indicator: values within the unit's tolerance; with ``full`` every field exactly."""
    old = {evidence_key(e): e for e in recorded}
    new = {evidence_key(e): e for e in replayed}
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
        skip = {"value", "method"} if full else {"value", "method", "input_sha256", "artifacts"}
        da, db = a.model_dump(mode="json", exclude=skip), b.model_dump(mode="json", exclude=skip)
        out += compare_json(da, db, key, kind="evidence")
    return out


def diff_diagnosis(
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


def diff_criteria(recorded: CriteriaRetrieved | None, replayed: CriteriaRetrieved | None) -> list[Difference]:
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


def diff_tool_calls(
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


def diff_model_calls(old: list[ModelCalled], new: list[ModelCalled]) -> list[Difference]:
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
