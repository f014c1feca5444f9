"""A stored run rendered to one self-contained HTML page: images with overlays, evidence, decision."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from dxgraph.core import ArtifactRef, Plan, StepOutput, artifact_refs_in, load_array
from dxgraph.criteria_kb import CriteriaDocument, packaged_criteria, parse_document
from dxgraph.traces._events import (
    CriteriaRetrieved,
    DiagnosisMade,
    ModelCalled,
    PlanMade,
    PlanRevised,
    RunFinished,
    RunStarted,
    ToolCalled,
)
from dxgraph.traces._report_figures import (  # noqa: F401  (re-exported: the report's figure API)
    DISPLAY_MAX_PX,
    PALETTE,
    Figure,
    Overlay,
    build_figure_rows,
    build_figures,
    representative_slice,
)
from dxgraph.traces._report_figures import data_url as _data_url
from dxgraph.traces._report_figures import display_rgb as _display_rgb
from dxgraph.traces._report_figures import outline as _outline  # noqa: F401
from dxgraph.traces._show import summarize
from dxgraph.traces._store import TraceStore

THUMB_PX = 160
"""Longest side of the thumbnails of masks and crops beside a tool call."""
SHORT_HASH = 12
"""Hex digits of a sha256 shown where the full hash would not fit."""


def _criteria_docs(
    store: TraceStore, retrieved: CriteriaRetrieved | None
) -> list[tuple[Any, CriteriaDocument | None]]:
    """Each retrieved document: from the bytes stored with the run, else the packaged copy with that hash."""
    if retrieved is None:
        return []
    known = {(c.document.id, c.sha256): c.document for c in packaged_criteria()}
    out = []
    for d in retrieved.documents:
        doc = known.get((d.id, d.sha256))
        try:
            data = store.get_bytes(d.sha256)
        except KeyError:
            data = None
        if data is not None and hashlib.sha256(data).hexdigest() == d.sha256:
            doc = parse_document(data, f"{d.id} (stored with the run)").document
        out.append((d, doc))
    return out


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _model_images(store: TraceStore, ev: ModelCalled) -> list[str]:
    """The images sent to a model, as data URLs (only those whose bytes still match their hash)."""
    out = []
    for digest in ev.image_sha256:
        try:
            data = store.get_bytes(digest)
        except KeyError:
            continue
        if hashlib.sha256(data).hexdigest() == digest:
            out.append("data:image/png;base64," + base64.b64encode(data).decode())
    return out


@dataclass
class DagNode:
    """A plan step drawn as a box."""

    order: int
    step_id: str
    tool: str
    tool_version: str
    status: str
    x: float
    y: float
    w: float
    h: float


@dataclass
class DagEdge:
    """A dependency between two steps: the output fields one step reads from another."""

    path: str
    label: str
    label_x: float
    label_y: float


@dataclass
class PlanDag:
    """The plan as a layered drawing: layer = longest chain of dependencies before a step."""

    width: float
    height: float
    nodes: list[DagNode]
    edges: list[DagEdge]


DAG_BOX_H, DAG_GAP_X, DAG_GAP_Y, DAG_PAD = 56.0, 90.0, 22.0, 12.0
"""Box height, least gap between layers (wider for long edge labels), gap within a layer, margin, in px."""


def plan_dag(plan: Plan, statuses: dict[str, str] | None = None) -> PlanDag:
    """Steps as boxes in columns by dependency depth, in execution order within a column; edges per binding."""
    statuses = statuses or {}
    deps: dict[str, dict[str, set[str]]] = {}  # step -> upstream step -> fields read
    layer: dict[str, int] = {}
    for s in plan.steps:
        deps[s.step_id] = {}
        for binding in s.inputs.values():
            if isinstance(binding, StepOutput):
                deps[s.step_id].setdefault(binding.step_id, set()).add(binding.field)
        layer[s.step_id] = 1 + max((layer[d] for d in deps[s.step_id] if d in layer), default=-1)
    labels = {(sid, up): ", ".join(sorted(fields)) for sid, ups in deps.items() for up, fields in ups.items()}
    n_layers = max(layer.values(), default=-1) + 1
    columns: list[list[str]] = [[sid for sid in layer if layer[sid] == i] for i in range(n_layers)]
    longest = max((len(f"{s.tool} {s.tool_version}") for s in plan.steps), default=10)
    w = max(150.0, 7.3 * longest + 20)
    gap_x = max(DAG_GAP_X, 6.6 * max(map(len, labels.values()), default=0) + 30)
    tallest = max((len(c) for c in columns), default=0)
    height = 2 * DAG_PAD + tallest * DAG_BOX_H + max(tallest - 1, 0) * DAG_GAP_Y
    width = 2 * DAG_PAD + n_layers * w + max(n_layers - 1, 0) * gap_x
    nodes: dict[str, DagNode] = {}
    for i, column in enumerate(columns):
        col_h = len(column) * DAG_BOX_H + (len(column) - 1) * DAG_GAP_Y
        top = (height - col_h) / 2
        for j, sid in enumerate(column):
            st = plan.step(sid)
            nodes[sid] = DagNode(
                order=[s.step_id for s in plan.steps].index(sid) + 1,
                step_id=sid,
                tool=st.tool,
                tool_version=st.tool_version,
                status=statuses.get(sid, "not run"),
                x=DAG_PAD + i * (w + gap_x),
                y=top + j * (DAG_BOX_H + DAG_GAP_Y),
                w=w,
                h=DAG_BOX_H,
            )
    edges = []
    for (sid, up), label in labels.items():
        if up not in nodes:
            continue
        src, dst = nodes[up], nodes[sid]
        x1, y1, x2, y2 = src.x + src.w, src.y + src.h / 2, dst.x - 2, dst.y + dst.h / 2
        mx = (x1 + x2) / 2
        path = f"M{x1:.1f},{y1:.1f} C{mx:.1f},{y1:.1f} {mx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
        edges.append(DagEdge(path, label, mx, (y1 + y2) / 2 - 4))
    return PlanDag(width, height, [nodes[s.step_id] for s in plan.steps], edges)


@dataclass
class Thumbnail:
    """A small picture of an artifact a tool read or wrote."""

    label: str
    short_hash: str
    data_url: str | None
    note: str = ""


@dataclass
class CallDetail:
    """A tool call's inputs and outputs, for the collapsible panel under the call."""

    inputs: str
    outputs: str
    thumbnails: list[Thumbnail]


