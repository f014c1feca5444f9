"""The report's figures: each case image (a 2D picture, the telling slice of a volume, ED/ES frames of a cine)
with the outlines of the masks the tools produced for it, priors beside the current study."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dxgraph.core import ArtifactRef, ArtifactStore, CaseImage, artifact_refs_in, load_array
from dxgraph.imaging import as_rgb8
from dxgraph.traces._events import RunStarted, ToolCalled

DISPLAY_MAX_PX = 960
"""Longest side of images shown in the report."""
SLICE_MIN_PX = 384
"""Slices of volumes smaller than this on their longest side are enlarged to it."""
PALETTE = ("#22c55e", "#3b82f6", "#f59e0b", "#ef4444", "#a855f7", "#14b8a6")
PRIOR_PREFIXES = ("baseline_", "prior_")
"""Output field prefixes of masks that belong to the earlier study."""
CURRENT_PREFIXES = ("followup_", "follow_up_", "current_")
"""Output field prefixes of masks that belong to the current study."""
LUNG_WINDOW_HU = (-1350.0, 150.0)
"""Lung window (level -600, width 1500 HU), for CT volumes that are mostly air."""
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)
"""Soft-tissue window (level 40, width 400 HU)."""
AIR_HU = -400.0
"""Voxels below this count as air or lung when choosing a CT window."""
PERCENTILES = (1.0, 99.0)
"""Display range of volumes without a known intensity scale."""


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
    caption: list[str] = field(default_factory=list)
    """Further caption lines: which slice or frame, the display window, masks that could not be drawn."""
    image_id: str = ""
    """The case image shown (empty for crops)."""
    timepoint: str = ""
    """``current`` or ``prior`` for case images."""
    slice_index: int | None = None
    """Axial slice shown, for volumes."""
    frame_index: int | None = None
    """Time frame shown, for cines."""


@dataclass
class _Mask:
    """A mask a tool produced, loaded, with the images it belongs to."""

    label: str
    """Legend text: output field, step and tool."""
    output_field: str
    """The tool output field holding it."""
    ref: ArtifactRef
    """Where it is stored."""
    array: np.ndarray
    """Its voxels (bool, or integer labels)."""
    color_index: int
    """Index into PALETTE of its (first label's) colour."""
    image_ids: list[str] = field(default_factory=list)
    """The case images it is drawn on."""


def data_url(rgb: np.ndarray, fmt: str = ".jpg") -> str:
    """An RGB array as a JPEG or PNG data URL."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    mime = "image/jpeg" if fmt == ".jpg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode()}"


def outline(mask: np.ndarray, scale: float | tuple[float, float], dx: float = 0.0, dy: float = 0.0) -> str:
    """SVG path data of a 2D mask's outer contours, scaled (one factor, or (x, y) factors) and shifted."""
    import cv2

    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = []
    for c in contours:
        pts = c[:, 0, :].astype(float)
        pts = (pts + 0.5) * np.array([sx, sy]) + np.array([dx, dy])
        parts.append("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts) + " Z")
    return " ".join(parts)


def display_rgb(arr: np.ndarray) -> np.ndarray:
    """8-bit RGB of a 2D image; volumes show their middle slice (of the first frame)."""
    if arr.ndim == 3 and arr.shape[2] not in (3,):
        arr = arr[arr.shape[0] // 2]
    elif arr.ndim == 4:
        arr = arr[0, arr.shape[1] // 2]
    return as_rgb8(arr)


def representative_slice(arr: np.ndarray) -> np.ndarray:
    """A 2D view of a mask or image: itself, or the slice (of the frame) where it covers most."""
    if arr.ndim == 4:
        arr = arr[int(np.argmax(_per_leading(arr != 0)))]
    if arr.ndim == 3 and arr.shape[2] != 3:
        nonzero = arr != 0
        arr = arr[int(np.argmax(_per_leading(nonzero)))] if nonzero.any() else arr[arr.shape[0] // 2]
    return arr


def _per_leading(arr: np.ndarray) -> np.ndarray:
    """Count of true values per index of the first axis."""
    return arr.reshape(arr.shape[0], -1).sum(axis=1)


# -- which image a mask belongs to --------------------------------------------------------------


def _spatial_match(mask_shape: tuple[int, ...], im: CaseImage) -> bool:
    if im.dims == "2d":
        return mask_shape == tuple(im.shape[:2])
    return mask_shape == tuple(im.shape)


def _field_timepoint(name: str) -> str | None:
    """``prior`` or ``current`` when an output field's name says which study it belongs to."""
    low = name.lower()
    if low.startswith(PRIOR_PREFIXES):
        return "prior"
    if low.startswith(CURRENT_PREFIXES):
        return "current"
    return None


def image_ids_in(obj: Any) -> list[str]:
    """Image ids of the image references inside a tool's inputs, in order."""
    if isinstance(obj, dict):
        if isinstance(obj.get("image_id"), str) and isinstance(obj.get("pixels"), dict):
            return [obj["image_id"]]
        return [i for v in obj.values() for i in image_ids_in(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in image_ids_in(v)]
    return []


def collect_masks(
    store: ArtifactStore, images: tuple[CaseImage, ...], calls: list[ToolCalled]
) -> list[_Mask]:
    """Every mask the successful calls produced, each with the case images it is drawn on.

    Candidates are the images of the mask's shape; an output named ``baseline_*``/``prior_*`` (or
    ``followup_*``/``current_*``) keeps those of that study; then those the tool took as input (directly, or
    through a mask drawn on them), with none, every candidate; last, where the output's name mentions the
    sequence of some of them (``flair_lesion_mask``), those.
    """
    masks: list[_Mask] = []
    by_sha: dict[str, list[str]] = {}
    loaded: dict[str, np.ndarray] = {}
    colors = 0
    for c in calls:
        if c.status != "ok":
            continue
        taken = image_ids_in(c.inputs)
        for ref in artifact_refs_in(c.inputs):
            taken += by_sha.get(ref.sha256, [])
        for name, value in (c.outputs or {}).items():
            for ref in artifact_refs_in(value):
                if ref.kind != "mask" or ref.sha256 in by_sha:  # a mask passed on is drawn once
                    continue
                try:
                    arr = loaded.get(ref.sha256)
                    if arr is None:
                        arr = loaded[ref.sha256] = load_array(store, ref)
                except (KeyError, ValueError):
                    continue
                cands = [im for im in images if _spatial_match(tuple(arr.shape), im)]
                tp = _field_timepoint(name)
                if tp is not None:
                    cands = [im for im in cands if im.timepoint == tp]
                ids = _chosen(name, cands, taken)
                labels = _labels(arr)
                masks.append(_Mask(f"{name} ({c.step_id} {c.tool})", name, ref, arr, colors, ids))
                colors += max(1, len(labels))
                by_sha[ref.sha256] = ids
    return masks


def _chosen(name: str, cands: list[CaseImage], taken: list[str]) -> list[str]:
    """Ids of the candidate images a mask output is drawn on (see ``collect_masks``)."""
    took = [im for im in cands if im.image_id in taken]
    chosen = took or cands
    words = set(name.lower().split("_"))
    named = [im for im in chosen if im.sequence and im.sequence.lower() in words]
    return [im.image_id for im in (named or chosen)]


def _labels(arr: np.ndarray) -> list[int]:
    """The labels of an integer label map with more than one label; [] for binary masks."""
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        return []
    values = [int(v) for v in np.unique(arr) if v != 0]
    return values if len(values) > 1 else []


def _overlays(
    mask: _Mask, plane: np.ndarray, scale: float | tuple[float, float], dx: float = 0.0, dy: float = 0.0
) -> list[Overlay]:
    """Outlines of a mask's 2D plane: one, or one per label of a label map."""
    labels = _labels(mask.array)
    if not labels:
        return [
            Overlay(mask.label, PALETTE[mask.color_index % len(PALETTE)], outline(plane != 0, scale, dx, dy))
        ]
    return [
        Overlay(
            f"{mask.label} = {v}",
            PALETTE[(mask.color_index + i) % len(PALETTE)],
            outline(plane == v, scale, dx, dy),
        )
        for i, v in enumerate(labels)
        if (plane == v).any()
    ]


# -- display: windows, sizes, slices --------------------------------------------------------------


def display_window(arr: np.ndarray, modality: str | None) -> tuple[float, float, str]:
    """(low, high, description) of the intensity range shown: CT in HU windows, anything else percentiles."""
    flat = arr.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)].astype(np.float64)
    if modality == "ct" and sample.size and sample.min() < -200:  # Hounsfield units
        if (sample < AIR_HU).mean() > 0.5:
            return (*LUNG_WINDOW_HU, "lung window (level -600, width 1500 HU)")
        return (*SOFT_TISSUE_WINDOW_HU, "soft-tissue window (level 40, width 400 HU)")
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES)) if sample.size else (0.0, 1.0)
    return lo, hi, f"display range {lo:.4g} to {hi:.4g} (percentiles {PERCENTILES[0]:g}–{PERCENTILES[1]:g})"


def _windowed_rgb(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """8-bit RGB of a grey plane mapped linearly from [lo, hi] to [0, 255]."""
    if hi <= lo:
        grey = np.zeros(plane.shape, np.uint8)
    else:
        grey = (np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _resized(
    rgb: np.ndarray, spacing_yx: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """A slice resized to square physical pixels and a readable size; the (x, y) scale factors used."""
    import cv2

    h, w = rgb.shape[:2]
    py, px = spacing_yx if spacing_yx and min(spacing_yx) > 0 else (1.0, 1.0)
    target = min(DISPLAY_MAX_PX, max(SLICE_MIN_PX, h, w))
    k = target / max(h * py, w * px)
    size = (max(1, round(w * px * k)), max(1, round(h * py * k)))
    if size != (w, h):
        interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, size, interpolation=interp)
    return rgb, (size[0] / w, size[1] / h)


def _title(im: CaseImage, with_timepoint: bool) -> str:
    """Which study and sequence, then image id and file name."""
    parts = []
    if with_timepoint:
        name = "baseline/prior" if im.timepoint == "prior" else "current"
        parts.append(f"{name} {im.study_date}" if im.study_date else name)
    if im.sequence:
        parts.append(im.sequence)
    parts.append(f"{im.image_id}: {im.file_name}")
    return " · ".join(parts)


def _slice_figure(
    im: CaseImage,
    plane: np.ndarray,
    window: tuple[float, float, str],
    overlays: list[tuple[_Mask, np.ndarray]],
    title: str,
    caption: list[str],
) -> Figure:
    """One slice of a volume, windowed, sized, with the given mask planes outlined."""
    spacing = tuple(im.spacing_mm[-2:]) if im.spacing_mm and len(im.spacing_mm) >= 2 else None
    rgb, scale = _resized(_windowed_rgb(plane, window[0], window[1]), spacing)  # type: ignore[arg-type]
    fig = Figure(
        title, data_url(rgb), rgb.shape[1], rgb.shape[0], image_id=im.image_id, timepoint=im.timepoint
    )
    for m, mplane in overlays:
        if mplane.any():
            fig.overlays += _overlays(m, mplane, scale)
    fig.caption = [*caption, window[2]]
    return fig


def _slice_line(im: CaseImage, k: int, n: int) -> str:
    """Which axial slice, by index and, with spacing, position in mm."""
    line = f"axial slice {k} (0-based, of {n})"
    if im.spacing_mm and len(im.spacing_mm) == 3:
        line += f" · z = {k * im.spacing_mm[0]:.1f} mm from the first slice"
    return line


def _max_area_slice(mask: np.ndarray) -> int:
    """Index (first axis) of the slice where a 3D mask covers most pixels."""
    return int(np.argmax(_per_leading(mask != 0)))


def ed_es_frames(mask: np.ndarray) -> tuple[int, int] | None:
    """(frame of largest, frame of smallest non-zero) mask volume of a (t, z, y, x) mask; None when empty."""
    volumes = _per_leading(mask != 0)
    present = np.flatnonzero(volumes > 0)
    if present.size == 0:
        return None
    return int(np.argmax(volumes)), int(present[np.argmin(volumes[present])])


def _volume_figures(im: CaseImage, arr: np.ndarray, masks: list[_Mask], title: str) -> list[Figure]:
    """A 3D image: one figure per slice where one of its masks is largest (the middle slice without masks)."""
    window = display_window(arr, im.modality)
    groups: dict[int, list[_Mask]] = {}
    empty = []
    for m in masks:
        if (m.array != 0).any():
            groups.setdefault(_max_area_slice(m.array), []).append(m)
        else:
            empty.append(m)
    empty_note = [f"empty: {', '.join(m.label for m in empty)}"] if empty else []
    if not groups:
        k = arr.shape[0] // 2
        fig = _slice_figure(
            im, arr[k], window, [], title, [f"{_slice_line(im, k, arr.shape[0])} (middle)", *empty_note]
        )
        fig.slice_index = k
        return [fig]
    figs = []
    for k, shown in groups.items():
        lines = [
            _slice_line(im, k, arr.shape[0]),
            f"largest extent of {', '.join(m.output_field for m in shown)}",
        ]
        fig = _slice_figure(im, arr[k], window, [(m, m.array[k]) for m in masks], title, lines + empty_note)
        fig.slice_index = k
        figs.append(fig)
        empty_note = []
    return figs


def _cine_figures(im: CaseImage, arr: np.ndarray, masks: list[_Mask], title: str) -> list[Figure]:
    """A (t, z, y, x) image: ED and ES frames of each 4D mask, on the slice where it is largest at ED."""
    window = display_window(arr, im.modality)
    groups: dict[tuple[int, int, int], list[_Mask]] = {}
    for m in masks:
        frames = ed_es_frames(m.array)
        if frames is not None:
            groups.setdefault((*frames, _max_area_slice(m.array[frames[0]])), []).append(m)
    if not groups:
        k = arr.shape[1] // 2
        fig = _slice_figure(
            im, arr[0, k], window, [], f"frame 0 · {title}", [f"{_slice_line(im, k, arr.shape[1])} (middle)"]
        )
        fig.slice_index, fig.frame_index = k, 0
        return [fig]
    figs = []
    for (ed, es, k), defining in groups.items():
        panels = [("ED", ed), ("ES", es)] if ed != es else [("ED = ES", ed)]
        for name, t in panels:
            lines = [
                f"{_slice_line(im, k, arr.shape[1])}: mid-ventricular (largest at ED)",
                f"ED/ES: largest/smallest volume of {', '.join(m.output_field for m in defining)} over {arr.shape[0]} frames",
            ]
            fig = _slice_figure(
                im,
                arr[t, k],
                window,
                [(m, m.array[t, k]) for m in masks],
                f"{name} (frame {t}) · {title}",
                lines,
            )
            fig.slice_index, fig.frame_index = k, t
            figs.append(fig)
    return figs


def _picture_figures(
    store: ArtifactStore,
    im: CaseImage,
    arr: np.ndarray,
    masks: list[_Mask],
    calls: list[ToolCalled],
    title: str,
) -> list[Figure]:
    """A 2D image with its mask outlines, then every crop of it with the same outlines mapped into it."""
    import cv2

    rgb = display_rgb(arr)
    h, w = rgb.shape[:2]
    scale = min(1.0, DISPLAY_MAX_PX / max(h, w))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    fig = Figure(
        title, data_url(rgb), rgb.shape[1], rgb.shape[0], image_id=im.image_id, timepoint=im.timepoint
    )
    for m in masks:
        fig.overlays += _overlays(m, m.array, scale)
    figures = [fig]
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
            data_url(crop_rgb, ".png"),
            crop_rgb.shape[1],
            crop_rgb.shape[0],
        )
        for m in masks:
            cfig.overlays += _overlays(m, m.array, mag, -x0 * mag, -y0 * mag)
        figures.append(cfig)
    return figures


# -- the figures of a run --------------------------------------------------------------------------


def _image_figures(
    store: ArtifactStore, im: CaseImage, masks: list[_Mask], calls: list[ToolCalled], with_timepoint: bool
) -> list[Figure]:
    """The figures of one case image, by its dimensionality."""
    arr = load_array(store, im.pixels)
    mine = [m for m in masks if im.image_id in m.image_ids]
    title = _title(im, with_timepoint)
    if arr.ndim == 4:
        return _cine_figures(im, arr, mine, title)
    if arr.ndim == 3 and im.dims != "2d":
        return _volume_figures(im, arr, mine, title)
    return _picture_figures(store, im, arr, mine, calls, title)


def _study_key(im: CaseImage) -> tuple[str | None, str | None, str]:
    """What a prior must share with a current image to be shown beside it."""
    return im.modality, im.sequence, im.dims


def build_figure_rows(
    store: ArtifactStore, started: RunStarted, calls: list[ToolCalled]
) -> list[list[Figure]]:
    """Rows of figures: each image's own (with its crops), a prior and its current image in one row, prior left."""
    images = started.case.images
    masks = collect_masks(store, images, calls)
    with_timepoint = any(im.timepoint == "prior" for im in images)
    figs = {im.image_id: _image_figures(store, im, masks, calls, with_timepoint) for im in images}
    rows: list[list[Figure]] = []
    used: set[str] = set()
    for im in images:
        if im.image_id in used:
            continue
        used.add(im.image_id)
        partner = next(
            (
                o
                for o in images
                if o.image_id not in used and o.timepoint != im.timepoint and _study_key(o) == _study_key(im)
            ),
            None,
        )
        if partner is None:
            rows.append(figs[im.image_id])
            continue
        used.add(partner.image_id)
        prior, current = (im, partner) if im.timepoint == "prior" else (partner, im)
        rows.append(figs[prior.image_id] + figs[current.image_id])
    return rows


def build_figures(store: ArtifactStore, started: RunStarted, calls: list[ToolCalled]) -> list[Figure]:
    """Every figure of the run, in report order."""
    return [f for row in build_figure_rows(store, started, calls) for f in row]
