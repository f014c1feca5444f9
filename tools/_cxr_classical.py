"""Classical (no learned weights) heart and lung segmentation of a frontal chest radiograph.

Pure numpy/OpenCV/SciPy; no tool machinery. The image is worked on at ``WORK_SIZE_PX`` square:

1. Lung cores: after a percentile stretch, CLAHE and a Gaussian blur, the lungs are the dark regions
   inside the body. A threshold (Otsu of the central field, made stricter if needed) and an erosion
   (made larger if needed) separate them from the dark background they touch at the neck and
   shoulders; the largest component left and right of the midline that does not touch the image
   border is each lung's core.
2. Edges: on each core row the lateral (chest wall) lung edge is moved to the strongest dark-to-bright
   step of a vertically smoothed image (ribs blur away, the near-vertical wall stays) within a window
   around the core's edge, then ``LATERAL_OFFSET_PX`` outwards (the step's middle lies just inside
   the lung's outer border); the medial (mediastinal) edge is the core's. Both tracks are median filtered.
3. Heart: the mediastinal soft tissue between the two lungs' medial edges, above the diaphragm. Each
   lung's cardiophrenic angle is the inferomedial corner of its medial edge (the point furthest down
   and towards the midline, weighted by ``CORNER_WEIGHT``, searched below the hilum); the heart's
   widest rows lie within ``HEART_HEIGHT_FRACTION`` of the lungs' height above the angles. On those
   rows each heart border is snapped to the strongest lung-to-heart step within
   ``HEART_SEARCH_FRACTION`` of the medial edge (tracks median filtered over ``BORDER_MEDIAN_ROWS``
   only, so that the widest point of a convex border is kept), and the left (ventricular) border is
   moved ``LEFT_HEART_OFFSET_PX`` outwards (its faint step is met short of the silhouette's edge).
   The top ``HEART_TOP_CLAMP_FRACTION`` of the heart rows (great vessels and hila) may not reach
   further out than the rows below them. The heart mask spans, row by row, the two borders.

Side convention as in ``dxgraph.tools.cxr``: the patient's right lung is on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

WORK_SIZE_PX = 256
"""Side of the square working image."""
CLAHE_CLIP = 2.0
"""CLAHE clip limit."""
BLUR_SIGMA_PX = 3.0
"""Gaussian blur of the thresholded image, in working pixels."""
EDGE_SIGMA_Y_PX = 6.0
"""Vertical smoothing of the image whose horizontal gradient places the edges."""
EDGE_SIGMA_X_PX = 1.5
"""Horizontal smoothing of that image."""
LATERAL_SEARCH_FRACTION = (0.10, 0.02)
"""Lateral edge search window: this fraction of the width outside, and inside, the core's edge."""
LATERAL_OFFSET_PX = 1
"""The lateral edge is moved this many working pixels outwards from the chest-wall step."""
LATERAL_MEDIAN_ROWS = 15
"""Rows of the median filter of the lateral edge track (removes jumps to the collimator or scapula)."""
HEART_SEARCH_FRACTION = (0.03, 0.03)
"""Heart border search window: this fraction of the width into the lung, and into the heart."""
BORDER_MEDIAN_ROWS = 3
"""Rows of the median filter of each snapped heart border track."""
LEFT_HEART_OFFSET_PX = 1
"""The left heart border is moved this many working pixels outwards from its step."""
HEART_TOP_CLAMP_FRACTION = 0.3
"""The top fraction of the heart rows whose borders may not reach beyond the rows below."""
HEART_HEIGHT_FRACTION = 0.3
"""The heart's widest rows lie at most this fraction of the lungs' height above the cardiophrenic angle."""
CORNER_BELOW_FRACTION = 0.55
"""The cardiophrenic angle lies below this fraction of the lung's height."""
CORNER_WEIGHT = 0.7
"""Weight of medial position against depth when finding the cardiophrenic angle (1: a 45 degree line)."""
MIN_LUNG_FRACTION = 0.01
"""A lung core smaller than this fraction of the image is not a lung."""


class SegmentationFailed(ValueError):
    """No usable lungs or heart in the image; ``flag`` says which, machine-readably."""

    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


