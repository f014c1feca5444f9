"""Chest X-ray tools: heart and lung segmentation (classical, or a learned UNet), and the CTR from the masks.

Side convention (radiological, as on a PA film read facing the patient): the patient's RIGHT lung
lies on the LEFT of the image (small column indices) and the patient's LEFT lung on the right of the
image. The Wingspan masks named ``right_lung`` indeed sit on the image's left (mean column ~155 of
512) and ``left_lung`` on its right (~375 of 512); the segmenter's channels follow those names.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, QualityGrade, QualityProblem, ToolModel
from dxgraph.errors import ToolError
from dxgraph.imaging import as_rgb8, assess_image_quality
from dxgraph.tools._context import current_context, load_artifact, load_image, save_artifact
from dxgraph.tools._mask_geometry import cardiothoracic_ratio, column_range, largest_component_filled
from dxgraph.tools._registry import OUT_OF_DOMAIN_FLAG, ErrorModel, tool
from dxgraph.tools._torch_runtime import load_packaged_model
from dxgraph.tools._weights import PACKAGED_WEIGHTS_DIR

INPUT_SIZE_PX = 128
"""Side of the square image the network sees."""
STRUCTURES = ("heart", "right_lung", "left_lung")
"""Output channels of the network, in order (patient's right and left)."""
WEIGHTS_PATH = PACKAGED_WEIGHTS_DIR / "cxr_heart_lungs_unet.pt"
"""The shipped segmenter weights."""
THRESHOLD = 0.5
"""Probability above which a pixel belongs to a structure."""
MIN_AREA_FRACTION = 0.002
"""A structure smaller than this fraction of the image counts as not found."""
FRAGMENTED_FRACTION = 0.9
"""Flag a structure whose largest component holds less than this fraction of its pixels."""


# ---------------------------------------------------------------- pre- and post-processing


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """An 8-bit grey image from a 2D grey or RGB array of any depth (ToolError otherwise)."""
    rgb = as_rgb8(pixels)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def preprocess(pixels: np.ndarray, size_px: int = INPUT_SIZE_PX) -> np.ndarray:
    """Network input (1, size, size) float32: grey, area-resized, zero mean and unit variance."""
    grey = to_grey(pixels).astype(np.float32)
    small = cv2.resize(grey, (size_px, size_px), interpolation=cv2.INTER_AREA)
    return ((small - small.mean()) / max(float(small.std()), 1e-6))[None].astype(np.float32)


def resize_probabilities(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-channel probabilities (C, h, w) resized bilinearly to (C, *shape)."""
    h, w = shape
    return np.stack([cv2.resize(p.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for p in prob])


def masks_from_probabilities(prob: np.ndarray, shape: tuple[int, int]) -> tuple[list[np.ndarray], list[str]]:
    """Full-resolution cleaned masks (one per structure) from low-res probabilities, and quality flags."""
    full = resize_probabilities(prob, shape) > THRESHOLD
    masks, flags = [], []
    for name, raw in zip(STRUCTURES, full, strict=True):
        mask = largest_component_filled(raw)
        if raw.sum() and mask.sum() < FRAGMENTED_FRACTION * raw.sum():
            flags.append(f"{name}_fragmented")
        masks.append(mask)
    return masks, flags


# ---------------------------------------------------------------- the input-domain check

DOMAIN_LIMITS: dict[str, tuple[float, float]] = {
    "ambiguous_fraction": (0.0, 0.45),
    "heart_area_fraction": (0.01, 0.25),
    "lung_area_fraction": (0.03, 0.6),
    "heart_lung_ratio": (0.12, 1.0),
    "lung_balance": (0.35, 1.0),
    "heart_row_position": (0.5, 1.0),
}
"""Plausible range of each domain statistic (``domain_stats``); outside it the input is out of domain.
The cross-validated outputs (``network_probabilities``) of the 121 Wingspan radiographs span
ambiguous_fraction 0.118-0.283, heart area 0.065-0.137, lung area 0.138-0.372, heart/lung area ratio
0.20-0.67, lung balance 0.51-0.99 and heart row 0.66-0.83 (none flagged); inverted radiographs (a
MONOCHROME1 film read as MONOCHROME2), photographs and noise give ambiguous fractions of 0.97-4.2
(bench/cxr_ctr_eval.py). The area limits are loose on purpose: a thorax that does not fill the frame
(another site's framing; zoomed out to 0.4) is in domain."""


def domain_stats(prob: np.ndarray, masks: list[np.ndarray]) -> dict[str, float]:
    """Cheap statistics of the network's own output that tell a radiograph unlike its training data.

    ``ambiguous_fraction``: pixels of probability 0.2-0.8, over the pixels above 0.5, summed over the
    channels of the low-resolution output (a confident network draws sharp edges). ``heart_area_fraction``
    and ``lung_area_fraction``: the cleaned masks' shares of the image; ``heart_lung_ratio``: the heart's
    area over both lungs' (framing does not change it). ``lung_balance``: the smaller
    lung's area over the larger's. ``heart_row_position``: the heart's centroid row within the lungs'
    row extent (0 top, 1 bottom). ``heart_between_lungs``: 1 when the heart's centroid column lies
    between the two lungs' centroids (the right lung on the image's left), else 0.
    """
    sure = float((prob > 0.5).sum())
    ambiguous = float(((prob > 0.2) & (prob < 0.8)).sum())
    heart, right, left = masks
    n = heart.size
    cols = np.arange(heart.shape[1])
    rows = np.arange(heart.shape[0])

    def centroid(m: np.ndarray, axis: int) -> float:
        return float((m.sum(axis) * (cols if axis == 0 else rows)).sum() / max(int(m.sum()), 1))

    lungs = right | left
    lung_rows = np.nonzero(lungs.any(1))[0]
    top, bottom = (int(lung_rows[0]), int(lung_rows[-1])) if lung_rows.size else (0, heart.shape[0] - 1)
    areas = sorted([float(right.sum()), float(left.sum())])
    return {
        "ambiguous_fraction": ambiguous / max(sure, 1.0),
        "heart_area_fraction": float(heart.sum()) / n,
        "lung_area_fraction": float(lungs.sum()) / n,
        "heart_lung_ratio": float(heart.sum()) / max(float(lungs.sum()), 1.0),
        "lung_balance": areas[0] / max(areas[1], 1.0),
        "heart_row_position": (centroid(heart, 1) - top) / max(bottom - top, 1),
        "heart_between_lungs": float(centroid(right, 0) < centroid(heart, 0) < centroid(left, 0)),
    }


def domain_check(prob: np.ndarray, masks: list[np.ndarray]) -> tuple[str, ...]:
    """The reasons (statistic names) why the network's output says its input is out of domain; empty
    when the output looks like one of a radiograph like those it learned from."""
    stats = domain_stats(prob, masks)
    reasons = [k for k, (lo, hi) in DOMAIN_LIMITS.items() if not lo <= stats[k] <= hi]
    if not stats["heart_between_lungs"]:
        reasons.append("heart_between_lungs")
    return tuple(reasons)


# ---------------------------------------------------------------- the model


TTA_VIEWS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.9, 0.0), (1.1, 0.0), (1.0, 0.03), (1.0, -0.03))
"""Test-time views (zoom about the centre, horizontal shift as a fraction of the side) whose
probabilities, mapped back, are averaged: the CTR hangs on the extreme columns of the masks, which one
view's pixel grid places less steadily."""


def _view_matrix(size_px: int, zoom: float, shift: float) -> np.ndarray:
    mat = cv2.getRotationMatrix2D((size_px / 2, size_px / 2), 0.0, zoom)
    mat[0, 2] += shift * size_px
    return mat


def network_probabilities(net: object, batch: np.ndarray) -> np.ndarray:
    """Sigmoid probabilities (N, 3, s, s) of preprocessed inputs (N, 1, s, s): the mean over the
    ``TTA_VIEWS`` of the network's output, each view's mapped back onto the input grid; all views of
    all inputs in ONE forward pass."""
    import torch

    n, _, size, _ = batch.shape
    mats = [_view_matrix(size, z, d) for z, d in TTA_VIEWS]
    warp = lambda img, m: cv2.warpAffine(  # noqa: E731
        img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    views = np.stack([warp(x[0], m)[None] for m in mats for x in batch]).astype(np.float32)
    assert isinstance(net, torch.nn.Module)
    device = next(net.parameters()).device
    with torch.inference_mode():
        out = torch.sigmoid(net(torch.from_numpy(views).to(device))).float().cpu().numpy()
    out = out.reshape(len(mats), n, *out.shape[1:])
    back = [
        np.stack([np.stack([warp(c, cv2.invertAffineTransform(m)) for c in p]) for p in out[v]])
        for v, m in enumerate(mats)
    ]
    return np.mean(back, axis=0).astype(np.float32)


def predict_probabilities(batch: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, str]:
    """Sigmoid probabilities (N, 3, s, s) of preprocessed inputs (N, 1, s, s) by the shipped weights
    (``network_probabilities``), and the weights' sha256."""
    net, _, sha = load_packaged_model(WEIGHTS_PATH, device)
    return network_probabilities(net, batch), sha


# ---------------------------------------------------------------- segment_heart_lungs


class SegmentHeartLungsInput(ToolModel):
    """Input of segment_heart_lungs."""

    image: ImageRef
    """A frontal (PA) chest radiograph."""


class HeartLungMasks(ToolModel):
    """Heart and lung masks of one chest radiograph."""

    heart_mask: ArtifactRef
    """Binary mask of the cardiac silhouette, same size as the image."""
    right_lung_mask: ArtifactRef
    """Binary mask of the patient's right lung (on the image's left side)."""
    left_lung_mask: ArtifactRef
    """Binary mask of the patient's left lung (on the image's right side)."""
    heart_area_px: int = Field(ge=0)
    """Heart mask area in pixels."""
    right_lung_area_px: int = Field(ge=0)
    """Right lung mask area in pixels."""
    left_lung_area_px: int = Field(ge=0)
    """Left lung mask area in pixels."""
    quality_flags: list[str]
    """Machine-readable quality warnings."""
    weights_sha256: str | None = None
    """sha256 of the weights that produced the masks; None for the classical segmenter (no weights)."""
    method: Literal["unet", "classical"] = "unet"
    """Which segmenter produced the masks."""


def _segment_batch(inputs: list[SegmentHeartLungsInput]) -> list[HeartLungMasks]:
    images = [load_image(i.image) for i in inputs]
    if not images:
        return []
    batch = np.stack([preprocess(p) for p in images])
    device = current_context().device
    prob, sha = predict_probabilities(batch, device if device in ("cpu", "cuda") else "cpu")
    return [_masks_output(p, pixels, sha) for p, pixels in zip(prob, images, strict=True)]


def _masks_output(prob: np.ndarray, pixels: np.ndarray, sha: str) -> HeartLungMasks:
    masks, flags = masks_from_probabilities(prob, pixels.shape[:2])
    min_area = MIN_AREA_FRACTION * masks[0].size
    if all(m.sum() >= min_area for m in masks):
        reasons = domain_check(prob, masks)
        if reasons:
            flags += [OUT_OF_DOMAIN_FLAG, *(f"domain_{r}" for r in reasons)]
    return _checked_masks(masks, flags, pixels, weights_sha256=sha, method="unet")


QUALITY_TOLERANCE: dict[QualityProblem, QualityGrade] = {
    "noise": "severe",
    "blur": "severe",
    "jpeg_artefacts": "severe",
    "low_contrast": "moderate",
}
"""Image-quality problems the heart/lung segmenters' CTR withstands, up to the grade: on 20 phantom
radiographs under each degradation of ``bench/degradation_calibration.py --task cardiomegaly`` the CTR
error stayed that of the clean images (heart and lung borders are tens of pixels wide; the UNet
works at 128 px). Severely low contrast is not tolerated."""


def _checked_masks(
    masks: list[np.ndarray],
    flags: list[str],
    pixels: np.ndarray,
    *,
    weights_sha256: str | None,
    method: Literal["unet", "classical"],
) -> HeartLungMasks:
    """The output model of (heart, right lung, left lung) masks of ``pixels``, after the checks every
    segmenter shares, with the image's quality flags."""
    shape = pixels.shape[:2]
    image_flags = assess_image_quality(pixels).flags_for(QUALITY_TOLERANCE)
    min_area = MIN_AREA_FRACTION * shape[0] * shape[1]
    missing = [name for name, m in zip(STRUCTURES, masks, strict=True) if m.sum() < min_area]
    if missing:
        raise ToolError(
            f"no {', '.join(n.replace('_', ' ') for n in missing)} found in the radiograph",
            flags=(*(f"{n}_not_found" for n in missing), *image_flags),
        )
    heart, right, left = masks
    cols = np.arange(shape[1])
    if (cols * right).sum() / right.sum() > (cols * left).sum() / left.sum():
        flags.append("lung_sides_swapped")
    if (heart & (right | left)).sum() > 0.05 * heart.sum():
        flags.append("heart_overlaps_lungs")
    if pixels.ndim == 3:
        flags.append("colour_input")
    flags.extend(image_flags)
    return HeartLungMasks(
        heart_mask=save_artifact(heart, "mask"),
        right_lung_mask=save_artifact(right, "mask"),
        left_lung_mask=save_artifact(left, "mask"),
        heart_area_px=int(heart.sum()),
        right_lung_area_px=int(right.sum()),
        left_lung_area_px=int(left.sum()),
        quality_flags=flags,
        weights_sha256=weights_sha256,
        method=method,
    )


LEARNED_CTR_ERROR = ErrorModel(
    bias=0.0025,
    sd=0.0310,
    n=99,
    source="Wingspan dev, 99 PA radiographs with a reference CTR, 5-fold CV of the weights (bench/cxr_ctr_eval.py)",
)
"""CTR error of the UNet's masks: each radiograph segmented by the fold model that never saw it
(MAE 0.0210, cardiomegaly label right on 92.9%; the weights' lock entry records the same figures)."""
CLASSICAL_CTR_ERROR = ErrorModel(
    bias=0.0001,
    sd=0.0461,
    n=99,
    source="Wingspan dev, 99 PA radiographs with a reference CTR, no fitting (bench/cxr_ctr_eval.py)",
)
"""CTR error of the classical segmenter's masks (MAE 0.0311, label right on 90.9%)."""


@tool(
    name="segment_heart_lungs",
    method="learned",
    version="0.3.0",
    modalities=("cxr",),
    dims=("2d",),
    device="any",
    batchable=True,
    batch_fn=_segment_batch,
    error_models={"ctr": LEARNED_CTR_ERROR},
    domain_check=(
        "out_of_domain when the network's own output is unlike that of the radiographs it learned from: "
        "probabilities of 0.2-0.8 over more than 45% of the confident (> 0.5) pixels, a heart area under 1% "
        "or over 25% of the image, lungs under 3% or over 60%, a heart/lung area ratio outside 0.12-1, one "
        "lung under 35% of the other, the heart's centre outside the lower half of the lungs' height, or "
        "the heart not between the lungs"
    ),
)
def segment_heart_lungs(inp: SegmentHeartLungsInput) -> HeartLungMasks:
    """Segment the heart and both lungs in a frontal (PA) chest radiograph with a small learned UNet.

    The network (trained by dxgraph on 121 Wingspan radiographs, each sample re-rendered as other
    sites vary: zoom in and out, crops, collimation, rotation, gamma, window, illumination, the
    image-quality ladder, and drawn in the phantoms' style) predicts at 128x128, averaged over five
    test-time views (zoom 0.9/1/1.1, shift +-3%); probabilities are resized to the full image, thresholded at 0.5 and cleaned to the largest connected component of
    each structure with holes filled. The patient's right lung is the one on the image's left.
    Fails with a ToolError (``heart_not_found``, ``right_lung_not_found``...) when a structure is absent.
    Flags ``out_of_domain`` (with ``domain_<reason>``) when its own output is unlike that of the
    radiographs it learned from: uncertain edges, implausible areas, or the heart not between the lungs.
    """
    return _segment_batch([inp])[0]


# ---------------------------------------------------------------- segment_heart_lungs_classical


@tool(
    name="segment_heart_lungs_classical",
    method="classical",
    version="0.1.0",
    modalities=("cxr",),
    dims=("2d",),
    device="cpu",
    error_models={"ctr": CLASSICAL_CTR_ERROR},
)
def segment_heart_lungs_classical(inp: SegmentHeartLungsInput) -> HeartLungMasks:
    """Segment the heart and both lungs in a frontal chest radiograph classically (no learned weights).

    Lungs are the large dark fields inside the body (CLAHE, Otsu threshold, erosion to cut them from
    the background, the largest component each side of the midline); their outer edges snap to the
    chest wall's intensity step. The heart is the mediastinal soft tissue between the lungs' medial
    edges, from below the hilum down to each lung's cardiophrenic angle. Fails with a ToolError
    (``lungs_not_found``, ``heart_not_found``) when no lung pair or heart border is found.
    """
    from dxgraph.tools import _cxr_classical  # scipy: imported when a radiograph is segmented

    pixels = load_image(inp.image)
    try:
        seg = _cxr_classical.segment(to_grey(pixels))
    except _cxr_classical.SegmentationFailed as e:
        flags = (e.flag, *assess_image_quality(pixels).flags_for(QUALITY_TOLERANCE))
        raise ToolError(f"classical heart/lung segmentation failed: {e}", flags=flags) from None
    masks = [seg.heart, seg.right_lung, seg.left_lung]
    return _checked_masks(masks, list(seg.flags), pixels, weights_sha256=None, method="classical")


# ---------------------------------------------------------------- measure_cardiothoracic_ratio


class CardiothoracicInput(ToolModel):
    """Input of measure_cardiothoracic_ratio."""

    image: ImageRef
    """The radiograph the masks belong to (for its pixel spacing)."""
    heart_mask: ArtifactRef
    """Binary mask of the cardiac silhouette."""
    right_lung_mask: ArtifactRef
    """Binary mask of the patient's right lung."""
    left_lung_mask: ArtifactRef
    """Binary mask of the patient's left lung."""


class CardiothoracicMeasurements(ToolModel):
    """The cardiothoracic ratio and the widths it comes from."""

    ctr: float = Field(ge=0, json_schema_extra={"unit": "1"})
    """Cardiothoracic ratio: maximal horizontal heart width over maximal horizontal thorax width."""
    heart_width_px: int = Field(ge=0)
    """Maximal horizontal width of the heart (leftmost to rightmost heart column, inclusive), px."""
    thorax_width_px: int = Field(ge=0)
    """Maximal horizontal width of the thorax at the outer edges of the two lungs, px."""
    heart_width_mm: float | None = Field(default=None, ge=0)
    """Heart width in mm, when the image spacing is known."""
    thorax_width_mm: float | None = Field(default=None, ge=0)
    """Thorax width in mm, when the image spacing is known."""
    heart_x_range_px: tuple[int, int]
    """First and last image column of the heart (inclusive), for drawing."""
    thorax_x_range_px: tuple[int, int]
    """First and last image column of the lungs (inclusive), for drawing."""
    quality_flags: list[str]
    """Machine-readable warnings about the measurement."""


@tool(
    name="measure_cardiothoracic_ratio", method="geometry", version="0.1.0", modalities=("cxr",), dims=("2d",)
)
def measure_cardiothoracic_ratio(inp: CardiothoracicInput) -> CardiothoracicMeasurements:
    """Measure the cardiothoracic ratio (CTR) of a frontal chest radiograph from heart and lung masks.

    CTR = maximal horizontal width of the heart / maximal horizontal width of the thorax, the latter
    taken at the outer edges of the two lungs (their joint leftmost to rightmost column). Pure
    geometry on the masks; widths are also given in mm when the image has a pixel spacing. On an AP
    film (``image.view == "AP"``) the heart is magnified and the CTR overestimated: flagged
    ``ap_view_ctr_overestimates``.
    """
    heart = load_artifact(inp.heart_mask).astype(bool)
    right = load_artifact(inp.right_lung_mask).astype(bool)
    left = load_artifact(inp.left_lung_mask).astype(bool)
    if not heart.shape == right.shape == left.shape or heart.ndim != 2:
        raise ToolError(
            f"heart {heart.shape}, right lung {right.shape} and left lung {left.shape} masks differ",
            flags=("mask_mismatch",),
        )
    for name, m in (("heart", heart), ("right_lung", right), ("left_lung", left)):
        if not m.any():
            raise ToolError(f"the {name.replace('_', ' ')} mask is empty", flags=(f"empty_{name}_mask",))
    h0, h1 = column_range(heart)
    t0, t1 = column_range(right | left)
    heart_w, thorax_w = h1 - h0 + 1, t1 - t0 + 1
    flags = []
    if h0 < t0 or h1 > t1:
        flags.append("heart_wider_than_lungs")
    if column_range(right)[0] > column_range(left)[0]:
        flags.append("lung_sides_swapped")
    if (inp.image.view or "").upper() == "AP":
        flags.append("ap_view_ctr_overestimates")  # magnified heart on an AP film: CTR > 0.5 is not reliable
    spacing = inp.image.spacing_mm
    col_mm = float(spacing[1]) if spacing else None  # (row, col) spacing of a 2D image
    return CardiothoracicMeasurements(
        ctr=cardiothoracic_ratio(heart, right, left),
        heart_width_px=heart_w,
        thorax_width_px=thorax_w,
        heart_width_mm=heart_w * col_mm if col_mm else None,
        thorax_width_mm=thorax_w * col_mm if col_mm else None,
        heart_x_range_px=(h0, h1),
        thorax_x_range_px=(t0, t1),
        quality_flags=flags,
    )
