"""Learned left-ventricular cavity segmentation: a small 2D UNet on every frame and slice of a cine.

The pipeline, shared by training (``dxgraph.tools.training.lv``) and the tool:

1. **Network input.**  Each whole (y, x) image is divided by its 99th intensity percentile, clipped to
   [0, ``CLIP``], resampled to ``NETWORK_PIXEL_MM`` (2/3 of the resolution of the Sunnybrook 256 x 256
   short-axis images the network learned from) and zero-padded to a multiple of 8 pixels.
2. **Probabilities.**  The sigmoid output, averaged with that of the left-right mirrored input, resampled
   back (bilinear) onto the image's own grid.
3. **Which component is the LV.**  On a single image: the connected component (probability above
   ``THRESHOLD``) of largest probability mass, holes filled.  On a cine: the component of the
   probability averaged over all frames and slices with the largest mass gives the LV axis; on each slice,
   the component of its frame-averaged probability nearest that axis (within ``MAX_AXIS_SHIFT_MM``)
   marks the slice's LV, and each frame keeps its components that touch it (dilated by 5 mm).
4. **Checks.**  The mask then goes through the same plausibility checks as the classical segmenter's
   (``dxgraph.tools._lv_segmentation.lv_check_failures``: enclosed by myocardium, consistent over slices
   and phases, plausible size); a failure is a ToolError, never a number.
5. **Input-domain check.**  ``out_of_domain`` is raised when the network is unsure where it segments: the
   mean binary entropy of the probabilities in a 3 mm band around the mask's edge (on the ED frame's
   slices) above ``MAX_EDGE_ENTROPY``, or when less than ``MIN_CONFIDENT_FRACTION`` of the mask's pixels
   have a probability above 0.8.

**Status: no weights are shipped and the tool is not registered.** ``dxgraph train lv`` (about 10 minutes
on two CPU cores) trains it leave-one-patient-out on the 7 patients of ``cine_sunnybrook_slices``: cavity
Dice 0.808 (HF-I), 0.466 (HF-NI), 0.517 (HYP), 0.724 (N), mean 0.615, far below the 0.85 goal (one
patient, SC-HF-NI-31, at 0.27); per-patient area EF error
-13.2 +- 21.6 points. Through the cine pipeline both DICOM cines were refused (``lv_inconsistent``) and
flagged ``out_of_domain``. The classical ``segment_lv_cavity`` stays the only LV segmenter. The thresholds
of the domain check are not calibrated on held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from dxgraph.errors import ToolError
from dxgraph.tools._context import current_context, save_artifact
from dxgraph.tools._lv_segmentation import lv_check_failures, lv_flags_message
from dxgraph.tools._registry import OUT_OF_DOMAIN_FLAG, tool
from dxgraph.tools._torch_runtime import load_packaged_model
from dxgraph.tools._weights import PACKAGED_WEIGHTS_DIR
from dxgraph.tools.cardiac_cine import LVCavityMask, SegmentLVCavityInput, cine_and_spacing

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHANNELS",
    "NETWORK_PIXEL_MM",
    "NOMINAL_PIXEL_MM",
    "WEIGHTS_PATH",
    "lv_component_2d",
    "normalise",
    "probabilities",
    "segment_cine",
    "segment_lv_cavity_unet",
    "segment_lv_unet",
]

WEIGHTS_PATH = PACKAGED_WEIGHTS_DIR / "lv_cavity_unet.pt"
"""The shipped weights of the LV cavity UNet."""
CHANNELS = (8, 16, 32, 64)
"""UNet feature channels per level."""
NOMINAL_PIXEL_MM = 1.367
"""Pixel size of the Sunnybrook 256 x 256 short-axis cines, assumed for the slice set (which has none), mm."""
NETWORK_PIXEL_MM = 1.5 * NOMINAL_PIXEL_MM
"""Pixel size the network works at, mm: 2/3 of the Sunnybrook resolution, so that a 96 px training window
(197 mm) holds the whole heart and its surroundings."""
CLIP = 1.5
"""Intensities are divided by the image's 99th percentile and clipped to [0, CLIP]."""
THRESHOLD = 0.5
"""A pixel is cavity when its probability exceeds this."""
MAX_AXIS_SHIFT_MM = 20.0
"""A slice's LV component lies within this distance of the LV axis found over the whole cine, mm."""
MAX_EDGE_ENTROPY = 0.55
"""Mean binary entropy (bits) in the band around the mask's edge above which the input is out of domain."""
MIN_CONFIDENT_FRACTION = 0.6
"""Share of mask pixels with probability above 0.8 below which the input is out of domain."""


