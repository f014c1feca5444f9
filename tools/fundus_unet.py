"""Learned optic disc and cup segmentation: a small UNet on a crop around the optic disc.

The pipeline, shared by training (``dxgraph.tools.training.fundus``) and the tool:

1. **Window.**  The classical locator (brightness and vessel convergence) gives the disc centre; a
   square window of ``WINDOW_FRACTION`` of the image width is centred there (parts outside the image
   are black).  Should the locator find no disc-like blob, the brightest region of the blurred
   red + green image is used instead.
2. **Network input.**  The window is resampled to ``INPUT_SIZE_PX`` square and each colour channel is
   standardised (zero mean, unit variance inside the window).
3. **Masks.**  The two sigmoid outputs (disc, cup), averaged with those of the left-right mirrored
   input, are resampled back into the window at full
   resolution, thresholded at 0.5, reduced to their largest connected component with holes filled;
   the cup is kept inside the disc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dxgraph.core import RegionOfInterest
from dxgraph.errors import ToolError
from dxgraph.imaging import as_rgb8, assess_image_quality
from dxgraph.tools import _cup_disc_geometry as geo
from dxgraph.tools._context import current_context, load_image, save_artifact
from dxgraph.tools._fundus_segmentation import SegmentationError, locate_optic_disc
from dxgraph.tools._mask_geometry import largest_component_filled
from dxgraph.tools._registry import tool
from dxgraph.tools._torch_runtime import load_packaged_model
from dxgraph.tools._weights import PACKAGED_WEIGHTS_DIR
from dxgraph.tools.fundus import DiscCupMasks, SegmentDiscCupInput

if TYPE_CHECKING:
    import torch

WEIGHTS_PATH = PACKAGED_WEIGHTS_DIR / "fundus_disc_cup_unet.pt"
"""The shipped weights of the disc/cup UNet."""
WINDOW_FRACTION = 0.35
"""Side of the square window around the disc, as a fraction of the image width."""
INPUT_SIZE_PX = 128
"""Side of the network input, px."""
THRESHOLD_PROBABILITY = 0.5
"""A pixel belongs to the disc (cup) when its probability exceeds this."""
_FALLBACK_BLUR_FRACTION = 0.025  # Gaussian sigma of the brightness fallback, fraction of the width


@dataclass(frozen=True)
class Window:
    """A square window in source pixels; it may extend past the image."""

    x0: int
    """Left column (inclusive)."""
    y0: int
    """Top row (inclusive)."""
    side_px: int
    """Side length, px."""


@dataclass(frozen=True)
class Prepared:
    """One photograph made ready for the network."""

    x: np.ndarray
    """Network input, float32 (3, INPUT_SIZE_PX, INPUT_SIZE_PX)."""
    window: Window
    """Where the input was cut from."""
    shape: tuple[int, int]
    """Height and width of the photograph."""
    locator_confidence: float
    """Confidence of the disc locator, 0..1 (0 when the brightness fallback was used)."""
    flags: list[str] = field(default_factory=list)
    """Quality flags raised while preparing."""


@dataclass(frozen=True)
class Segmentation:
    """Disc and cup masks at full resolution, with probabilities for quality measures."""

    disc: np.ndarray
    """Disc mask, bool (H, W)."""
    cup: np.ndarray
    """Cup mask inside the disc, bool (H, W)."""
    mean_disc_probability: float
    """Mean disc probability inside the disc mask (0 when empty)."""
    mean_cup_probability: float
    """Mean cup probability inside the cup mask (0 when empty)."""
    locator_confidence: float
    """Confidence of the disc locator."""
    flags: list[str]
    """Quality flags."""


def brightest_centre_xy(rgb: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of the brightest region of the heavily blurred red + green image."""
    import cv2

    img = rgb[..., 0].astype(np.float32) * 0.5 + rgb[..., 1].astype(np.float32)
    sigma = max(1.0, _FALLBACK_BLUR_FRACTION * rgb.shape[1])
    blurred = cv2.GaussianBlur(img, (0, 0), sigma)
    y, x = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
    return float(x), float(y)


