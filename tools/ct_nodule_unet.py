"""Learned lung nodule segmentation on CT: a small 3D UNet redraws the dominant nodule's edge.

The pipeline, shared by training (``dxgraph.tools.training.nodule_segmentation``) and the tool:

1. **Window.**  In a nodule-centred crop (at most ``CROP_MAX_MM`` wide in-plane) the window is centred
   on the crop and is as wide as the crop in-plane (at most ``MAX_WINDOW_MM``); in a larger volume the
   classical segmenter (tools/_nodule_segmentation) finds the dominant nodule and the window is centred
   on it, about twice its long axis wide (at least ``CONTEXT_WINDOW_MM``).  The window is a box of
   ``GRID_SHAPE`` voxels: in-plane spacing the window width / 48 (about 0.65 mm for a 30 mm crop, as
   fine as the crop's own pixels), z spacing ``Z_STEP_RATIO`` times that (slices are thicker than
   pixels).  Resampling the radiologists' masks onto this grid and back keeps 96 % of their diameters
   within 1.5 mm (a 32^3 grid at the crop's width keeps 93 %: thin spicules are lost).
2. **Network input.**  HU clipped to [-1000, 400], scaled to [0, 1], trilinearly resampled onto the
   window; outside the volume counts as air.
3. **Mask.**  The sigmoid output, averaged over flips of the input along z, y and x, is resampled back
   (trilinear) onto the volume's own voxel grid, thresholded at 0.5, and the connected component nearest
   the window's centre is kept.
4. **Measurements** are those of the classical tool (Fleischner average diameter on the axial slice of
   maximal long axis, volume, texture from HU); other nodules are counted by the classical segmenter.
5. **Input-domain check** (``domain_stats``, ``domain_check``): from the network's own four passes and
   the window it read. Its sharpness (voxels of probability 0.2-0.8 over those above 0.5), the agreement
   of its flipped passes (Dice of each pass's mask with the averaged one), whether the mask fills the
   window to its in-plane edge, and the HU of the aerated lung in the window are compared with their range
   on held-out LIDC-IDRI crops (``DOMAIN_LIMITS``); outside it the output carries ``out_of_domain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dxgraph.errors import ToolError
from dxgraph.tools._context import current_context, load_image
from dxgraph.tools._nodule_segmentation import (
    COUNT_MAX_ELONGATION_RATIO,
    COUNT_MIN_DIAMETER_MM,
    EDGE_SMOOTHING_MM,
    measure_nodule,
    segment_nodules,
    smooth_hu,
)
from dxgraph.tools._registry import OUT_OF_DOMAIN_FLAG, ErrorModel, tool
from dxgraph.tools._torch_runtime import load_packaged_model, predict
from dxgraph.tools._weights import PACKAGED_WEIGHTS_DIR
from dxgraph.tools.ct_nodule_size import (
    LungNoduleInput,
    LungNodules,
    dominant_nodule_fields,
    require_aerated_lung,
)

if TYPE_CHECKING:
    import torch

WEIGHTS_PATH = PACKAGED_WEIGHTS_DIR / "nodule_segmentation_unet.pt"
"""The shipped weights of the nodule UNet, trained by ``dxgraph train nodule_segmentation``."""
GRID_SHAPE = (16, 48, 48)
"""Voxels (z, y, x) of the window the network reads."""
Z_STEP_RATIO = 1.25
"""The window's z spacing over its in-plane spacing (CT slices are thicker than their pixels)."""
HU_MIN, HU_MAX = -1000.0, 400.0
"""The HU window clipped to before scaling to [0, 1]; outside the volume counts as air (HU_MIN)."""
CROP_MAX_MM = 80.0
"""A volume at most this wide in-plane is a nodule-centred crop: the window is centred on it (the
widest LIDC-IDRI crop, of a 51 mm nodule, is 75 mm wide)."""
MAX_WINDOW_MM = 64.0
"""Widest window, mm."""
MIN_WINDOW_MM = 20.0
"""Narrowest window, mm (a 4 mm nodule then spans about six grid voxels)."""
WINDOW_PER_LONG_AXIS = 2.0
"""In a larger volume, the window is this many times the classical long axis wide (LIDC crops are)."""
CONTEXT_WINDOW_MM = 30.0
"""...and at least this wide, like a typical nodule-centred crop."""
THRESHOLD_PROBABILITY = 0.5
"""A voxel belongs to the nodule when its probability exceeds this (0.3-0.45 measured worse in CV)."""
DIAMETER_ERROR = ErrorModel(
    bias=-0.82,
    sd=2.25,
    n=496,
    source="LIDC-IDRI dev ct_lidc_nodules, 496 nodule crops, 5-fold patient-grouped CV of the weights; "
    "bench/lidc_nodule_eval.py --states",
)
"""The average diameter against the same measure on the radiologists' max-voted masks, each crop by the
fold model that never saw its patient (the lock entry records the same CV): 78 % within 1.5 mm, MAE
1.27 mm; it under-draws large nodules."""


