"""Physical measurements of boolean masks: area, volume, RECIST diameters, bounding box, centroid.

Pure numpy/scipy/scikit-image; no tool machinery. 2D masks are indexed (y, x) with spacing (sy, sx) in
mm; 3D masks are indexed (z, y, x) with spacing (sz, sy, sx) in mm, and axial slices are fixed z.

Diameters are measured edge to edge on the sub-pixel outline of the mask: the marching-squares
iso-contour at 0.5, which runs halfway between the outermost inside pixel centres and the first
outside ones. Along an image axis this is one pixel longer than a centre-to-centre measurement, so a
disc rasterised from a circle of diameter D measures about D, not D minus one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHORD_BATCH = 256
_MAX_PAIRWISE_POINTS = 4000


@dataclass(frozen=True)
class PlanarDiameters:
    """RECIST-style diameters of a region in one plane."""

    longest_mm: float
    """Longest diameter (maximal Feret diameter) of the region's outline, in mm."""
    perpendicular_mm: float
    """Longest chord of the region perpendicular to the longest diameter, in mm."""
    longest_direction: tuple[float, float]
    """Unit vector (dy, dx) in mm space along the longest diameter."""


@dataclass(frozen=True)
class RecistDiameters(PlanarDiameters):
    """Diameters of a 3D region on the axial slice where its longest in-plane diameter is largest."""

    slice_index: int
    """The axial slice (z index) of the measurement."""


def check_spacing(spacing: tuple[float, ...] | list[float] | None, ndim: int) -> tuple[float, ...]:
    """The spacing as a tuple of ``ndim`` positive floats; ValueError otherwise."""
    if spacing is None or len(spacing) != ndim:
        raise ValueError(f"need {ndim} spacing values in mm, got {spacing!r}")
    out = tuple(float(s) for s in spacing)
    if not all(np.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"spacing must be positive and finite, got {out!r}")
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values: the bin centre that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def voxel_count(mask: np.ndarray) -> int:
    """Number of True pixels or voxels."""
    return int(np.count_nonzero(mask))


def area_mm2(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Area of a 2D mask in mm^2: pixel count times pixel area."""
    sy, sx = check_spacing(spacing, 2)
    return voxel_count(mask) * sy * sx


def volume_ml(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Volume of a 3D mask in ml (1 ml = 1000 mm^3): voxel count times voxel volume."""
    sz, sy, sx = check_spacing(spacing, 3)
    return voxel_count(mask) * sz * sy * sx / 1000.0


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Smallest box holding the mask: (min index inclusive, max index exclusive) per axis.

    Raises ValueError for an empty mask.
    """
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            raise ValueError("the mask is empty")
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return tuple(lo), tuple(hi)


def bbox_size_mm(
    min_index: tuple[int, ...], max_index: tuple[int, ...], spacing: tuple[float, ...]
) -> tuple[float, ...]:
    """Physical size of a box given as (min inclusive, max exclusive) indices: voxels times spacing."""
    sp = check_spacing(spacing, len(min_index))
    return tuple((hi - lo) * s for lo, hi, s in zip(min_index, max_index, sp, strict=True))


def centroid_index(mask: np.ndarray) -> tuple[float, ...]:
    """Mean index of the mask's voxels per axis; ValueError for an empty mask."""
    total = np.count_nonzero(mask)
    if total == 0:
        raise ValueError("the mask is empty")
    out = []
    for axis in range(mask.ndim):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
        out.append(float(np.dot(np.arange(mask.shape[axis]), counts) / total))
    return tuple(out)


def centroid_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, ...]:
    """Centroid in mm per axis, measured from the centre of voxel 0 (image origin not applied)."""
    sp = check_spacing(spacing, mask.ndim)
    return tuple(c * s for c, s in zip(centroid_index(mask), sp, strict=True))


def component_count(mask: np.ndarray) -> int:
    """Number of face-connected components of the mask."""
    from scipy import ndimage

    return int(ndimage.label(mask)[1])


def touches_border(mask: np.ndarray) -> bool:
    """Whether any True voxel lies on the array's border (the region may be cut off)."""
    for axis in range(mask.ndim):
        if np.take(mask, 0, axis=axis).any() or np.take(mask, -1, axis=axis).any():
            return True
    return False


def outline_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> list[np.ndarray]:
    """Closed sub-pixel outlines of a 2D mask, each an (n, 2) array of (y, x) points in mm."""
    from skimage import measure

    sp = np.asarray(check_spacing(spacing, 2))
    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    return [(c - 1.0) * sp for c in measure.find_contours(padded, 0.5) if len(c) >= 2]


