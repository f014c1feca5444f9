"""A stored run rendered to one self-contained HTML page: images with overlays, evidence, decision."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dxgraph.criteria_kb import CriteriaDocument, packaged_criteria, parse_document
from dxgraph.traces._artifacts import ArtifactRef, load_array
from dxgraph.traces._events import (
    CriteriaRetrieved,
    DiagnosisMade,
    ModelCalled,
    PlanMade,
    RunFinished,
    RunStarted,
    ToolCalled,
)
from dxgraph.traces._show import summarize
from dxgraph.traces._store import TraceStore

DISPLAY_MAX_PX = 960
"""Longest side of images shown in the report."""
PALETTE = ("#22c55e", "#3b82f6", "#f59e0b", "#ef4444", "#a855f7", "#14b8a6")


@dataclass
class Overlay:
    """A mask's outline, as SVG path data in display coordinates."""

    label: str
    color: str
    path: str


@dataclass
class Figure:
    """An image shown in the report, with outlines drawn over it."""

    title: str
    data_url: str
    width: int
    height: int
    overlays: list[Overlay] = field(default_factory=list)


def _display_rgb(arr: np.ndarray) -> np.ndarray:
    from dxgraph.tools._context import as_rgb8

    if arr.ndim == 3 and arr.shape[2] not in (3,):
        arr = arr[arr.shape[0] // 2]  # middle slice of a volume
    elif arr.ndim == 4:
        arr = arr[0, arr.shape[1] // 2]
    return as_rgb8(arr)


def _data_url(rgb: np.ndarray, fmt: str = ".jpg") -> str:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    mime = "image/jpeg" if fmt == ".jpg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode()}"


def _outline(mask: np.ndarray, scale: float, dx: float = 0.0, dy: float = 0.0) -> str:
    """SVG path data of a mask's outer contours, scaled and shifted."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = []
    for c in contours:
        pts = c[:, 0, :].astype(float)
        pts = (pts + 0.5) * scale + np.array([dx, dy])
        parts.append("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts) + " Z")
    return " ".join(parts)


def _masks(calls: list[ToolCalled]) -> list[tuple[str, ArtifactRef]]:
    """(step.field label, mask ref) for every mask a tool produced."""
    out = []
    for c in calls:
        for name, v in (c.outputs or {}).items():
            if isinstance(v, dict) and v.get("kind") == "mask":
                out.append((f"{name} ({c.step_id} {c.tool})", ArtifactRef.model_validate(v)))
    return out


def build_figures(store: TraceStore, started: RunStarted, calls: list[ToolCalled]) -> list[Figure]:
    """The case images with mask outlines, then every crop with the same outlines mapped into it."""
    figures = []
    masks = _masks(calls)
    loaded = {ref.sha256: load_array(store, ref) for _, ref in masks}
    for im in started.case.images:
        rgb = _display_rgb(load_array(store, im.pixels))
        h, w = rgb.shape[:2]
        scale = min(1.0, DISPLAY_MAX_PX / max(h, w))
        if scale < 1.0:
            import cv2

            rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        fig = Figure(f"{im.image_id}: {im.file_name}", _data_url(rgb), rgb.shape[1], rgb.shape[0])
        for i, (label, ref) in enumerate(masks):
            if tuple(ref.shape) == tuple(im.shape[:2]):
                fig.overlays.append(
                    Overlay(label, PALETTE[i % len(PALETTE)], _outline(loaded[ref.sha256], scale))
                )
        figures.append(fig)
        for c in calls:
            out = c.outputs or {}
            crop = out.get("crop")
            if (
                c.status != "ok"
                or not isinstance(crop, dict)
                or c.inputs.get("image", {}).get("image_id") != im.image_id
            ):
                continue
            crop_rgb = load_array(store, ArtifactRef.model_validate(crop))
            x0, y0, _, _ = out["box_xyxy"]
            mag = float(out["magnification"])
            cfig = Figure(
                f"{c.step_id} {c.tool}: {out.get('label', '')} ×{mag:.2f}",
                _data_url(crop_rgb, ".png"),
                crop_rgb.shape[1],
                crop_rgb.shape[0],
            )
            for i, (label, ref) in enumerate(masks):
                if tuple(ref.shape) == tuple(im.shape[:2]):
                    path = _outline(loaded[ref.sha256], mag, -x0 * mag, -y0 * mag)
                    cfig.overlays.append(Overlay(label, PALETTE[i % len(PALETTE)], path))
            figures.append(cfig)
    return figures


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


def render_report(store: TraceStore, run_id: str) -> str:
    """The run as a self-contained HTML page (images embedded, no external resources)."""
    import jinja2

    events = store.events(run_id)
    check = store.verify(run_id)
    started = next(e for e in events if isinstance(e, RunStarted))
    calls = [e for e in events if isinstance(e, ToolCalled)]
    plan_made = next((e for e in events if isinstance(e, PlanMade)), None)
    plan = plan_made.plan if plan_made else None
    made = next((e for e in events if isinstance(e, DiagnosisMade)), None)
    finished = next((e for e in events if isinstance(e, RunFinished)), None)
    retrieved = next((e for e in events if isinstance(e, CriteriaRetrieved)), None)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dxgraph.traces", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    evidence = {e.evidence_id: e for e in made.evidence} if made else {}
    return env.get_template("report.html.j2").render(
        run_id=store.resolve_run_id(run_id),
        started=started,
        header=started.header,
        case=started.case,
        figures=build_figures(store, started, calls),
        calls=calls,
        plan=plan,
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
