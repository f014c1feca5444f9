"""Classical optic disc and optic cup segmentation for colour fundus photographs.

No learned weights.  The pipeline:

1. **Field of view and sanity checks.**  The FOV is the largest bright region; an image that is
   blank, uniform, tiny or not red-dominant (not a colour fundus photograph) is refused with a
   :class:`SegmentationError`.  A disc-centred crop (no dark surround) is one field of view filling
   the frame.
2. **Localisation** (long side resampled to 512 px).  At several radii (fractions of the FOV
   diameter) a bright-blob score -- mean of a vessel-free brightness image in a disk minus its mean
   in the surrounding ring -- is multiplied by the density of dark vessels converging there.  The
   best peak gives centre and approximate radius; its margin over the best peak elsewhere gives a
   confidence.
3. **Canonical crop.**  A square crop around the disc is resampled so that the disc radius is
   ``_CANON_RADIUS_PX``; vessels are found by a black top-hat on green and inpainted.
4. **Disc boundary.**  In polar coordinates around the current centre, the closed path of largest
   outward brightness drop (red; red + green where red is clipped) is found by dynamic programming
   with a smoothness constraint; a robust ellipse fit to it is the disc.  Two passes, the second
   re-centred on the first.
5. **Cup.**  Rays are cast from the centre of the pallor (brightest tenth of the disc interior,
   green channel).  Along each ray the local rim level is the median green value between 0.85 and
   0.95 of the way to the disc margin; the cup margin is where the contiguous pallor run from the
   centre first drops below ``rim + _CUP_LEVEL * (pallor - rim)`` -- near the foot of the pallor
   slope rather than its midpoint, since the clinical cup margin lies outside the area of pallor.
   Vessel pixels are treated as missing data, rays whose margin is hidden under a vessel are left
   out, and a robust ellipse fit to the remaining margins is the cup.

Where no disc can be found the segmenter refuses rather than return a wrong one: no bright,
vessel-rich blob, a boundary search that diverges, an implausible disc shape, a disc wider than
``_MAX_DISC_TO_FOV`` of a round field of view, a weak or broken disc margin, or a rim hidden by vessels.

Known limits: the cup is a pallor estimate, so it tends to be smaller than an expert's
contour-based cup in glaucomatous discs with sloping walls (vCDR biased low by a few hundredths)
and too large in healthy discs that are pale all over; peripapillary atrophy or a very pale disc
can pull the disc margin outward.

Everything runs at fixed internal resolutions, so the cost hardly depends on the input size.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "DiscCupSegmentation",
    "SegmentationError",
    "locate_optic_disc",
    "segment_disc_cup",
]

Ellipse = tuple[tuple[float, float], tuple[float, float], float]  # cv2: centre, full axes, angle (deg)

_MIN_SIDE_PX = 64
_LOC_LONG_SIDE_PX = 512  # long side of the image used for localisation
_RADIUS_FRACTIONS = (0.04, 0.055, 0.075, 0.1, 0.14, 0.19)  # disc radius / FOV diameter searched
_MIN_LOC_SCORE = 0.5  # below this no bright, vessel-rich blob stands out: no disc
_LOW_CONFIDENCE = 0.3  # localisation: a runner-up blob scores over 70% of the best one
_MAX_WEAK_EDGE = 0.25  # a disc margin drops in brightness on at least 3/4 of its length
_CANON_RADIUS_PX = 64.0  # disc radius in the canonical crop
_CROP_HALF_RADII = 2.5  # half size of the canonical crop, in disc radii
_N_ANGLES = 128
_VESSEL_SE_RADII = 0.25  # top-hat structuring element radius, in disc radii (vessels up to half a radius)
_CUP_LEVEL = 0.2  # cup margin: this fraction of the pallor contrast above the local rim level
_RIM_BAND = (0.85, 0.95)  # where along a ray (fraction of the disc radius) the rim level is read
_MAX_HIDDEN_GAP = 4  # samples (of 64 per radius) a cup margin may hide under a vessel
_SURROUND_FOV_FRACTION = 0.9  # a field of view covering less of the image lies on a dark surround
_MAX_DISC_TO_FOV = (
    0.45  # a disc wider than this share of a round field is not one (45° fields: ~0.1-0.2, 20°: ~0.3)
)


class SegmentationError(ValueError):
    """No plausible optic disc in the image; ``flags`` says why, machine-readably."""

    def __init__(self, message: str, *, flags: tuple[str, ...] = ("disc_not_found",)) -> None:
        super().__init__(message)
        self.flags: tuple[str, ...] = tuple(flags)


@dataclass(frozen=True)
class DiscCupSegmentation:
    """Disc and cup masks at the input resolution, with geometry and quality measures.

    ``quality`` holds, among others: ``localisation_confidence`` (0..1, margin of the disc blob over
    the runner-up), ``disc_edge_strength`` (median normalised outward drop along the disc margin,
    about 1.3-3 on good photographs), ``disc_edge_weak_fraction``, ``disc_ellipse_residual``,
    ``disc_near_fov_edge_fraction``, ``fov_fraction``, ``cup_rim_contrast`` (relative green pallor
    contrast, about 0.25-0.6), ``cup_margin_visible_fraction`` (rays whose cup margin was seen, not
    hidden by vessels) and ``cup_to_disc_area_ratio``.  ``flags`` may contain
    ``low_localisation_confidence``, ``low_disc_contrast``, ``disc_boundary_irregular``,
    ``disc_at_fov_edge``, ``disc_cut_by_image_border``, ``cup_boundary_weak`` and
    ``cup_reaches_rim_band`` (thin rim: the cup extent is a lower bound).
    """

    disc_mask: np.ndarray
    cup_mask: np.ndarray
    disc_center_xy: tuple[float, float]
    disc_radius_px: float
    quality: dict[str, float]
    flags: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# input checks and field of view
# --------------------------------------------------------------------------------------------


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB array and return it as float32."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise SegmentationError(f"expected an HxWx3 RGB array, got shape {shape}", flags=("bad_input",))
    if rgb.dtype != np.uint8:
        raise SegmentationError(f"expected uint8 RGB, got dtype {rgb.dtype}", flags=("bad_input",))
    if min(rgb.shape[:2]) < _MIN_SIDE_PX:
        raise SegmentationError(
            f"image {rgb.shape[1]}x{rgb.shape[0]} px is smaller than {_MIN_SIDE_PX} px on a side",
            flags=("image_too_small", "disc_not_found"),
        )
    return rgb.astype(np.float32)


def _disk(radius_px: float) -> np.ndarray:
    """Disk-shaped structuring element of the given radius."""
    r = max(1, round(radius_px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _fov_mask(img: np.ndarray) -> np.ndarray:
    """Field-of-view mask: the largest bright connected region, holes filled, edge halo removed."""
    v = cv2.GaussianBlur(img.max(axis=2), (0, 0), 2.0)
    hi = float(np.percentile(v, 99.0))
    if hi < 20.0:
        raise SegmentationError("image is (nearly) black", flags=("blank_image", "disc_not_found"))
    mask = (v > max(10.0, 0.12 * hi)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        raise SegmentationError("no field of view found", flags=("no_fov", "disc_not_found"))
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == biggest).astype(np.uint8)
    # fill holes: background components that do not touch the border
    _, lab2 = cv2.connectedComponents(1 - mask, connectivity=4)
    border = np.unique(np.concatenate([lab2[0], lab2[-1], lab2[:, 0], lab2[:, -1]]))
    filled = (mask > 0) | ((lab2 > 0) & ~np.isin(lab2, border))
    k = max(1, round(0.006 * max(img.shape[:2])))
    return cv2.erode(filled.astype(np.uint8), _disk(k)) > 0


def _check_fundus_colour(img: np.ndarray, fov: np.ndarray) -> None:
    """Refuse uniform or non-red content: a colour fundus photograph is red-dominant."""
    px = img[fov]
    grey = px.mean(axis=1)
    if float(np.percentile(grey, 95) - np.percentile(grey, 5)) < 8.0:
        raise SegmentationError(
            "image is uniform inside the field of view", flags=("uniform_image", "disc_not_found")
        )
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    ordered = float(np.mean((r >= g) & (g >= b)))
    reddish = float(np.mean(r > 1.2 * g))
    if ordered < 0.9 or reddish < 0.75:
        raise SegmentationError(
            f"not a colour fundus photograph: {100 * ordered:.0f}% of pixels have R >= G >= B and "
            f"{100 * reddish:.0f}% have R > 1.2 G (expected >= 90% and >= 75%)",
            flags=("not_fundus", "disc_not_found"),
        )


def _prepare(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Validated float image, its localisation-scale copy, that scale factor and the FOV there."""
    img = _check_rgb(rgb)
    h, w = img.shape[:2]
    scale = _LOC_LONG_SIDE_PX / float(max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    fov = _fov_mask(small)
    if fov.mean() < 0.1:
        raise SegmentationError(
            "the field of view covers under 10% of the image", flags=("no_fov", "disc_not_found")
        )
    _check_fundus_colour(small, fov)
    return img, small, scale, fov


# --------------------------------------------------------------------------------------------
# localisation
# --------------------------------------------------------------------------------------------


def _masked_mean(img: np.ndarray, mask: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of img over the kernel support restricted to mask (normalised convolution), and coverage."""
    m = mask.astype(np.float32)
    k = kernel.astype(np.float32) / float(kernel.sum())
    num = cv2.filter2D(img * m, -1, k, borderType=cv2.BORDER_CONSTANT)
    den = cv2.filter2D(m, -1, k, borderType=cv2.BORDER_CONSTANT)
    return num / np.maximum(den, 1e-6), den


def _ring_kernel(r_in_px: float, r_out_px: float) -> np.ndarray:
    """Annulus kernel between two radii (a disk when r_in_px is 0)."""
    n = math.ceil(r_out_px)
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    d = np.hypot(xx, yy)
    return ((d >= r_in_px) & (d <= r_out_px)).astype(np.float32)


_LOCALISED: OrderedDict[bytes, tuple[tuple[float, float], float, float, dict[str, float]]] = OrderedDict()
"""Recent localisations by image content (``_localise``): the classical and learned segmenters of one
photograph (a second opinion) share the same localisation image, so the disc is searched for once."""
_LOCALISED_MAX = 8
"""Most localisations kept."""


def _localise(
    small: np.ndarray, fov: np.ndarray
) -> tuple[tuple[float, float], float, float, dict[str, float]]:
    """Disc centre and radius (localisation-image px), confidence 0..1 and diagnostics.

    Deterministic, so a result is kept by the content of its inputs (``_LOCALISED``)."""
    key = hashlib.blake2b(small.tobytes(), digest_size=16)
    key.update(np.ascontiguousarray(fov).tobytes())
    key.update(repr((small.shape, small.dtype.str)).encode())
    digest = key.digest()
    hit = _LOCALISED.get(digest)
    if hit is not None:
        _LOCALISED.move_to_end(digest)
        return hit[0], hit[1], hit[2], dict(hit[3])
    found = _search_disc(small, fov)
    _LOCALISED[digest] = found
    while len(_LOCALISED) > _LOCALISED_MAX:
        _LOCALISED.popitem(last=False)
    return found[0], found[1], found[2], dict(found[3])


def _search_disc(
    small: np.ndarray, fov: np.ndarray
) -> tuple[tuple[float, float], float, float, dict[str, float]]:
    """The disc search behind ``_localise``: the brightest vessel-rich blob over several radii."""
    fov_diam_px = 2.0 * math.sqrt(float(fov.sum()) / math.pi)
    lum = 0.5 * (small[:, :, 0] + small[:, :, 1])
    green = np.ascontiguousarray(small[:, :, 1])
    lum_sd = float(np.std(lum[fov])) + 1e-6
    best: tuple[float, int, int, float] | None = None
    maps: list[tuple[float, np.ndarray]] = []
    for frac in _RADIUS_FRACTIONS:
        r = frac * fov_diam_px
        if r < 3.0:
            continue
        se = _disk(max(1.0, r / 3.0))
        bright = cv2.morphologyEx(lum, cv2.MORPH_CLOSE, se)  # vessels removed
        inner, cover = _masked_mean(bright, fov, _ring_kernel(0.0, r))
        ring, _ = _masked_mean(bright, fov, _ring_kernel(1.25 * r, 2.0 * r))
        tophat = cv2.morphologyEx(green, cv2.MORPH_BLACKHAT, se)  # vessels only
        vessels, _ = _masked_mean(tophat, fov, _ring_kernel(0.0, 1.5 * r))
        vessel_rel = vessels / (float(np.mean(tophat[fov])) + 1e-6)
        score = (inner - ring) / lum_sd * np.sqrt(np.maximum(vessel_rel, 0.0))
        score = np.where(fov & (cover > 0.6), score, -np.inf)
        y, x = divmod(int(np.argmax(score)), score.shape[1])
        maps.append((r, score))
        if best is None or score[y, x] > best[0]:
            best = (float(score[y, x]), x, y, r)
    if best is None:
        raise SegmentationError(
            "image too small to localise a disc", flags=("image_too_small", "disc_not_found")
        )
    s, x, y, r = best
    # confidence: margin of the best peak over the best peak at least 3 radii away
    smap = min(maps, key=lambda t: abs(t[0] - r))[1]
    yy, xx = np.mgrid[0 : smap.shape[0], 0 : smap.shape[1]]
    far = (np.hypot(xx - x, yy - y) > 3.0 * r) & np.isfinite(smap)
    runner_up = max(0.0, float(smap[far].max())) if far.any() else 0.0
    conf = float(np.clip(1.0 - runner_up / s, 0.0, 1.0)) if s > 0 else 0.0
    diag = {"localisation_score": s, "localisation_runner_up_score": runner_up}
    # the disk-minus-ring contrast peaks a little inside the disc margin
    return (float(x), float(y)), 1.15 * r, conf, diag


def locate_optic_disc(rgb: np.ndarray) -> tuple[tuple[float, float], float, float]:
    """Centre (x, y) px, approximate radius px and confidence 0..1 of the optic disc."""
    _, small, scale, fov = _prepare(rgb)
    (x, y), r, conf, diag = _localise(small, fov)
    if diag["localisation_score"] < _MIN_LOC_SCORE:
        raise SegmentationError("no bright, vessel-rich blob like an optic disc", flags=("disc_not_found",))
    return (x / scale, y / scale), r / scale, conf


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------


def _polar(
    img: np.ndarray, center_xy: tuple[float, float], radii_px: np.ndarray, n_angles: int
) -> np.ndarray:
    """Sample img on an (angle, radius) grid; angle 0 points right and grows clockwise (y down)."""
    th = 2.0 * np.pi * np.arange(n_angles) / n_angles
    mx = (center_xy[0] + np.cos(th)[:, None] * radii_px[None, :]).astype(np.float32)
    my = (center_xy[1] + np.sin(th)[:, None] * radii_px[None, :]).astype(np.float32)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _dp_closed_path(cost: np.ndarray, max_step: int, step_penalty: float) -> np.ndarray:
    """Minimum-cost closed path through an (angle, radius) cost array, |jump| <= max_step per angle."""
    n_a, n_r = cost.shape
    tiled = np.concatenate([cost, cost, cost], axis=0)  # the middle copy approximates a closed path
    steps = np.arange(-max_step, max_step + 1)
    src = np.arange(n_r)[None, :] - steps[:, None]  # steps x radii
    valid = (src >= 0) & (src < n_r)
    src = np.clip(src, 0, n_r - 1)
    penalty = np.where(valid, step_penalty * np.abs(steps)[:, None], np.inf)
    acc = tiled[0].astype(np.float64)
    back = np.zeros(tiled.shape, dtype=np.int32)
    cols = np.arange(n_r)
    for a in range(1, tiled.shape[0]):
        cand = acc[src] + penalty
        k = np.argmin(cand, axis=0)
        acc = cand[k, cols] + tiled[a]
        back[a] = src[k, cols]
    path = np.empty(tiled.shape[0], dtype=np.int32)
    path[-1] = int(np.argmin(acc))
    for a in range(tiled.shape[0] - 1, 0, -1):
        path[a - 1] = back[a, path[a]]
    return path[n_a : 2 * n_a]


def _ellipse_radial_residual(pts: np.ndarray, ell: Ellipse) -> np.ndarray:
    """Normalised radius of points in an ellipse's frame minus 1 (0 on the ellipse, > 0 outside)."""
    (cx, cy), (w, h), ang = ell
    t = math.radians(ang)
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return np.sqrt((u / max(w / 2, 1e-6)) ** 2 + (v / max(h / 2, 1e-6)) ** 2) - 1.0


def _fit_ellipse(pts: np.ndarray) -> Ellipse:
    """cv2.fitEllipse with plain float types."""
    (cx, cy), (w, h), ang = cv2.fitEllipse(pts.astype(np.float32))
    return (float(cx), float(cy)), (float(w), float(h)), float(ang)


def _fit_ellipse_robust(pts: np.ndarray) -> Ellipse:
    """Ellipse fitted to points, refitted twice without the points far from it."""
    ell = _fit_ellipse(pts)
    for _ in range(2):
        res = np.abs(_ellipse_radial_residual(pts, ell))
        keep = res <= max(2.5 * float(np.median(res)), 0.02)
        if keep.sum() < 10:
            break
        ell = _fit_ellipse(pts[keep])
    return ell


def _ellipse_radius_at(ell: Ellipse, center_xy: tuple[float, float], angles: np.ndarray) -> np.ndarray:
    """Distance from a point inside an ellipse to its boundary along each angle."""
    (cx, cy), (w, h), ang = ell
    t = math.radians(ang)
    a, b = max(w / 2, 1e-6), max(h / 2, 1e-6)
    ox, oy = center_xy[0] - cx, center_xy[1] - cy
    ou, ov = ox * math.cos(t) + oy * math.sin(t), -ox * math.sin(t) + oy * math.cos(t)
    dx, dy = np.cos(angles), np.sin(angles)
    du, dv = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
    qa = (du / a) ** 2 + (dv / b) ** 2
    qb = 2 * (ou * du / a**2 + ov * dv / b**2)
    qc = (ou / a) ** 2 + (ov / b) ** 2 - 1.0
    return (-qb + np.sqrt(np.maximum(qb**2 - 4 * qa * qc, 0.0))) / (2 * qa)


def _ellipse_polygon(ell: Ellipse, n: int = 180) -> np.ndarray:
    """Polygon (n x 2, float xy) approximating an ellipse."""
    (cx, cy), (w, h), ang = ell
    t = math.radians(ang)
    s = 2 * np.pi * np.arange(n) / n
    u, v = (w / 2) * np.cos(s), (h / 2) * np.sin(s)
    return np.stack([cx + u * math.cos(t) - v * math.sin(t), cy + u * math.sin(t) + v * math.cos(t)], axis=1)


def _fill_polygon(shape: tuple[int, int], poly_xy: np.ndarray) -> np.ndarray:
    """Boolean mask of a polygon given in float pixel coordinates (pixel centres at integers)."""
    mask = np.zeros(shape, dtype=np.uint8)
    shift = 4
    pts = np.round(poly_xy * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------
# canonical crop, vessels
# --------------------------------------------------------------------------------------------


@dataclass
class _Canon:
    """Canonical crop and its map back to input pixels: x_in = x0 + x / s."""

    img: np.ndarray
    fov: np.ndarray
    x0: float
    y0: float
    s: float


def _canonical_crop(
    img: np.ndarray, fov_small: np.ndarray, loc_scale: float, center_xy: tuple[float, float], radius_px: float
) -> _Canon:
    """Square crop around the disc, resampled so that the disc radius becomes _CANON_RADIUS_PX."""
    s = _CANON_RADIUS_PX / radius_px
    half = _CROP_HALF_RADII * _CANON_RADIUS_PX
    size = round(2 * half)
    x0, y0 = center_xy[0] - half / s, center_xy[1] - half / s
    m = np.array([[s, 0.0, -s * x0], [0.0, s, -s * y0]])
    src = img
    if s < 0.5:  # shrink first so that the warp does not alias
        pre = 2.0 * s
        src = cv2.resize(img, None, fx=pre, fy=pre, interpolation=cv2.INTER_AREA)
        m = np.array([[s / pre, 0.0, -s * x0], [0.0, s / pre, -s * y0]])
    crop = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    m_fov = np.array([[s / loc_scale, 0.0, -s * x0], [0.0, s / loc_scale, -s * y0]])
    fov = (
        cv2.warpAffine(
            fov_small.astype(np.uint8), m_fov, (size, size), flags=cv2.INTER_NEAREST, borderValue=0
        )
        > 0
    )
    return _Canon(img=crop, fov=fov, x0=x0, y0=y0, s=s)


def _vessel_mask(img: np.ndarray) -> np.ndarray:
    """Dark vessels in a canonical crop: black top-hat of green above median + 3 MAD, dilated."""
    tophat = cv2.morphologyEx(img[:, :, 1], cv2.MORPH_BLACKHAT, _disk(_VESSEL_SE_RADII * _CANON_RADIUS_PX))
    med = float(np.median(tophat))
    mad = 1.4826 * float(np.median(np.abs(tophat - med))) + 1e-6
    return cv2.dilate((tophat > med + 3.0 * mad).astype(np.uint8), _disk(2)) > 0


def _inpaint_vessels(img: np.ndarray, vessels: np.ndarray) -> np.ndarray:
    """Canonical crop with vessel pixels inpainted, lightly smoothed."""
    u8 = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    out = cv2.inpaint(u8, vessels.astype(np.uint8), 5, cv2.INPAINT_TELEA).astype(np.float32)
    return cv2.GaussianBlur(out, (0, 0), 1.5)


# --------------------------------------------------------------------------------------------
# disc boundary
# --------------------------------------------------------------------------------------------


def _disc_feature(canon_img: np.ndarray, clean: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Brightness for the disc boundary: red, or red + green where red is clipped.

    Red shows the disc margin well and the cup hardly at all, but carries no information where it
    is clipped; when a third or more of the disc neighbourhood is clipped, green is added (each
    channel scaled by its spread inside the FOV).
    """
    h, w = canon_img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    near = np.hypot(xx - w / 2, yy - h / 2) < 1.5 * _CANON_RADIUS_PX
    if float(np.mean(canon_img[near, 0] >= 250.0)) < 1.0 / 3.0:
        return np.ascontiguousarray(clean[:, :, 0])
    px = clean[fov] if fov.any() else clean.reshape(-1, 3)
    sd = px.std(axis=0) + 1e-6
    return clean[:, :, 0] / sd[0] + clean[:, :, 1] / sd[1]


def _disc_boundary(
    canon_img: np.ndarray, clean: np.ndarray, fov: np.ndarray, center_xy: tuple[float, float]
) -> tuple[Ellipse, dict[str, float]]:
    """Disc ellipse from a smooth closed path of maximal outward brightness drop, and its quality."""
    r0 = _CANON_RADIUS_PX
    radii = np.arange(0.0, 2.2 * r0, 1.0, dtype=np.float32)
    feat = _disc_feature(canon_img, clean, fov)
    pol = cv2.GaussianBlur(_polar(feat, center_xy, radii, _N_ANGLES), (0, 0), sigmaX=2.0, sigmaY=1.0)
    grad = np.zeros_like(pol)
    grad[:, 1:-1] = -(pol[:, 2:] - pol[:, :-2]) / 2.0  # outward drop
    in_fov = _polar(fov.astype(np.float32), center_xy, radii, _N_ANGLES) > 0.5
    inside = np.cumprod(in_fov, axis=1).astype(bool)  # up to the first exit from the FOV
    scale = float(np.percentile(np.abs(grad[inside]), 90)) + 1e-6 if inside.any() else 1.0
    edge = np.clip(grad / scale, -2.0, 4.0)
    cost = -edge
    cost[~inside] = 5.0
    cost[:, : int(0.45 * r0)] = 5.0
    cost[:, int(1.9 * r0) :] = 5.0
    path = _dp_closed_path(cost, max_step=2, step_penalty=0.1)
    ang = 2 * np.pi * np.arange(_N_ANGLES) / _N_ANGLES
    rr = radii[path]
    pts = np.stack([center_xy[0] + rr * np.cos(ang), center_xy[1] + rr * np.sin(ang)], axis=1)
    ell = _fit_ellipse_robust(pts)
    res = np.abs(_ellipse_radial_residual(pts, ell))
    on_path = edge[np.arange(_N_ANGLES), path]
    exits = ~inside[np.arange(_N_ANGLES), np.minimum(path + int(0.15 * r0), len(radii) - 1)]
    seen = on_path[~exits] if (~exits).sum() >= _N_ANGLES // 4 else on_path  # ignore where the FOV ends
    quality = {
        "disc_edge_strength": float(np.median(seen)),
        "disc_edge_weak_fraction": float(np.mean(seen < 0.5)),
        "disc_ellipse_residual": float(np.median(res)),
        "disc_near_fov_edge_fraction": float(np.mean(exits)),
    }
    return ell, quality


# --------------------------------------------------------------------------------------------
# cup
# --------------------------------------------------------------------------------------------


def _cup_ellipse(img: np.ndarray, vessels: np.ndarray, disc_ell: Ellipse) -> tuple[Ellipse, dict[str, float]]:
    """Cup ellipse from green pallor inside the disc, with vessel pixels treated as missing data."""
    valid = (~vessels).astype(np.float32)
    green = img[:, :, 1].astype(np.float32)
    den = cv2.GaussianBlur(valid, (0, 0), 1.0)
    feat = cv2.GaussianBlur(green * valid, (0, 0), 1.0) / np.maximum(den, 1e-3)
    seen = den > 0.5
    h, w = green.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u_map = 1.0 + _ellipse_radial_residual(np.stack([xx.ravel(), yy.ravel()], 1), disc_ell).reshape(h, w)
    inner = (u_map < 0.8) & seen
    if inner.sum() < 20:
        raise SegmentationError(
            "the disc interior is hidden by vessels", flags=("cup_not_found", "disc_not_found")
        )
    pallor = float(np.percentile(feat[inner], 99))
    # rays start at the pallor centre: the centroid of the brightest tenth of the disc interior
    core = inner & (feat >= np.percentile(feat[inner], 90))
    cx, cy = float(xx[core].mean()), float(yy[core].mean())
    ang = 2 * np.pi * np.arange(_N_ANGLES) / _N_ANGLES
    rd = _ellipse_radius_at(disc_ell, (cx, cy), ang)
    n_u = 64
    u = (np.arange(n_u) + 0.5) / n_u  # fraction of the distance to the disc margin along each ray
    mx = (cx + np.cos(ang)[:, None] * rd[:, None] * u[None, :]).astype(np.float32)
    my = (cy + np.sin(ang)[:, None] * rd[:, None] * u[None, :]).astype(np.float32)
    pol = cv2.remap(feat, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ok = cv2.remap(den, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) > 0.5
    # local rim level: median of the visible samples in the rim band of this ray and its neighbours
    band = (u > _RIM_BAND[0]) & (u < _RIM_BAND[1])
    nb = (np.arange(_N_ANGLES)[:, None] + np.arange(-1, 2)[None, :]) % _N_ANGLES
    vals = np.where(ok[:, band][nb], pol[:, band][nb], np.nan).reshape(_N_ANGLES, -1)
    has_rim = np.isfinite(vals).any(axis=1)
    if not has_rim.any():
        raise SegmentationError("the rim is hidden by vessels", flags=("cup_not_found", "disc_not_found"))
    rim = np.full(_N_ANGLES, np.nan)
    rim[has_rim] = np.nanmedian(vals[has_rim], axis=1)
    rim = np.where(has_rim, rim, np.nanmedian(rim))
    thr = rim + _CUP_LEVEL * (pallor - rim)
    # the pallor run from the centre ends at the first visible sample below threshold
    below = (pol < thr[:, None]) & ok
    below[:, u >= _RIM_BAND[0]] = True
    first = np.argmax(below, axis=1)
    idx = np.arange(n_u)[None, :]
    before = idx < first[:, None]
    started = ((pol >= thr[:, None]) & ok & before).any(axis=1)
    last_seen = np.where(ok & before, idx, -1).max(axis=1)
    gap = first - last_seen
    use = has_rim & started & (last_seen >= 0) & (gap <= _MAX_HIDDEN_GAP)
    if use.sum() < 8:
        raise SegmentationError(
            "no cup margin is visible: no pallor inside the disc candidate",
            flags=("cup_not_found", "disc_not_found"),
        )
    # sub-sample crossing: interpolate the threshold between the last pallor and first rim samples
    rows = np.arange(_N_ANGLES)
    p_in, p_out = pol[rows, np.maximum(last_seen, 0)], pol[rows, first]
    frac = np.clip((p_in - thr) / np.maximum(p_in - p_out, 1e-6), 0.0, 1.0)
    u_cup = u[np.maximum(last_seen, 0)] + frac * (u[first] - u[np.maximum(last_seen, 0)])
    r_cup = u_cup * rd
    pts = np.stack([cx + r_cup * np.cos(ang), cy + r_cup * np.sin(ang)], axis=1)[use]
    ell = _fit_ellipse_robust(pts)
    rim_med = float(np.median(rim))
    quality = {
        "cup_rim_contrast": (pallor - rim_med) / max(pallor, 1e-6),
        "cup_margin_visible_fraction": float(use.mean()),
        "cup_margin_at_rim_band_fraction": float(np.mean(use & (first >= int(_RIM_BAND[0] * n_u)))),
        "cup_ellipse_residual": float(np.median(np.abs(_ellipse_radial_residual(pts, ell)))),
    }
    return ell, quality


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def segment_disc_cup(rgb: np.ndarray) -> DiscCupSegmentation:
    """Segment optic disc and cup in an HxWx3 uint8 RGB fundus photograph (deterministic)."""
    img, small, loc_scale, fov_small = _prepare(rgb)
    (sx, sy), sr, conf, loc_diag = _localise(small, fov_small)
    if loc_diag["localisation_score"] < _MIN_LOC_SCORE:
        raise SegmentationError("no bright, vessel-rich blob like an optic disc", flags=("disc_not_found",))
    center = (sx / loc_scale, sy / loc_scale)
    radius = sr / loc_scale

    for _ in range(2):  # the second pass is centred on the first disc estimate
        canon = _canonical_crop(img, fov_small, loc_scale, center, radius)
        vessels = _vessel_mask(canon.img)
        clean = _inpaint_vessels(canon.img, vessels)
        mid = (_CROP_HALF_RADII * _CANON_RADIUS_PX,) * 2
        disc_ell, disc_q = _disc_boundary(canon.img, clean, canon.fov, mid)
        (ex, ey), (ew, eh), _ = disc_ell
        center = (canon.x0 + ex / canon.s, canon.y0 + ey / canon.s)
        new_radius = 0.25 * (ew + eh) / canon.s
        if not (0.3 * radius < new_radius < 3.0 * radius):
            raise SegmentationError("the disc boundary search diverged", flags=("disc_not_found",))
        radius = new_radius
    if min(ew, eh) < 0.4 * _CANON_RADIUS_PX or max(ew, eh) > 2.0 * min(ew, eh):
        raise SegmentationError("implausible disc shape", flags=("disc_not_found",))
    fov_diameter_px = 2.0 * math.sqrt(float(fov_small.sum()) / math.pi) / loc_scale
    disc_to_fov = 2.0 * radius / fov_diameter_px
    if float(fov_small.mean()) < _SURROUND_FOV_FRACTION and disc_to_fov > _MAX_DISC_TO_FOV:
        raise SegmentationError(
            f"the disc found spans {disc_to_fov:.2f} of the field of view's diameter (optic discs: about "
            "0.1-0.3): a bright region, not an optic disc",
            flags=("disc_not_found", "implausible_disc_size"),
        )
    weak = disc_q["disc_edge_weak_fraction"]
    if weak > _MAX_WEAK_EDGE or (conf < _LOW_CONFIDENCE and weak > 0.4 * _MAX_WEAK_EDGE):
        raise SegmentationError(
            f"no disc-like closed brightness edge ({100 * weak:.0f}% of the boundary is weak, "
            f"localisation confidence {conf:.2f})",
            flags=("disc_not_found", "low_disc_contrast"),
        )
    cup_ell, cup_q = _cup_ellipse(canon.img, vessels, disc_ell)

    h, w = img.shape[:2]

    def to_input(poly: np.ndarray) -> np.ndarray:
        return np.stack([canon.x0 + poly[:, 0] / canon.s, canon.y0 + poly[:, 1] / canon.s], axis=1)

    disc_mask = _fill_polygon((h, w), to_input(_ellipse_polygon(disc_ell)))
    cup_mask = _fill_polygon((h, w), to_input(_ellipse_polygon(cup_ell))) & disc_mask
    if disc_mask.sum() < 20:
        raise SegmentationError("the disc estimate lies outside the image", flags=("disc_not_found",))
    ys, xs = np.nonzero(disc_mask)
    disc_area = float(disc_mask.sum())
    full_area = math.pi * (ew / 2) * (eh / 2) / canon.s**2
    quality: dict[str, float] = {
        "localisation_confidence": conf,
        **loc_diag,
        **disc_q,
        "disc_inside_image_fraction": min(1.0, disc_area / max(full_area, 1e-6)),
        "fov_fraction": float(fov_small.mean()),
        "disc_to_fov_diameter_ratio": disc_to_fov,
        **cup_q,
        "cup_to_disc_area_ratio": float(cup_mask.sum()) / disc_area,
    }
    flags: list[str] = []
    if conf < _LOW_CONFIDENCE:
        flags.append("low_localisation_confidence")
    if disc_q["disc_edge_strength"] < 0.8 or disc_q["disc_edge_weak_fraction"] > 0.35:
        flags.append("low_disc_contrast")
    if disc_q["disc_ellipse_residual"] > 0.06:
        flags.append("disc_boundary_irregular")
    if disc_q["disc_near_fov_edge_fraction"] > 0.0:
        flags.append("disc_at_fov_edge")
    if disc_mask[[0, -1], :].any() or disc_mask[:, [0, -1]].any():
        flags.append("disc_cut_by_image_border")
    if cup_q["cup_rim_contrast"] < 0.15 or cup_q["cup_margin_visible_fraction"] < 0.3:
        flags.append("cup_boundary_weak")
    if cup_q["cup_margin_at_rim_band_fraction"] > 0.5:
        flags.append("cup_reaches_rim_band")
    return DiscCupSegmentation(
        disc_mask=disc_mask,
        cup_mask=cup_mask,
        disc_center_xy=(float(xs.mean()), float(ys.mean())),
        disc_radius_px=math.sqrt(disc_area / math.pi),
        quality=quality,
        flags=tuple(flags),
    )