@dataclass(frozen=True)
class ClassicalSegmentation:
    """Full-resolution masks and quality flags of one radiograph."""

    heart: np.ndarray
    """Cardiac silhouette mask (bool, image shape)."""
    right_lung: np.ndarray
    """Patient's right lung (image left), bool."""
    left_lung: np.ndarray
    """Patient's left lung (image right), bool."""
    flags: tuple[str, ...]
    """Machine-readable quality warnings."""


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def normalise(grey: np.ndarray, size: int = WORK_SIZE_PX) -> tuple[np.ndarray, np.ndarray]:
    """The working image (stretched, CLAHE) and its blurred version, both uint8 (size, size)."""
    small = cv2.resize(grey.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(small, (1, 99))
    stretched = np.clip((small - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(CLAHE_CLIP, (8, 8)).apply(stretched)
    return clahe, cv2.GaussianBlur(clahe, (0, 0), BLUR_SIGMA_PX)


def lung_cores(blurred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Cores of the (right, left) lungs: dark, large, inside the body; None when none are found."""
    h, w = blurred.shape
    central = blurred[int(0.15 * h) : int(0.85 * h), int(0.12 * w) : int(0.88 * w)]
    otsu, _ = cv2.threshold(central, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    for factor in (1.0, 0.92, 0.84, 0.76):
        dark = (blurred < otsu * factor).astype(np.uint8)
        for radius in (2, 4, 6, 9, 12):
            found = _two_cores(dark, radius)
            if found is not None:
                return found
    return None


def _two_cores(dark: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The lung cores at one threshold and erosion radius: per side of the midline, the largest dark
    component that does not touch the image border (None unless both sides have one)."""
    h, w = dark.shape
    eroded = cv2.erode(dark, _disk(radius))
    lab, n = ndi.label(eroded)
    if n == 0:
        return None
    on_border = np.zeros(n + 1, bool)
    on_border[np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    idx = np.arange(n + 1)
    sizes = ndi.sum(eroded, lab, idx)
    centres = ndi.center_of_mass(eroded, lab, idx[1:])
    best: dict[str, int] = {}
    for i, (cy, cx) in zip(idx[1:], centres, strict=True):
        if on_border[i] or sizes[i] < MIN_LUNG_FRACTION * h * w or not 0.15 * h < cy < 0.8 * h:
            continue
        side = "right" if cx < w / 2 else "left"
        if side not in best or sizes[i] > sizes[best[side]]:
            best[side] = int(i)
    if len(best) < 2:
        return None
    cores = []
    for side in ("right", "left"):
        core = cv2.dilate((lab == best[side]).astype(np.uint8), _disk(radius + 1)) & dark
        clab, cn = ndi.label(core)
        if cn > 1:
            core = (clab == 1 + int(np.argmax(ndi.sum(core, clab, range(1, cn + 1))))).astype(np.uint8)
        core = cv2.morphologyEx(core, cv2.MORPH_CLOSE, _disk(5))
        cores.append(ndi.binary_fill_holes(core))
    return cores[0], cores[1]


@dataclass(frozen=True)
class LungEdges:
    """Per-row lateral and medial edge columns of one lung (working pixels)."""

    rows: np.ndarray
    """Row indices (increasing, contiguous)."""
    lateral: np.ndarray
    """Column of the outer (chest wall) edge on each row."""
    medial: np.ndarray
    """Column of the inner (mediastinal) edge on each row."""


def edge_gradient(image: np.ndarray) -> np.ndarray:
    """Horizontal gradient of a vertically smoothed image: large where near-vertical walls are."""
    smooth = cv2.GaussianBlur(
        image.astype(np.float32), (0, 0), sigmaX=EDGE_SIGMA_X_PX, sigmaY=EDGE_SIGMA_Y_PX
    )
    return cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)


def _best_in(profile: np.ndarray, lo: float, hi: float, sign: int) -> int:
    lo_i, hi_i = max(0, round(lo)), min(len(profile) - 1, round(hi))
    if hi_i <= lo_i:
        return int(np.clip(round((lo + hi) / 2), 0, len(profile) - 1))
    return lo_i + int(np.argmax(sign * profile[lo_i : hi_i + 1]))


def refine_edges(core: np.ndarray, grad: np.ndarray, side: str) -> LungEdges:
    """Per-row edges of a lung core, the lateral one moved to the strongest chest-wall step near it."""
    w = core.shape[1]
    rows = np.flatnonzero(core.any(axis=1))
    rows = np.arange(rows[0], rows[-1] + 1)
    lat_out, lat_in = (f * w for f in LATERAL_SEARCH_FRACTION)
    lateral: list[int] = []
    medial: list[int] = []
    for y in rows:
        cols = np.flatnonzero(core[y])
        if cols.size == 0:
            lateral.append(lateral[-1] if lateral else 0)
            medial.append(medial[-1] if medial else 0)
            continue
        a, b = cols[0], cols[-1]
        g = grad[y]
        if side == "right":  # image left: wall to the left (brighter leftwards), mediastinum to the right
            lateral.append(_best_in(g, a - lat_out, a + lat_in, -1))
            medial.append(b)
        else:
            lateral.append(_best_in(g, b - lat_in, b + lat_out, +1))
            medial.append(a)
    lateral_a = ndi.median_filter(np.array(lateral, float), size=LATERAL_MEDIAN_ROWS, mode="nearest")
    lateral_a += LATERAL_OFFSET_PX if side == "left" else -LATERAL_OFFSET_PX
    medial_a = ndi.median_filter(np.array(medial, float), size=7, mode="nearest")
    return LungEdges(rows, lateral_a, medial_a)


def heart_span(
    right: LungEdges, left: LungEdges, grad: np.ndarray | None = None
) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """Heart rows (first, last) and, per row, its right (image-left) and left (image-right) borders."""
    top = min(right.rows[0], left.rows[0])
    bottom = max(right.rows[-1], left.rows[-1])
    height = HEART_HEIGHT_FRACTION * (bottom - top)
    r_last = _cardiophrenic_row(right, -1)
    l_last = _cardiophrenic_row(left, +1)
    first = int(max(top, min(r_last, l_last) - height))
    last = max(r_last, l_last)
    ys = np.arange(first, last + 1)
    r_border, l_border = _extend(right, ys, r_last), _extend(left, ys, l_last)
    if grad is not None and any(HEART_SEARCH_FRACTION):
        r_border = _snap_border(r_border, ys, grad, +1)
        l_border = _snap_border(l_border, ys, grad, -1) + LEFT_HEART_OFFSET_PX
    below = ys >= first + HEART_TOP_CLAMP_FRACTION * (last - first)
    r_border = np.maximum(r_border, r_border[below].min())  # top rows: not further out than below
    l_border = np.minimum(l_border, l_border[below].max())
    return first, last, r_border, l_border


def _snap_border(border: np.ndarray, ys: np.ndarray, grad: np.ndarray, medial: int) -> np.ndarray:
    """Heart borders moved, row by row, to the strongest lung-to-heart step near them (median filtered)."""
    w = grad.shape[1]
    into_lung, into_heart = (f * w for f in HEART_SEARCH_FRACTION)
    out = []
    for y, x in zip(ys, border, strict=True):
        lo, hi = (x - into_lung, x + into_heart) if medial > 0 else (x - into_heart, x + into_lung)
        out.append(_best_in(grad[y], lo, hi, medial))
    return ndi.median_filter(np.array(out, float), size=BORDER_MEDIAN_ROWS, mode="nearest")


def _cardiophrenic_row(edges: LungEdges, outward: int) -> int:
    """Row of a lung's cardiophrenic angle: the inferomedial corner of its medial edge below the hilum,
    the point furthest down and towards the midline (maximal row - ``CORNER_WEIGHT`` * outward * column)."""
    score = edges.rows - CORNER_WEIGHT * outward * edges.medial
    score[: int(CORNER_BELOW_FRACTION * len(score))] = -np.inf  # the hilum is not the angle
    return int(edges.rows[int(np.argmax(score))])


def _extend(edges: LungEdges, ys: np.ndarray, last: int) -> np.ndarray:
    """The medial edge on rows ys, held at its value on row ``last`` below it (and clipped to the rows)."""
    idx = np.clip(np.minimum(ys, last) - edges.rows[0], 0, len(edges.rows) - 1)
    return edges.medial[idx]


def _lung_mask(core: np.ndarray, edges: LungEdges, side: str) -> np.ndarray:
    """A lung's working-resolution mask: its core, widened on every row to the refined edges."""
    mask = core.copy()
    cols = np.arange(core.shape[1])
    for y, lat, med in zip(edges.rows, edges.lateral, edges.medial, strict=True):
        lo, hi = (lat, med) if side == "right" else (med, lat)
        mask[y] |= (cols >= lo) & (cols <= hi)
    return mask


def _heart_mask(shape: tuple[int, int], span: tuple[int, int, np.ndarray, np.ndarray]) -> np.ndarray:
    first, last, r_border, l_border = span
    mask = np.zeros(shape, bool)
    cols = np.arange(shape[1])
    for y, lo, hi in zip(range(first, last + 1), r_border, l_border, strict=True):
        mask[y] = (cols >= lo) & (cols <= hi)
    return mask


def _to_full(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5


def segment(grey: np.ndarray) -> ClassicalSegmentation:
    """Heart and lung masks of an 8-bit (or any-depth) grey frontal chest radiograph.

    Raises SegmentationFailed when no pair of lung fields or no heart border is found.
    """
    if grey.ndim != 2:
        raise ValueError(f"need a 2D grey image, got shape {grey.shape}")
    work, blurred = normalise(grey)
    cores = lung_cores(blurred)
    if cores is None:
        raise SegmentationFailed("no pair of dark lung fields inside the body", "lungs_not_found")
    grad = edge_gradient(work)
    right = refine_edges(cores[0], grad, "right")
    left = refine_edges(cores[1], grad, "left")
    flags = []
    if right.lateral.min() >= left.lateral.max() or right.medial.min() >= left.medial.max():
        raise SegmentationFailed("the lung fields are not side by side", "lungs_not_found")
    span = heart_span(right, left, grad)
    if span is None or not np.any(span[2] < span[3]):
        raise SegmentationFailed(
            "no mediastinal soft tissue between the lungs' lower medial edges", "heart_not_found"
        )
    if span[1] - span[0] < 0.1 * WORK_SIZE_PX:
        flags.append("short_heart_border")
    shape = grey.shape[:2]
    return ClassicalSegmentation(
        heart=_to_full(_heart_mask(work.shape, span), shape),
        right_lung=_to_full(_lung_mask(cores[0], right, "right"), shape),
        left_lung=_to_full(_lung_mask(cores[1], left, "left"), shape),
        flags=tuple(flags),
    )