@dataclass(frozen=True)
class Window:
    """A box around a point of a volume, resampled to ``GRID_SHAPE`` voxels."""

    centre_index: tuple[float, float, float]
    """Centre in (fractional) voxel indices (z, y, x) of the volume."""
    grid_spacing_mm: tuple[float, float, float]
    """Spacing (z, y, x) of the window's grid, mm."""


def _window(centre: np.ndarray, width_mm: float) -> Window:
    step = float(np.clip(width_mm, MIN_WINDOW_MM, MAX_WINDOW_MM)) / GRID_SHAPE[2]
    return Window((float(centre[0]), float(centre[1]), float(centre[2])), (Z_STEP_RATIO * step, step, step))


def crop_window(shape: tuple[int, ...], spacing_mm: tuple[float, ...]) -> Window:
    """The window of a nodule-centred crop: centred on it, as wide as its widest in-plane extent."""
    width_mm = max(shape[1] * spacing_mm[1], shape[2] * spacing_mm[2])
    return _window((np.asarray(shape[:3], np.float64) - 1) / 2.0, width_mm)


def nodule_window(mask: np.ndarray, long_axis_mm: float) -> Window:
    """The window around a nodule found in a larger volume: centred on its mask, about 2 long axes wide."""
    return _window(
        np.argwhere(mask).mean(axis=0), max(CONTEXT_WINDOW_MM, WINDOW_PER_LONG_AXIS * long_axis_mm)
    )