def normalise(img: np.ndarray) -> np.ndarray:
    """An image (H, W) as network input (float32): divided by its 99th percentile, clipped to [0, CLIP]."""
    x = np.asarray(img, np.float32)
    scale = float(np.percentile(x, 99.0))
    if scale <= 0:
        scale = float(x.max()) or 1.0
    return np.clip(x / scale, 0.0, CLIP).astype(np.float32)


def _pad8(x: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    out[: x.shape[0], : x.shape[1]] = x
    return out


def probabilities(
    net: torch.nn.Module, images: list[np.ndarray], pixel_mm: float, batch_size: int = 16
) -> list[np.ndarray]:
    """Cavity probabilities (flip-averaged) of images of ``pixel_mm`` pixels, each on its own grid.

    Each image is resampled to NETWORK_PIXEL_MM, normalised and zero-padded to a multiple of 8 pixels; the
    output is resampled back (bilinear)."""
    import torch

    if not images:
        return []
    f = pixel_mm / NETWORK_PIXEL_MM
    small = [
        _resize(normalise(i), (max(8, round(i.shape[0] * f)), max(8, round(i.shape[1] * f)))) for i in images
    ]
    h = int(np.ceil(max(i.shape[0] for i in small) / 8) * 8)
    w = int(np.ceil(max(i.shape[1] for i in small) / 8) * 8)
    x = np.stack([_pad8(i, h, w) for i in small])[:, None]
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[s : s + batch_size])
            both = torch.from_numpy(np.concatenate([xb, xb[..., ::-1].copy()])).to(device)
            p = torch.sigmoid(net(both)).float().cpu().numpy()[:, 0]
            n = len(xb)
            out.append((p[:n] + p[n:, :, ::-1]) / 2)
    prob = np.concatenate(out)
    return [
        np.clip(_resize(prob[k, : sm.shape[0], : sm.shape[1]], img.shape[:2]), 0.0, 1.0)
        for k, (sm, img) in enumerate(zip(small, images, strict=True))
    ]