def _hull_points(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        if len(points) > _MAX_PAIRWISE_POINTS:
            points = points[np.linspace(0, len(points) - 1, _MAX_PAIRWISE_POINTS).astype(int)]
        return points


def feret_diameter_mm(outlines: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Maximal Feret diameter of the outlines and its unit direction (dy, dx): exact max over hull pairs."""
    pts = _hull_points(np.concatenate(outlines))
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    length = float(d[i, j])
    if length <= 0:
        return 0.0, np.array([0.0, 1.0])
    return length, (pts[j] - pts[i]) / length


def longest_chord_mm(outlines: list[np.ndarray], direction: np.ndarray) -> float:
    """Longest chord of the outlined region parallel to ``direction`` (a (dy, dx) vector).

    A chord is the segment between the first and the last crossing of a line with the outlines, so it
    spans holes and gaps. The chord length is piecewise linear in the line's offset, with breaks at the
    outline's vertices, so the maximum over lines through every vertex is exact.
    """
    v = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    u = np.array([v[1], -v[0]])  # offset axis, perpendicular to the chords
    p0 = np.concatenate([c[:-1] for c in outlines])
    p1 = np.concatenate([c[1:] for c in outlines])
    a0, a1, b0, b1 = p0 @ u, p1 @ u, p0 @ v, p1 @ v
    lo, hi, da = np.minimum(a0, a1), np.maximum(a0, a1), a1 - a0
    flat = np.abs(da) < 1e-12
    safe_da = np.where(flat, 1.0, da)
    best = 0.0
    offsets = np.unique(np.concatenate([a0, a1]))
    for start in range(0, len(offsets), _CHORD_BATCH):
        t = offsets[start : start + _CHORD_BATCH, None]
        hit = (t >= lo - 1e-9) & (t <= hi + 1e-9)
        cross = b0 + np.clip((t - a0) / safe_da, 0.0, 1.0) * (b1 - b0)
        top = np.where(flat, np.maximum(b0, b1), cross)
        bottom = np.where(flat, np.minimum(b0, b1), cross)
        span = np.where(hit, top, -np.inf).max(axis=1) - np.where(hit, bottom, np.inf).min(axis=1)
        span = span[np.isfinite(span)]
        if span.size:
            best = max(best, float(span.max()))
    return best


def _crop_to_box(mask: np.ndarray) -> np.ndarray:
    lo, hi = bounding_box(mask)
    return mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]


def planar_diameters(mask: np.ndarray, spacing: tuple[float, ...]) -> PlanarDiameters:
    """Longest diameter of a 2D mask and the longest chord perpendicular to it, in mm.

    Raises ValueError for an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    outlines = outline_mm(_crop_to_box(mask), spacing)
    longest, u = feret_diameter_mm(outlines)
    perpendicular = longest_chord_mm(outlines, np.array([-u[1], u[0]]))
    return PlanarDiameters(longest, perpendicular, (float(u[0]), float(u[1])))


def recist_diameters(mask: np.ndarray, spacing: tuple[float, ...]) -> RecistDiameters:
    """RECIST diameters of a 3D mask: on the axial slice whose longest in-plane diameter is largest.

    Ties go to the lowest slice index. Raises ValueError for an empty mask.
    """
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    _, sy, sx = check_spacing(spacing, 3)
    rows = np.any(mask, axis=2)  # (z, y) occupancy
    cols = np.any(mask, axis=1)  # (z, x) occupancy
    bounds = []  # per occupied slice: an upper bound on its longest diameter, from its 2D bounding box
    for z in np.flatnonzero(np.any(rows, axis=1)):
        ys, xs = np.flatnonzero(rows[z]), np.flatnonzero(cols[z])
        h, w = (ys[-1] - ys[0] + 1) * sy, (xs[-1] - xs[0] + 1) * sx
        bounds.append((float(np.hypot(h, w)), int(z)))
    best_z, best_len = -1, -1.0
    for bound, zi in sorted(bounds, key=lambda b: (-b[0], b[1])):
        if bound < best_len:
            break
        length, _ = feret_diameter_mm(outline_mm(_crop_to_box(mask[zi]), (sy, sx)))
        if length > best_len or (length == best_len and zi < best_z):
            best_z, best_len = zi, length
    if best_z < 0:
        raise ValueError("the mask is empty")
    d = planar_diameters(mask[best_z], (sy, sx))
    return RecistDiameters(d.longest_mm, d.perpendicular_mm, d.longest_direction, best_z)


def largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a mask, with its holes filled (empty stays empty)."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    keep = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    _, background = cv2.connectedComponents(1 - keep, connectivity=4)
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return (keep > 0) | ((background > 0) & ~np.isin(background, border))


def column_range(mask: np.ndarray) -> tuple[int, int]:
    """First and last column (inclusive) holding any pixel of a non-empty 2D mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(cols[-1])


def cardiothoracic_ratio(heart: np.ndarray, right_lung: np.ndarray, left_lung: np.ndarray) -> float:
    """CTR of boolean masks: heart column extent over the column extent of both lungs together."""
    h0, h1 = column_range(heart)
    t0, t1 = column_range(right_lung | left_lung)
    return (h1 - h0 + 1) / (t1 - t0 + 1)