def _grid_coordinates(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """Volume indices of the window's grid points (3, *GRID_SHAPE), and which lie inside the volume."""
    axes, inside = [], []
    for n, s, c, m, g in zip(
        shape, spacing_mm, window.centre_index, GRID_SHAPE, window.grid_spacing_mm, strict=True
    ):
        idx = (np.arange(m, dtype=np.float64) - (m - 1) / 2) * g / float(s) + c
        inside.append((idx >= -0.5) & (idx <= n - 0.5))
        axes.append(np.clip(idx, 0, n - 1))
    keep = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return np.stack(np.meshgrid(*axes, indexing="ij")), keep


def resample_window(
    volume: np.ndarray, spacing_mm: tuple[float, ...], window: Window, *, fill: float
) -> np.ndarray:
    """Trilinear resampling of a (z, y, x) volume onto the window's grid; outside the volume is ``fill``."""
    from scipy.ndimage import map_coordinates

    coords, keep = _grid_coordinates(volume.shape, spacing_mm, window)
    out = map_coordinates(volume.astype(np.float32), coords, order=1, mode="nearest")
    return np.where(keep, out, np.float32(fill)).astype(np.float32)


def preprocess_window(hu: np.ndarray, spacing_mm: tuple[float, ...], window: Window) -> np.ndarray:
    """The network input (1, *GRID_SHAPE) float32: HU clipped to [-1000, 400], scaled to [0, 1]."""
    clipped = np.clip(hu.astype(np.float32), HU_MIN, HU_MAX)
    grid = resample_window(clipped, spacing_mm, window, fill=HU_MIN)
    return ((grid - HU_MIN) / (HU_MAX - HU_MIN))[None].astype(np.float32)


def target_window(mask: np.ndarray, spacing_mm: tuple[float, ...], window: Window) -> np.ndarray:
    """The training target (1, *GRID_SHAPE) float32: the mask's occupancy, trilinearly resampled."""
    return resample_window((mask > 0).astype(np.float32), spacing_mm, window, fill=0.0)[None]


def window_to_volume(
    grid: np.ndarray, shape: tuple[int, ...], spacing_mm: tuple[float, ...], window: Window
) -> np.ndarray:
    """A window-grid map (GRID_SHAPE) trilinearly resampled back onto the volume's voxels (0 outside it)."""
    from scipy.ndimage import map_coordinates

    axes, inside = [], []
    for length, s, c, n, g in zip(
        shape, spacing_mm, window.centre_index, grid.shape, window.grid_spacing_mm, strict=True
    ):
        idx = (np.arange(length, dtype=np.float64) - c) * float(s) / g + (n - 1) / 2
        inside.append((idx >= 0) & (idx <= n - 1))
        axes.append(idx)
    out = np.zeros(tuple(shape), np.float32)
    box = tuple(slice(int(np.argmax(m)), len(m) - int(np.argmax(m[::-1]))) for m in inside)
    if any(not m.any() for m in inside):
        return out
    sub = [a[b] for a, b in zip(axes, box, strict=True)]
    coords = np.stack(np.meshgrid(*sub, indexing="ij"))
    out[box] = map_coordinates(grid.astype(np.float32), coords, order=1, mode="nearest")
    return out


def nearest_component(
    mask: np.ndarray, spacing_mm: tuple[float, ...], centre_index: tuple[float, ...]
) -> np.ndarray:
    """The connected component of ``mask`` nearest ``centre_index`` (ties to the larger); empty if none."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    pts = np.argwhere(labels > 0)
    dist = np.linalg.norm((pts - np.asarray(centre_index)) * np.asarray(spacing_mm, np.float64), axis=1)
    lab = labels[tuple(pts.T)]
    nearest = np.full(n + 1, np.inf)
    np.minimum.at(nearest, lab, dist)
    sizes = np.bincount(lab, minlength=n + 1)
    best = min(range(1, n + 1), key=lambda k: (round(float(nearest[k]), 3), -int(sizes[k])))
    return labels == best


def window_passes(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Sigmoid outputs (N, 4, *GRID_SHAPE) of inputs (N, 1, *GRID_SHAPE): as given, and flipped along z,
    y and x (flipped back)."""
    import torch

    passes = [torch.sigmoid(torch.from_numpy(predict(net, x)))]
    for axis in (2, 3, 4):
        flipped = np.ascontiguousarray(np.flip(x, axis=axis))
        passes.append(torch.flip(torch.sigmoid(torch.from_numpy(predict(net, flipped))), dims=(axis,)))
    return torch.cat(passes, dim=1).numpy()


def window_probability(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Sigmoid output (N, *GRID_SHAPE) of inputs (N, 1, *GRID_SHAPE), averaged with z-, y-, x-flips."""
    return window_passes(net, x).mean(axis=1)


DOMAIN_LIMITS: dict[str, tuple[float, float]] = {
    "ambiguous_fraction": (0.0, 0.943),
    "flip_agreement": (0.8, 1.0),
    "edge_fraction": (0.0, 0.01),
    "lung_hu": (-1029.7, -673.1),
}
"""Plausible range of each ``domain_stats`` statistic: the held-out LIDC-IDRI crops' range (0.5th to
99.5th percentile, widened by a tenth of the span, at least 0.01), printed by ``bench/lidc_nodule_eval.py
--states`` from the fold models of the weights' CV; the side on which a statistic only gets better (a
sharper edge, agreeing passes, no edge contact) is left open."""


def domain_stats(x: np.ndarray, passes: np.ndarray) -> dict[str, float]:
    """Cheap statistics of one window's input (1, *GRID_SHAPE) and the network's four passes
    (4, *GRID_SHAPE) that tell an input unlike the LIDC-IDRI crops the network learned from.

    ``ambiguous_fraction``: voxels of averaged probability 0.2-0.8 over those above 0.5 (a confident
    network draws a sharp edge). ``flip_agreement``: the smallest Dice of a pass's mask with the averaged
    mask (a network that knows its input answers alike when it is flipped). ``edge_fraction``: the share
    of the window's in-plane border voxels inside the mask (a nodule, or a leak, wider than the window).
    ``lung_hu``: median HU of the window's voxels below -500 HU (-1000 when there are none).
    """
    prob = passes.mean(axis=0)
    sure = prob > THRESHOLD_PROBABILITY
    n_sure = int(sure.sum())
    ambiguous = int(((prob > 0.2) & (prob < 0.8)).sum())
    agreement = 1.0
    for p in passes:
        m = p > THRESHOLD_PROBABILITY
        denom = int(m.sum()) + n_sure
        agreement = min(agreement, 1.0 if denom == 0 else 2.0 * int((m & sure).sum()) / denom)
    border = np.concatenate(
        [sure[:, 0].ravel(), sure[:, -1].ravel(), sure[:, :, 0].ravel(), sure[:, :, -1].ravel()]
    )
    hu = x[0] * (HU_MAX - HU_MIN) + HU_MIN
    aerated = hu[hu < -500.0]
    return {
        "ambiguous_fraction": ambiguous / max(n_sure, 1),
        "flip_agreement": agreement,
        "edge_fraction": float(border.mean()),
        "lung_hu": float(np.median(aerated)) if aerated.size else HU_MIN,
    }


def domain_check(stats: dict[str, float]) -> tuple[str, ...]:
    """The statistics of ``domain_stats`` outside their ``DOMAIN_LIMITS``: why the input is out of
    domain (empty when it looks like the crops the network learned from)."""
    return tuple(k for k, (lo, hi) in DOMAIN_LIMITS.items() if not lo <= stats[k] <= hi)


def mask_from_probability(
    grid_probability: np.ndarray, shape: tuple[int, ...], spacing_mm: tuple[float, ...], window: Window
) -> np.ndarray:
    """The nodule mask on the volume's voxels: threshold 0.5, the component nearest the window centre."""
    prob = window_to_volume(grid_probability, shape, spacing_mm, window)
    return nearest_component(prob > THRESHOLD_PROBABILITY, spacing_mm, window.centre_index)