def lv_component_2d(prob: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """The component of ``prob > threshold`` with the largest probability mass, holes filled (bool)."""
    lab, n = ndi.label(prob > threshold)
    if n == 0:
        return np.zeros(prob.shape, bool)
    mass = ndi.sum(prob, lab, index=np.arange(1, n + 1))
    return np.asarray(ndi.binary_fill_holes(lab == 1 + int(np.argmax(mass))), bool)


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return np.asarray(
        cv2.resize(img.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    )


def cine_probabilities(
    net: torch.nn.Module, cine: np.ndarray, spacing_mm: tuple[float, float, float]
) -> np.ndarray:
    """(t, z, y, x) cavity probabilities of a cine on its own grid."""
    n_t, n_z, h, w = cine.shape
    px_mm = float(np.sqrt(spacing_mm[1] * spacing_mm[2]))
    frames = [np.asarray(cine[t, z], np.float32) for t in range(n_t) for z in range(n_z)]
    return np.stack(probabilities(net, frames, px_mm)).reshape(n_t, n_z, h, w)


def _nearest_component(
    binary: np.ndarray, point_yx: tuple[float, float], reach_px: float
) -> np.ndarray | None:
    lab, n = ndi.label(binary)
    if n == 0:
        return None
    best, best_d = None, np.inf
    for k in range(1, n + 1):
        cy, cx = ndi.center_of_mass(lab == k)
        d = float(np.hypot(cy - point_yx[0], cx - point_yx[1]))
        if d < best_d:
            best, best_d = k, d
    if best is None or best_d > reach_px:
        return None
    return np.asarray(lab == best)


def segment_cine(prob: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The (t, z, y, x) LV cavity mask from the network's probabilities of a cine (step 3 of the module)."""
    n_t, n_z = prob.shape[:2]
    px_mm = float(np.sqrt(spacing_mm[1] * spacing_mm[2]))
    mask = np.zeros(prob.shape, bool)
    axis = lv_component_2d(prob.mean(axis=(0, 1)), threshold=0.25)
    if not axis.any():
        return mask
    axis_yx = ndi.center_of_mass(axis)
    near = max(1, round(5.0 / px_mm))
    for z in range(n_z):
        slice_lv = _nearest_component(prob[:, z].mean(axis=0) > 0.3, axis_yx, MAX_AXIS_SHIFT_MM / px_mm)
        if slice_lv is None:
            continue
        allowed = ndi.binary_dilation(slice_lv, iterations=near)
        for t in range(n_t):
            lab, _ = ndi.label(prob[t, z] > THRESHOLD)
            keep = np.isin(lab, np.unique(lab[allowed & (lab > 0)]))
            if keep.any():
                mask[t, z] = ndi.binary_fill_holes(keep)
    return mask


def domain_measures(prob: np.ndarray, mask: np.ndarray, px_mm: float) -> dict[str, float]:
    """Edge entropy (bits) and confident fraction of a mask and its probabilities (any shape, last two y, x)."""
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    r = max(1, round(3.0 / px_mm))
    flat_m = mask.reshape(-1, *mask.shape[-2:])
    flat_e = ent.reshape(-1, *ent.shape[-2:])
    band_vals = []
    for m, e in zip(flat_m, flat_e, strict=True):
        if m.any():
            band = ndi.binary_dilation(m, iterations=r) & ~ndi.binary_erosion(m, iterations=r)
            band_vals.append(e[band])
    edge_entropy = float(np.concatenate(band_vals).mean()) if band_vals else 1.0
    confident = float((prob[mask] > 0.8).mean()) if mask.any() else 0.0
    return {"edge_entropy_bits": edge_entropy, "confident_fraction": confident}


def is_out_of_domain(measures: dict[str, float]) -> bool:
    """Whether the domain measures say the input is unlike the training images."""
    return (
        measures["edge_entropy_bits"] > MAX_EDGE_ENTROPY
        or measures["confident_fraction"] < MIN_CONFIDENT_FRACTION
    )


@dataclass(frozen=True)
class UNetLVSegmentation:
    """The network's LV cavity mask of a cine with its checks and domain measures."""

    mask: np.ndarray
    """(t, z, y, x) bool cavity mask."""
    slices: list[int]
    """Slices holding cavity."""
    failures: list[str]
    """Failed LV checks (``LV_CHECKS`` flags); the mask is not to be measured when any."""
    flags: list[str]
    """Warnings, and ``out_of_domain`` when the domain check fails."""
    measures: dict[str, float]
    """Edge entropy (bits) and confident fraction of the domain check."""


def segment_lv_unet(
    net: torch.nn.Module, cine: np.ndarray, spacing_mm: tuple[float, float, float]
) -> UNetLVSegmentation:
    """Steps 1-5 of the module on a (t, z, y, x) cine with spacing (sz, sy, sx) mm."""
    prob = cine_probabilities(net, cine, spacing_mm)
    mask = segment_cine(prob, spacing_mm)
    failures, flags = lv_check_failures(cine, mask, spacing_mm)
    px_mm = float(np.sqrt(spacing_mm[1] * spacing_mm[2]))
    measures = domain_measures(prob, mask, px_mm)
    if is_out_of_domain(measures):
        flags.append(OUT_OF_DOMAIN_FLAG)
    slices = sorted(int(z) for z in np.nonzero(mask.any(axis=(0, 2, 3)))[0])
    return UNetLVSegmentation(mask, slices, failures, flags, measures)


@tool(
    name="segment_lv_cavity_unet",
    method="learned",
    version="0.1.0",
    modalities=("mr",),
    dims=("3d+t",),
    requires_spacing=True,
    device="any",
    domain_check=(
        "out_of_domain when the mean binary entropy of the network's probabilities in a 3 mm band "
        f"around the cavity edge exceeds {MAX_EDGE_ENTROPY} bits or fewer than "
        f"{MIN_CONFIDENT_FRACTION:.0%} of cavity pixels have probability > 0.8"
    ),
)
def segment_lv_cavity_unet(inp: SegmentLVCavityInput) -> LVCavityMask:
    """Segment the left-ventricular blood pool on every frame and slice of a short-axis cine with a learned 2D UNet.

    A small UNet trained by dxgraph on 130 expert-contoured Sunnybrook short-axis slices (heart failure
    with and without infarction, hypertrophy, normal) segments each frame; the
    LV is the component on the axis common to the stack. The mask must pass the same checks as the
    classical segmenter's (enclosed by myocardium, consistent over slices and phases, plausible size),
    else ToolError; ``out_of_domain`` is flagged when the network is unsure of the cavity's edge.
    """
    cine, spacing = cine_and_spacing(inp.image)
    net, _meta, sha = load_packaged_model(WEIGHTS_PATH, current_context().device)
    seg = segment_lv_unet(net, cine, spacing)
    if seg.failures:
        raise ToolError(lv_flags_message(seg.failures), flags=tuple(seg.failures))
    return LVCavityMask(
        lv_mask=save_artifact(seg.mask, "mask"),
        lv_slices=seg.slices,
        flags=seg.flags,
        quality_flags=[f for f in seg.flags if f == OUT_OF_DOMAIN_FLAG],
        weights_sha256=sha,
    )