def disc_window(rgb: np.ndarray, window_fraction: float = WINDOW_FRACTION) -> tuple[Window, float, list[str]]:
    """The window around the optic disc, the locator's confidence and flags; ToolError if not a fundus."""
    flags: list[str] = []
    try:
        (cx, cy), _, confidence = locate_optic_disc(rgb)
    except SegmentationError as e:
        if tuple(e.flags) != ("disc_not_found",):  # blank, uniform, not a fundus photograph...
            raise ToolError(str(e), flags=tuple(e.flags)) from None
        (cx, cy), confidence = brightest_centre_xy(rgb), 0.0
        flags.append("locator_fallback")
    side = max(16, round(window_fraction * rgb.shape[1]))
    return Window(round(cx) - side // 2, round(cy) - side // 2, side), float(confidence), flags


def crop_window(arr: np.ndarray, window: Window, size_px: int) -> np.ndarray:
    """The window of an image (H, W[, C]) resampled to size_px square; outside the image is 0."""
    import cv2

    h, w = arr.shape[:2]
    out = np.zeros((window.side_px, window.side_px, *arr.shape[2:]), arr.dtype)
    x0, y0 = window.x0, window.y0
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + window.side_px, w), min(y0 + window.side_px, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if window.side_px > size_px else cv2.INTER_LINEAR
    return cv2.resize(out, (size_px, size_px), interpolation=interp)


def normalise(crop_rgb8: np.ndarray) -> np.ndarray:
    """An RGB crop (S, S, 3) as a float32 network input (3, S, S), each channel standardised."""
    x = crop_rgb8.astype(np.float32).transpose(2, 0, 1)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return np.ascontiguousarray((x - mean) / np.maximum(std, 1.0), dtype=np.float32)


def prepare(
    rgb: np.ndarray, *, window_fraction: float = WINDOW_FRACTION, size_px: int = INPUT_SIZE_PX
) -> Prepared:
    """Locate the disc, cut the window around it and make the network input."""
    window, confidence, flags = disc_window(rgb, window_fraction)
    x = normalise(crop_window(rgb, window, size_px))
    return Prepared(x, window, (int(rgb.shape[0]), int(rgb.shape[1])), confidence, flags)


def to_image(prob: np.ndarray, window: Window, shape: tuple[int, int]) -> np.ndarray:
    """A low-resolution probability map of the window, resampled into a full-size (H, W) float32 map."""
    import cv2

    h, w = shape
    full = cv2.resize(
        prob.astype(np.float32), (window.side_px, window.side_px), interpolation=cv2.INTER_LINEAR
    )
    out = np.zeros((h, w), np.float32)
    x0, y0 = window.x0, window.y0
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + window.side_px, w), min(y0 + window.side_px, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = full[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out


def postprocess(prob: np.ndarray, prep: Prepared, threshold: float = THRESHOLD_PROBABILITY) -> Segmentation:
    """Full-resolution masks from the network's (2, S, S) disc/cup probabilities."""
    disc_p, cup_p = to_image(prob[0], prep.window, prep.shape), to_image(prob[1], prep.window, prep.shape)
    disc = largest_component_filled(disc_p > threshold)
    cup = largest_component_filled((cup_p > threshold) & disc)
    flags = list(prep.flags)
    if not cup.any():
        flags.append("cup_not_found")
    return Segmentation(
        disc=disc,
        cup=cup,
        mean_disc_probability=float(disc_p[disc].mean()) if disc.any() else 0.0,
        mean_cup_probability=float(cup_p[cup].mean()) if cup.any() else 0.0,
        locator_confidence=prep.locator_confidence,
        flags=flags,
    )


def probabilities(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Sigmoid outputs (N, 2, S, S) for inputs (N, 3, S, S), averaged with those of the mirrored inputs.

    The inputs and their left-right mirror images go through the network in one forward pass.
    """
    import torch

    device = next(net.parameters()).device
    both = np.concatenate([x, x[..., ::-1]])  # with the mirror images: one pass, flip-averaged output
    with torch.inference_mode():
        prob = (
            torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(both)).to(device))).float().cpu().numpy()
        )
    n = len(x)
    return np.asarray((prob[:n] + prob[n:, ..., ::-1]) / 2, np.float32)


def segment_batch(
    rgbs: list[np.ndarray], net: torch.nn.Module, meta: dict[str, Any] | None = None
) -> list[Segmentation]:
    """Segment several RGB photographs with one forward pass of the network."""
    meta = meta or {}
    fraction = float(meta.get("window_fraction", WINDOW_FRACTION))
    size = int(meta.get("input_size_px", INPUT_SIZE_PX))
    preps = [prepare(rgb, window_fraction=fraction, size_px=size) for rgb in rgbs]
    probs = probabilities(net, np.stack([p.x for p in preps]))
    return [postprocess(prob, prep) for prob, prep in zip(probs, preps, strict=True)]


def _to_output(seg: Segmentation, rgb: np.ndarray, greyscale: bool, weights_sha256: str) -> DiscCupMasks:
    """The tool's output for one segmentation of ``rgb``; ToolError when no disc was found."""
    image_quality = assess_image_quality(rgb)
    if not seg.disc.any():
        raise ToolError(
            "the disc/cup network found no optic disc in the window around the brightest region",
            flags=("disc_not_found", *image_quality.flags),
        )
    flags = list(seg.flags) + (["greyscale_input"] if greyscale else []) + image_quality.flags
    area = int(seg.disc.sum())
    return DiscCupMasks(
        disc_mask=save_artifact(seg.disc, "mask"),
        cup_mask=save_artifact(seg.cup, "mask"),
        roi=RegionOfInterest(
            label="optic_disc", center_xy=geo.centroid_xy(seg.disc), radius_px=float(np.sqrt(area / np.pi))
        ),
        disc_area_px=area,
        localisation_confidence=min(max(seg.mean_disc_probability, 0.0), 1.0),
        quality={
            "mean_disc_probability": seg.mean_disc_probability,
            "mean_cup_probability": seg.mean_cup_probability,
            "locator_confidence": seg.locator_confidence,
            **image_quality.measures,
        },
        quality_flags=flags,
        weights_sha256=weights_sha256,
    )


def segment_optic_disc_cup_unet_batch(inputs: list[SegmentDiscCupInput]) -> list[DiscCupMasks]:
    """segment_optic_disc_cup_unet on several photographs with one forward pass."""
    if not inputs:
        return []
    net, meta, sha = load_packaged_model(WEIGHTS_PATH, current_context().device)
    pixels = [load_image(inp.image) for inp in inputs]
    rgbs = [as_rgb8(p) for p in pixels]
    segs = segment_batch(rgbs, net, meta)
    return [_to_output(s, rgb, p.ndim == 2, sha) for s, rgb, p in zip(segs, rgbs, pixels, strict=True)]


@tool(
    name="segment_optic_disc_cup_unet",
    method="learned",
    version="0.1.0",
    modalities=("fundus",),
    dims=("2d",),
    device="any",
    batchable=True,
    batch_fn=segment_optic_disc_cup_unet_batch,
)
def segment_optic_disc_cup_unet(inp: SegmentDiscCupInput) -> DiscCupMasks:
    """Segment the optic disc and the optic cup in a colour fundus photograph with a learned UNet.

    A small UNet trained by dxgraph on the majority-of-experts masks of the 50 Drishti-GS1
    photographs segments a crop around the disc located by brightness and vessel convergence; masks
    are the largest connected components of its predictions, the cup inside the disc. Returns both masks as
    artifacts, the disc as a region of interest, quality flags and the sha256 of the weights.
    """
    return segment_optic_disc_cup_unet_batch([inp])[0]