class LungNodulesUnet(LungNodules):
    """segment_lung_nodules' output, drawn by the learned segmenter, with the weights that drew it."""

    weights_sha256: str
    """sha256 of the UNet weights that drew the nodule mask."""


@tool(
    name="segment_lung_nodules_unet",
    method="learned",
    version="0.2.0",
    modalities=("ct",),
    dims=("3d",),
    device="any",
    requires_spacing=True,
    error_models={"diameter_mm": DIAMETER_ERROR},
    domain_check=(
        "the network's own output and window: edge sharpness (probability 0.2-0.8 over > 0.5), agreement "
        "of its flipped passes, a mask reaching the window's edge, and the HU of the aerated lung, against "
        "their range on held-out LIDC-IDRI crops; and a nodule the HU locator reads as subsolid (part-solid or "
        "ground glass), whose ground-glass rim the network was not taught to keep"
    ),
)
def segment_lung_nodules_unet(inp: LungNoduleInput) -> LungNodulesUnet:
    """Segment the dominant lung nodule of a 3D chest CT in HU with a 3D UNet and measure it (Fleischner).

    Learned alternative to segment_lung_nodules, trained by dxgraph on 496 LIDC-IDRI nodule crops against
    the radiologists' max-voted masks (which include lobulations and spicules). In a nodule-centred crop
    (at most 80 mm wide) the central nodule is segmented; in a larger volume the classical segmenter
    finds the dominant (largest) nodule and the UNet redraws it in a window around it. Diameter = average
    of long and short (perpendicular) axes on the axial slice of maximal long axis; type from HU; other
    nodules counted by the classical segmenter. Raises ToolError(no_nodule_found) when there is none, and
    the quality flag out_of_domain when its own output says the input is unlike the LIDC-IDRI crops (a
    blurred or doubtful edge, flipped passes that disagree, a mask filling the window, lung of unusual
    HU). It draws the solid core of a part-solid nodule, not its ground-glass rim.
    """
    import torch

    hu = np.asarray(load_image(inp.image), dtype=np.float32)
    if hu.ndim != 3:
        raise ToolError(
            f"segment_lung_nodules_unet needs a 3D CT volume, got shape {hu.shape}", flags=("not_3d_image",)
        )
    spacing = inp.image.spacing_mm
    if spacing is None or len(spacing) != 3 or min(spacing) <= 0:
        raise ToolError("segment_lung_nodules_unet needs the voxel spacing in mm", flags=("no_spacing",))
    sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    require_aerated_lung(hu)
    flags: list[str] = []
    seg = segment_nodules(hu, sp)
    if max(hu.shape[1] * sp[1], hu.shape[2] * sp[2]) <= CROP_MAX_MM:
        window = crop_window(hu.shape, sp)
        flags.append("nodule_centred_crop_central_nodule_measured")
    elif seg.nodules:
        window = nodule_window(seg.nodules[0].mask, seg.nodules[0].long_axis_mm)
    else:
        raise ToolError("no lung nodule of 3 mm or more was found in the volume", flags=("no_nodule_found",))
    net, _meta, sha = load_packaged_model(WEIGHTS_PATH, current_context().device)
    x = preprocess_window(hu, sp, window)[None]
    with torch.inference_mode():
        passes = window_passes(net, x)[0]
    mask = mask_from_probability(passes.mean(axis=0), hu.shape, sp, window)
    if not mask.any():
        raise ToolError("the network found no nodule in the window", flags=("no_nodule_found",))
    reasons = domain_check(domain_stats(x[0], passes))
    if seg.nodules and seg.nodules[0].nodule_type != "solid":
        # LIDC holds few subsolid nodules: the network cuts a ground-glass rim off (a 12.4 mm part-solid
        # phantom reads 8.2 mm), so a nodule the HU locator reads as subsolid is outside what it learned
        reasons = (*reasons, "subsolid")
    if reasons:
        flags += [OUT_OF_DOMAIN_FLAG, *(f"out_of_domain_{r}" for r in reasons)]
    dom = measure_nodule(hu, mask, sp, smoothed_hu=smooth_hu(hu, sp, EDGE_SMOOTHING_MM))
    others = sum(
        1
        for m in seg.nodules
        if not (m.mask & mask).any()
        and m.diameter_mm >= COUNT_MIN_DIAMETER_MM
        and m.elongation_ratio <= COUNT_MAX_ELONGATION_RATIO
    )
    return LungNodulesUnet(**dominant_nodule_fields(dom, mask, 1 + others, sp[0], flags), weights_sha256=sha)
