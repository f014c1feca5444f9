"""Learned optic disc and cup segmentation: a small UNet on a window around the optic disc.

The pipeline, shared by training (``dxgraph.tools.training.fundus``) and the tool:

1. **Window.**  The classical locator (brightness and vessel convergence) gives the disc centre and an
   approximate radius.  Should it find no disc-like blob, the brightest region of the blurred red + green
   image is used instead.  Weights whose metadata hold ``window_disc_diameters`` (two-pass weights) get a
   square window of that many locator disc diameters; older weights a window of ``WINDOW_FRACTION`` of
   the image width.  Parts outside the image are black, so a disc-centred crop (no dark surround) is
   measured like a full photograph.
2. **Network input.**  The window is resampled to the input size and each colour channel is
   standardised (zero mean, unit variance inside the window).
3. **Masks.**  The two sigmoid outputs (disc, cup), averaged with those of the left-right mirrored
   input, are resampled back into the window at full resolution, thresholded at 0.5, reduced to their
   largest connected component with holes filled; the cup is kept inside the disc.
4. **Re-cut.**  While the disc found does not sit in its window at the window-to-disc ratio the weights
   were trained at (``SINGLE_PASS_RATIO_RANGE`` for single-pass weights; always once for two-pass
   weights), the window is re-cut around it at that ratio and segmented again (at most ``MAX_PASSES``
   windows): a disc-centred crop or another camera's field is then seen at the trained scale, while a
   photograph like the training ones keeps its single pass.
5. **Input-domain check.**  A last pass re-centred on the disc found, at the same window side, must
   agree with it (disc overlap, vCDR), the disc must be a compact oval, and few pixels may be uncertain;
   otherwise the output carries the quality flag ``out_of_domain`` (``DOMAIN_LIMITS``).
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
from dxgraph.tools._registry import OUT_OF_DOMAIN_FLAG, ErrorModel, tool
from dxgraph.tools._torch_runtime import load_packaged_model
from dxgraph.tools._weights import PACKAGED_WEIGHTS_DIR
from dxgraph.tools.fundus import DiscCupMasks, SegmentDiscCupInput

if TYPE_CHECKING:
    import torch

WEIGHTS_PATH = PACKAGED_WEIGHTS_DIR / "fundus_disc_cup_unet.pt"
"""The shipped weights of the disc/cup UNet."""
WINDOW_FRACTION = 0.35
"""Side of the square window around the disc, as a fraction of the image width (single-pass weights, and
the two-pass weights' first window when the locator finds no disc)."""
WINDOW_DISC_DIAMETERS = 1.8
"""Side of the square window over the disc diameter, for the two-pass weights trained here."""
SINGLE_PASS_WINDOW_DISC_DIAMETERS = 1.94
"""Window side over disc diameter that single-pass weights (window ``WINDOW_FRACTION`` of the width) were
trained at: the median over the Drishti-GS1 photographs (1.39-2.30, scaled by 0.9-1.1 in training)."""
SINGLE_PASS_RATIO_RANGE = (1.7, 2.2)
"""Window side over found disc diameter that single-pass weights saw in training; outside it (a disc-centred
crop, a camera with another field of view) the window is re-cut at ``SINGLE_PASS_WINDOW_DISC_DIAMETERS``."""
MAX_PASSES = 4
"""Most windows cut for one image: a disc larger than the first window grows it about 2-fold per pass."""
INPUT_SIZE_PX = 128
"""Side of the network input of the packaged single-pass weights, px (weights record theirs in metadata)."""
TWO_PASS_INPUT_SIZE_PX = 96
"""Side of the network input of two-pass weights trained by ``dxgraph.tools.training.fundus``, px."""
DOMAIN_LIMITS: dict[str, tuple[float, float]] = {
    "pass_disc_iou": (0.85, 1.0),
    "pass_vcdr_change": (0.0, 0.08),
    "disc_solidity": (0.93, 1.0),
    "disc_aspect_ratio": (0.7, 1.45),
    "uncertain_fraction": (0.0, 0.25),
}
"""In-domain range of each domain measure (``domain_measures``); a value outside any of them raises the
flag ``out_of_domain``. Set from the measures' spread over the 50 Drishti-GS1 photographs under 5-fold
cross-validation (``bench/fundus_segmentation_eval.py --unet-folds``): every photograph lies inside the
first four ranges (disc IoU >= 0.91, vCDR change <= 0.042, solidity >= 0.96, aspect 0.88-1.26); the
uncertain share sits at about their 95th percentile (0.23; 2 of 50 photographs above it). Flagged: 16
of the benchmark's 20 phantoms, which the packaged weights read with vCDR MAE 0.21."""
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
    domain: dict[str, float] = field(default_factory=dict)
    """Input-domain measures (``domain_measures``); empty when no disc was found."""


def brightest_centre_xy(rgb: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of the brightest region of the heavily blurred red + green image."""
    import cv2

    img = rgb[..., 0].astype(np.float32) * 0.5 + rgb[..., 1].astype(np.float32)
    sigma = max(1.0, _FALLBACK_BLUR_FRACTION * rgb.shape[1])
    blurred = cv2.GaussianBlur(img, (0, 0), sigma)
    y, x = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
    return float(x), float(y)


def disc_window(
    rgb: np.ndarray, window_fraction: float = WINDOW_FRACTION, disc_diameters: float | None = None
) -> tuple[Window, float, list[str]]:
    """The window around the optic disc, the locator's confidence and flags; ToolError if not a fundus.

    With ``disc_diameters`` the side is that many of the locator's disc diameters; else (and when the
    locator finds no disc) ``window_fraction`` of the image width.
    """
    flags: list[str] = []
    radius: float | None = None
    try:
        (cx, cy), radius, confidence = locate_optic_disc(rgb)
    except SegmentationError as e:
        if tuple(e.flags) != ("disc_not_found",):  # blank, uniform, not a fundus photograph...
            raise ToolError(str(e), flags=tuple(e.flags)) from None
        (cx, cy), confidence = brightest_centre_xy(rgb), 0.0
        flags.append("locator_fallback")
    if disc_diameters is not None and radius is not None:
        side = max(16, round(disc_diameters * 2.0 * radius))
    else:
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
    rgb: np.ndarray,
    *,
    window_fraction: float = WINDOW_FRACTION,
    size_px: int = INPUT_SIZE_PX,
    disc_diameters: float | None = None,
) -> Prepared:
    """Locate the disc, cut the window around it and make the network input."""
    window, confidence, flags = disc_window(rgb, window_fraction, disc_diameters)
    x = normalise(crop_window(rgb, window, size_px))
    return Prepared(x, window, (int(rgb.shape[0]), int(rgb.shape[1])), confidence, flags)


def refine(
    rgb: np.ndarray, first: Segmentation, prep: Prepared, disc_diameters: float | None, size_px: int
) -> Prepared:
    """The second pass's input: a window around the first pass's disc, ``disc_diameters`` of its diameter
    on a side (None: the first window's side)."""
    cx, cy = geo.centroid_xy(first.disc)
    diameter = max(geo.bbox_height_px(first.disc), geo.bbox_width_px(first.disc))
    side = prep.window.side_px if disc_diameters is None else max(16, round(disc_diameters * diameter))
    window = Window(round(cx - side / 2), round(cy - side / 2), side)
    x = normalise(crop_window(rgb, window, size_px))
    return Prepared(x, window, prep.shape, prep.locator_confidence, list(prep.flags))


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


def vcdr_of(disc: np.ndarray, cup: np.ndarray) -> float:
    """Vertical cup-to-disc ratio as measure_cup_disc computes it (bounding-box heights; 0 without a disc)."""
    disc_h = geo.bbox_height_px(disc)
    return min(geo.bbox_height_px(cup & disc) / disc_h, 1.0) if disc_h else 0.0


def domain_measures(first: Segmentation, second: Segmentation, prob: np.ndarray) -> dict[str, float]:
    """Cheap input-domain measures from the network's own outputs: ``second`` (the masks returned) and
    ``first`` (a pass re-centred on it, whose (2, S, S) probabilities are ``prob``). The passes' disc
    overlap and vCDR change, the returned disc's solidity and aspect ratio, and the share of uncertain
    pixels (probability 0.25-0.75) relative to the disc's area."""
    import cv2

    union = int((first.disc | second.disc).sum())
    iou = float((first.disc & second.disc).sum()) / union if union else 0.0
    disc = second.disc.astype(np.uint8)
    contours, _ = cv2.findContours(disc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = max((cv2.contourArea(cv2.convexHull(c)) for c in contours), default=0.0)
    solidity = float(disc.sum()) / hull_area if hull_area > 0 else 0.0
    width = geo.bbox_width_px(second.disc)
    disc_net_px = max(float((prob[0] > THRESHOLD_PROBABILITY).sum()), 1.0)
    uncertain = float(((prob > 0.25) & (prob < 0.75)).any(axis=0).sum()) / disc_net_px
    return {
        "pass_disc_iou": iou,
        "pass_vcdr_change": abs(vcdr_of(first.disc, first.cup) - vcdr_of(second.disc, second.cup)),
        "disc_solidity": min(solidity, 1.0),
        "disc_aspect_ratio": geo.bbox_height_px(second.disc) / width if width else 0.0,
        "uncertain_fraction": uncertain,
    }


def out_of_domain(domain: dict[str, float]) -> list[str]:
    """The domain measures outside their in-domain range (``DOMAIN_LIMITS``)."""
    return [k for k, (lo, hi) in DOMAIN_LIMITS.items() if k in domain and not lo <= domain[k] <= hi]


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


def _disc_diameter_px(mask: np.ndarray) -> int:
    """Larger side of a mask's bounding box, px."""
    return max(geo.bbox_height_px(mask), geo.bbox_width_px(mask))


def _run(net: torch.nn.Module, preps: list[Prepared]) -> list[tuple[Segmentation, np.ndarray]]:
    """Masks and the (2, S, S) probabilities of each prepared window, one forward pass for all."""
    probs = probabilities(net, np.stack([p.x for p in preps]))
    return [(postprocess(prob, prep), prob) for prob, prep in zip(probs, preps, strict=True)]


def segment_batch(
    rgbs: list[np.ndarray], net: torch.nn.Module, meta: dict[str, Any] | None = None
) -> list[Segmentation]:
    """Segment several RGB photographs, one forward pass of the network per pass over all of them.

    The first window follows the weights' metadata (``window_disc_diameters`` of the locator's disc, or
    ``window_fraction`` of the width). It is re-cut around the disc found, at the weights' window-to-disc
    ratio, while that disc does not sit in the window at a ratio the weights were trained at (always once
    for two-pass weights; for single-pass weights only outside ``SINGLE_PASS_RATIO_RANGE``, so a full
    photograph like the training ones keeps its single-pass masks). A last pass, re-centred at the final
    window's side, gives the input-domain measures (``domain_measures``).
    """
    meta = meta or {}
    fraction = float(meta.get("window_fraction", WINDOW_FRACTION))
    size = int(meta.get("input_size_px", INPUT_SIZE_PX))
    raw = meta.get("window_disc_diameters")
    diameters = None if raw is None else float(raw)
    target = diameters if diameters is not None else SINGLE_PASS_WINDOW_DISC_DIAMETERS
    lo, hi = (0.0, 0.0) if diameters is not None else SINGLE_PASS_RATIO_RANGE
    preps = [prepare(rgb, window_fraction=fraction, size_px=size, disc_diameters=diameters) for rgb in rgbs]
    results = _run(net, preps)
    for _ in range(MAX_PASSES - 1):
        todo = []
        for i, (seg, _prob) in enumerate(results):
            if seg.disc.any() and not lo <= preps[i].window.side_px / _disc_diameter_px(seg.disc) <= hi:
                todo.append(i)
        if not todo:
            break
        again = [refine(rgbs[i], results[i][0], preps[i], target, size) for i in todo]
        for i, prep, res in zip(todo, again, _run(net, again), strict=True):
            preps[i], results[i] = prep, res
        lo, hi = (target / 1.3, target * 1.3) if diameters is not None else (lo, hi)
    out = [seg for seg, _ in results]
    found = [i for i, seg in enumerate(out) if seg.disc.any()]
    if found:
        probes = [refine(rgbs[i], out[i], preps[i], None, size) for i in found]
        for i, (probe, prob) in zip(found, _run(net, probes), strict=True):
            seg = out[i]
            domain = domain_measures(probe, seg, prob)
            flags = seg.flags + ([OUT_OF_DOMAIN_FLAG] if out_of_domain(domain) else [])
            out[i] = Segmentation(
                seg.disc,
                seg.cup,
                seg.mean_disc_probability,
                seg.mean_cup_probability,
                seg.locator_confidence,
                flags,
                domain,
            )
    return out


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
            **{f"domain_{k}": v for k, v in seg.domain.items()},
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


LEARNED_ERROR_MODELS = {
    "vcdr": ErrorModel(
        bias=0.025,
        sd=0.0761,
        n=50,
        source="Drishti-GS1 dev, 50 photographs against the experts' mean vCDR, 5-fold CV of the packaged "
        "weights' recipe (each photograph measured by weights that never saw it); "
        "bench/fundus_segmentation_eval.py --unet-folds",
    ),
    "rim_to_disc_ratio": ErrorModel(
        bias=-0.0107,
        sd=0.0371,
        n=50,
        source="Drishti-GS1 dev, 50 photographs against the same measure on the experts' majority masks, "
        "5-fold CV of the packaged weights' recipe; bench/fundus_segmentation_eval.py --unet-folds",
    ),
}
"""The measured error of the values measured from the learned segmenter's masks (``measure_cup_disc``)."""


@tool(
    name="segment_optic_disc_cup_unet",
    method="learned",
    version="0.2.0",
    modalities=("fundus",),
    dims=("2d",),
    device="any",
    batchable=True,
    batch_fn=segment_optic_disc_cup_unet_batch,
    error_models=LEARNED_ERROR_MODELS,
    domain_check=(
        "out_of_domain when a pass re-centred on the disc found disagrees with it (disc IoU, vCDR change), "
        "the disc is not a compact oval (solidity, aspect ratio) or too many pixels are uncertain "
        "(probability 0.25-0.75); limits in DOMAIN_LIMITS, none crossed by the Drishti-GS1 photographs "
        "under cross-validation"
    ),
)
def segment_optic_disc_cup_unet(inp: SegmentDiscCupInput) -> DiscCupMasks:
    """Segment the optic disc and the optic cup in a colour fundus photograph with a learned UNet.

    A small UNet trained by dxgraph on the majority-of-experts masks of the 50 Drishti-GS1
    photographs segments a window around the disc located by brightness and vessel convergence, re-cut
    around the disc found until the disc sits in it at the scale of training (so disc-centred crops are
    measured too); masks are the largest connected components of its predictions, the cup inside the
    disc. Flags ``out_of_domain`` when its input is unlike its training photographs. Returns both masks as
    artifacts, the disc as a region of interest, quality flags and the sha256 of the weights.
    """
    return segment_optic_disc_cup_unet_batch([inp])[0]