def _short_refs(obj: Any) -> Any:
    """JSON with every artifact reference replaced by its kind, short hash and shape."""
    if isinstance(obj, dict):
        if isinstance(obj.get("sha256"), str) and "media_type" in obj:
            shape = "×".join(str(n) for n in obj.get("shape") or ())
            return f"{obj.get('kind', 'array')} sha256:{obj['sha256'][:SHORT_HASH]} [{shape}]"
        return {k: _short_refs(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_short_refs(v) for v in obj]
    return obj


def _thumbnail(store: TraceStore, ref: ArtifactRef, cache: dict[str, str | None]) -> str | None:
    """A PNG data URL of a mask or crop at most THUMB_PX on a side; None when it is not an image."""
    if ref.sha256 in cache:
        return cache[ref.sha256]
    import cv2

    url = None
    try:
        arr = load_array(store, ref)
    except (KeyError, ValueError):
        arr = None
    if arr is not None and arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr is not None and arr.ndim in (3, 4):
        arr = representative_slice(arr)  # where a mask covers most, or the middle of an image volume
    if (
        arr is not None
        and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3))
        and min(arr.shape[:2]) > 0
    ):
        rgb = _display_rgb(arr)
        h, w = rgb.shape[:2]
        scale = min(1.0, THUMB_PX / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        url = _data_url(rgb, ".png")
    cache[ref.sha256] = url
    return url


def call_detail(store: TraceStore, call: ToolCalled, cache: dict[str, str | None]) -> CallDetail:
    """Pretty-printed inputs and outputs of a call (artifacts as short hashes) and thumbnails of its masks/crops."""
    thumbs: list[Thumbnail] = []
    seen: set[str] = set()
    for side, data in (("in", call.inputs), ("out", call.outputs or {})):
        for name, value in data.items():
            for ref in artifact_refs_in(value):
                if ref.kind not in ("mask", "crop") or ref.sha256 in seen:
                    continue
                seen.add(ref.sha256)
                url = _thumbnail(store, ref, cache)
                note = "" if url else "not shown (artifact missing or not an image)"
                thumbs.append(Thumbnail(f"{side}: {name}", ref.sha256[:SHORT_HASH], url, note))
    outputs = _pretty(_short_refs(call.outputs)) if call.outputs is not None else "—"
    return CallDetail(_pretty(_short_refs(call.inputs)), outputs, thumbs)


def render_report(store: TraceStore, run_id: str) -> str:
    """The run as a self-contained HTML page (images embedded, no external resources)."""
    import jinja2

    events = store.events(run_id)
    check = store.verify(run_id)
    started = next(e for e in events if isinstance(e, RunStarted))
    calls = [e for e in events if isinstance(e, ToolCalled)]
    plan_made = next((e for e in events if isinstance(e, PlanMade)), None)
    revised = [e for e in events if isinstance(e, PlanRevised)]
    plan = revised[-1].plan if revised else plan_made.plan if plan_made else None
    made = next((e for e in events if isinstance(e, DiagnosisMade)), None)
    finished = next((e for e in events if isinstance(e, RunFinished)), None)
    retrieved = next((e for e in events if isinstance(e, CriteriaRetrieved)), None)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dxgraph.traces", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    evidence = {e.evidence_id: e for e in made.evidence} if made else {}
    thumb_cache: dict[str, str | None] = {}
    return env.get_template("report.html.j2").render(
        run_id=store.resolve_run_id(run_id),
        started=started,
        header=started.header,
        case=started.case,
        figure_rows=build_figure_rows(store, started, calls),
        calls=calls,
        plan=plan,
        plan_dag=plan_dag(plan, {c.step_id: c.status for c in calls}) if plan else None,
        call_details={c.step_id: call_detail(store, c, thumb_cache) for c in calls},
        short=SHORT_HASH,
        plan_fallback=plan_made.fallback_reason if plan_made else None,
        model_calls=[
            (e, _model_images(store, e), _pretty(e.request), _pretty(e.response))
            for e in events
            if isinstance(e, ModelCalled)
        ],
        diagnosis=made.diagnosis if made else None,
        evidence=evidence,
        finished=finished,
        check=check,
        criteria_docs=_criteria_docs(store, retrieved),
        events=[(e, summarize(e)) for e in events],
    )
