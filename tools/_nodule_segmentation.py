"""Classical segmentation of lung nodules in CT volumes (HU), and the Fleischner measurements of a mask.

Pure numpy/scipy; no tool machinery. Volumes are indexed (z, y, x) with spacing (sz, sy, sx) in mm;
axial slices are fixed z.

The pipeline, for a nodule-centred crop or a larger chest volume:

1. **Lung**: voxels below -500 HU on each axial slice, closed with a 10 mm disc and hole-filled, so that
   nodules inside the lung and nodules abutting the pleura (a bump of the chest wall into the lung)
   belong to it, while the chest wall and mediastinum do not.
2. **Candidates**: voxels above -700 HU (after 0.8 mm in-plane smoothing, so that noisy ground glass is
   found whole) inside the lung, split into 26-connected components (oblique vessels on thick slices
   stay one structure). Seeds are taken deepest first (the maximum of the distance to the outside in
   mm; its depth ``r`` is the radius of the largest ball that fits); each seed's piece and a margin are
   set aside before the next seed, so that a nodule touching a larger structure gets its own seed.
3. **Vessel separation**: the component is opened with a ball of radius ``r / 2`` (an opening by the
   distance transform, anisotropic spacing honoured): tubes thinner than that, i.e. vessels entering a
   nodule, fall away, and the piece holding the seed remains.
4. **Adaptive boundary**: the boundary is re-drawn at ``bg + 0.28 (core - bg)`` (at least 100 HU above
   ``bg``), where ``bg`` is the median HU of aerated lung and ``core`` the median inside the piece
   (capped at +50 HU, so that calcium does not move it): about -600 HU for a solid nodule in -850 HU lung,
   about -750 HU for a ground-glass one. That is where radiologists draw the edge of a nodule, partway
   through its partial-volume rim. The edge may move at most 1.5 mm (or r/4) out of the piece, and the
   opening of step 3 is repeated at that threshold with a ball of at most 3 mm (keeps lobulations).
5. **Rejection**: pieces cut by step 3 from a structure as thick right next to them (a segment of a
   vessel, not a nodule on one), pieces with ``r`` under 0.75 mm, elongated pieces (principal axis
   ratio over 3), branching pieces (volume over 8 times that of the largest inscribed ball: vessel
   trees) and pieces under 3 mm average diameter are dropped.
6. **Dominant nodule and count**: the largest nodule, or in a volume at most 64 mm wide in-plane (a
   nodule-centred crop) the one nearest the centre. The count is the dominant nodule plus the others of
   5 mm or more with an elongation ratio of at most 1.5 (smaller or oval pieces are too often vessel
   cross-sections on thick slices).

Measurement (Fleischner Society 2017 and its measurement statement, Bankier et al. 2017): the diameter is
the average of the long axis (the longest in-plane diameter) and the short axis (the longest chord
perpendicular to it) measured on the same axial slice, the one on which the long axis is longest;
edges are the sub-voxel 0.5 iso-contour of the mask (tools/_mask_geometry). It is not rounded here: the
criteria document's size bands apply the guideline's rounding to the nearest millimetre. The solid
component is the part at or above -300 HU, measured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dxgraph.tools._mask_geometry import check_spacing, recist_diameters

NoduleType = Literal["solid", "part_solid", "ground_glass"]

AIR_HU = -500.0
"""Voxels below this are aerated lung on the lung mask."""
DETECT_HU = -700.0
"""First-pass threshold for nodule candidates inside the lung."""
EDGE_SMOOTHING_MM = 0.4
"""In-plane Gaussian smoothing of the HU the edge is drawn on."""
DETECT_SMOOTHING_MM = 0.8
"""In-plane Gaussian smoothing of the first pass, so that noisy ground glass is found whole."""
SOLID_HU = -300.0
"""Voxels at or above this are solid (soft tissue); between about -750 and this, ground glass."""
BOUNDARY_FRACTION = 0.28
"""The nodule edge, as a fraction of the way from the lung background HU to the nodule's core HU."""
CROP_MAX_MM = 64.0
"""A volume at most this wide in-plane is a nodule-centred crop: its central nodule is the dominant one."""
MIN_CONTRAST_HU = 100.0
"""The edge is never drawn closer than this to the lung background HU (parenchyma would leak in)."""
REGROW_MM = 1.5
"""The edge may move at most this far (or REGROW_FRACTION of the radius) out of the first-pass piece."""
REGROW_FRACTION = 0.25
"""See REGROW_MM."""
CORE_PERCENTILE = 50.0
"""The nodule's core HU is this percentile of its first-pass piece (the median: a part-solid nodule's
ground glass, not its solid core, sets its edge)."""
CORE_CAP_HU = 50.0
"""The core HU used for the adaptive edge is capped here (calcification must not shrink the edge)."""
LUNG_CLOSING_MM = 10.0
"""Radius of the disc that closes the lung mask over juxtapleural nodules."""
OPENING_FRACTION = 0.5
"""Vessels are cut by an opening with a ball of this fraction of the nodule's inscribed radius."""
MIN_DEPTH_MM = 0.75
"""Candidates whose inscribed ball is smaller than this radius are noise or small vessels."""
MIN_DIAMETER_MM = 3.0
"""Nodules smaller than this (average diameter) are not counted."""
MAX_OPENING_MM = 3.0
"""Cap of the final opening's ball radius: thick enough for any vessel, small enough to keep lobulations."""
MAX_SEEDS_PER_COMPONENT = 6
"""Nodules looked for in one connected candidate component, deepest first."""
VESSEL_DEPTH_RATIO = 0.8
"""A piece cut from a structure that is, elsewhere, at least this fraction as thick is part of a vessel."""
COUNT_MIN_DIAMETER_MM = 5.0
"""Nodules besides the dominant one are counted from this average diameter (smaller ones are too often
vessel cross-sections on thick slices)."""
COUNT_MAX_ELONGATION_RATIO = 1.5
"""...and only when round enough: oblique vessels on thick slices leave short oval pieces."""
MAX_TUBE_RATIO = 8.0
"""Pieces whose volume is over this many times that of their largest inscribed ball are vessel trees."""
MAX_ELONGATION_RATIO = 3.0
"""Pieces whose longest principal axis is over this times the next one are vessels."""
GROUND_GLASS_MAX_SOLID_RATIO = 0.05
"""A nodule with less than this volume fraction of solid voxels (after removing the rim) is ground glass."""
SOLID_MIN_SOLID_RATIO = 0.5
"""A nodule whose core (inside its partial-volume rim) is at least this fraction solid is solid."""
PARTIAL_VOLUME_RIM_MM = 1.0
"""Width of the edge band, blurred by partial volume, left out when judging a nodule's texture."""


@dataclass(frozen=True)
class NoduleMeasurement:
    """One segmented nodule and its Fleischner measurements."""

    mask: np.ndarray
    """Boolean (z, y, x) mask of the nodule, the shape of the volume."""
    diameter_mm: float
    """Average of long and short axis on the axial slice of maximal long axis, mm (not rounded)."""
    long_axis_mm: float
    """Longest in-plane diameter on that slice, mm."""
    short_axis_mm: float
    """Longest chord perpendicular to the long axis on that slice, mm."""
    volume_mm3: float
    """Voxel count times voxel volume, mm^3."""
    nodule_type: NoduleType
    """Texture from HU: solid, part-solid or (pure) ground glass."""
    solid_component_mm: float
    """Average diameter of the solid (>= -300 HU) part, measured like ``diameter_mm``; 0 if none."""
    solid_ratio: float
    """Fraction of the nodule's core (inside the partial-volume rim) at or above -300 HU."""
    elongation_ratio: float
    """Longest over second principal axis of the mask in mm (1 for a sphere)."""
    touches_border: bool
    """Whether the mask touches the volume's border in-plane (the nodule may be cut off)."""


@dataclass(frozen=True)
class NoduleSegmentation:
    """All nodules found in a volume, the dominant one first."""

    nodules: tuple[NoduleMeasurement, ...]
    """The nodules: by decreasing volume, or in a nodule-centred crop by distance from its centre."""
    lung_fraction: float
    """Fraction of the volume's voxels on the lung mask."""
    background_hu: float
    """Median HU of aerated lung."""
    nodule_centred_crop: bool
    """Whether the volume is small enough to be a nodule-centred crop (then the central nodule is first)."""


def _disc(radius_mm: float, sy: float, sx: float) -> np.ndarray:
    ry, rx = int(np.ceil(radius_mm / sy)), int(np.ceil(radius_mm / sx))
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return (yy * sy) ** 2 + (xx * sx) ** 2 <= radius_mm**2 + 1e-9


def lung_mask(smoothed_hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Aerated lung on each axial slice, closed over juxtapleural nodules and with holes filled."""
    import cv2
    from scipy import ndimage as ndi

    _, sy, sx = spacing
    air = (smoothed_hu < AIR_HU).astype(np.uint8)
    disc = _disc(LUNG_CLOSING_MM, sy, sx).astype(np.uint8)
    py, px = disc.shape[0] // 2 + 1, disc.shape[1] // 2 + 1
    out = np.zeros(air.shape, bool)
    for z in range(air.shape[0]):
        if not air[z].any():
            continue
        padded = cv2.copyMakeBorder(air[z], py, py, px, px, cv2.BORDER_REPLICATE)
        closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disc, borderType=cv2.BORDER_REPLICATE)
        out[z] = ndi.binary_fill_holes(closed[py:-py, px:-px] > 0)
    return out


def open_by_ball(mask: np.ndarray, radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Morphological opening of a 3D mask with a ball of ``radius_mm`` (anisotropic voxels honoured).

    Erosion and dilation are both read off Euclidean distance transforms in mm; beyond the array's
    border counts as inside, so a nodule cut by the crop is not eaten from that side.
    """
    from scipy import ndimage as ndi

    if radius_mm <= 0:
        return mask.copy()
    depth = ndi.distance_transform_edt(mask, sampling=spacing)
    core = depth > radius_mm
    if not core.any():
        return np.zeros_like(mask)
    reach = ndi.distance_transform_edt(~core, sampling=spacing)
    return (reach <= radius_mm) & mask


def _elongation_ratio(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    pts = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    if len(pts) < 4:
        return 1.0
    cov = np.cov((pts - pts.mean(axis=0)).T) + np.diag(np.square(spacing)) / 12.0
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    return float(np.sqrt(ev[0] / max(ev[1], 1e-9)))


def _separate(
    cand: np.ndarray, seed: tuple[int, ...], radius_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The piece of ``cand`` holding ``seed`` after an opening that cuts vessels of ``radius_mm``."""
    from scipy import ndimage as ndi

    opened = open_by_ball(cand, radius_mm, spacing)
    if not opened[seed]:
        opened[seed] = True
    labels, _ = ndi.label(opened)
    return labels == labels[seed]


def average_diameter_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """(average, long axis, short axis) in mm on the axial slice of maximal long axis; zeros if empty."""
    if not mask.any():
        return 0.0, 0.0, 0.0
    d = recist_diameters(mask, spacing)
    return (d.longest_mm + d.perpendicular_mm) / 2.0, d.longest_mm, d.perpendicular_mm


def classify_texture(
    hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[NoduleType, float, np.ndarray]:
    """Texture of a nodule from HU: (type, solid ratio of its core, solid-component mask).

    The core is the nodule minus a ``PARTIAL_VOLUME_RIM_MM`` band along its in-plane edge and minus its
    end slices when it spans three or more (where a solid nodule blurs into ground-glass values); small
    nodules keep at least their deepest voxels.
    """
    from scipy import ndimage as ndi

    depth = np.zeros(mask.shape, np.float64)
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        depth[z] = ndi.distance_transform_edt(mask[z], sampling=spacing[1:])
    rim = min(PARTIAL_VOLUME_RIM_MM, 0.5 * float(np.max(depth)))
    core = depth > rim
    slices = np.flatnonzero(core.any(axis=(1, 2)))
    if len(slices) >= 3:  # the end slices are partial-volumed through their thickness
        core[slices[0]] = core[slices[-1]] = False
    if not core.any():
        core = mask
    solid = (hu >= SOLID_HU) & mask
    solid_ratio = int(np.count_nonzero(solid & core)) / max(1, int(np.count_nonzero(core)))
    labels, n = ndi.label(solid)
    if n:
        sizes = ndi.sum(solid, labels, range(1, n + 1))
        solid = labels == 1 + int(np.argmax(sizes))
    if solid_ratio >= SOLID_MIN_SOLID_RATIO:
        kind: NoduleType = "solid"
    elif solid_ratio < GROUND_GLASS_MAX_SOLID_RATIO:
        kind = "ground_glass"
    else:
        kind = "part_solid"
    return kind, solid_ratio, solid


def measure_nodule(
    hu: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    smoothed_hu: np.ndarray | None = None,
) -> NoduleMeasurement:
    """Fleischner measurements and texture of one nodule mask on its CT volume."""
    sz, sy, sx = check_spacing(spacing, 3)
    sp = (sz, sy, sx)
    avg, long_axis, short_axis = average_diameter_mm(mask, sp)
    kind, solid_ratio, solid = classify_texture(hu if smoothed_hu is None else smoothed_hu, mask, sp)
    if kind == "solid":
        solid_mm = avg
    elif kind == "ground_glass":
        solid_mm = 0.0
    else:
        solid_mm = average_diameter_mm(solid, sp)[0]
    border = bool(mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
    return NoduleMeasurement(
        mask=mask,
        diameter_mm=avg,
        long_axis_mm=long_axis,
        short_axis_mm=short_axis,
        volume_mm3=float(np.count_nonzero(mask) * sp[0] * sp[1] * sp[2]),
        nodule_type=kind,
        solid_component_mm=float(solid_mm),
        solid_ratio=solid_ratio,
        elongation_ratio=_elongation_ratio(mask, sp),
        touches_border=border,
    )


def smooth_hu(hu: np.ndarray, spacing: tuple[float, float, float], sigma_mm: float = 0.4) -> np.ndarray:
    """HU smoothed in-plane (Gaussian of ``sigma_mm``), to steady thresholds against noise."""
    from scipy import ndimage as ndi

    _, sy, sx = spacing
    return ndi.gaussian_filter(hu.astype(np.float32), (0.0, sigma_mm / sy, sigma_mm / sx))


def _box_mm(box: tuple[slice, ...], spacing: tuple[float, float, float]) -> float:
    return max((b.stop - b.start) * s for b, s in zip(box, spacing, strict=True))


def _segment_component(
    comp: np.ndarray, sm: np.ndarray, lung: np.ndarray, bg: float, sp: tuple[float, float, float]
) -> list[np.ndarray]:
    """The nodules grown from one first-pass candidate component (all arrays cut to its box).

    Seeds are taken deepest first; each seed's piece (and a margin) is then set aside, so that a nodule
    touching a larger structure (a thick vessel, the pleura) gets a seed of its own.
    """
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(comp, sampling=sp)
    remaining = comp.copy()
    claimed = np.zeros(comp.shape, bool)
    found: list[np.ndarray] = []
    for _ in range(MAX_SEEDS_PER_COMPONENT):
        d = np.where(remaining, depth, 0.0)
        r = float(d.max())
        if r < MIN_DEPTH_MM:
            break
        seed = tuple(int(i) for i in np.unravel_index(int(np.argmax(d)), d.shape))
        piece = _separate(comp, seed, OPENING_FRACTION * r, sp)
        away = ndi.distance_transform_edt(~piece, sampling=sp)
        remaining &= away > OPENING_FRACTION * r + max(sp)
        free = lung & ~claimed
        nodule = _grow(comp, piece, seed, r, depth, away, sm, free, bg, sp)
        if nodule is not None:
            found.append(nodule)
            remaining &= ~nodule
            claimed |= nodule
    return found


def _grow(
    comp: np.ndarray,
    piece: np.ndarray,
    seed: tuple[int, ...],
    r: float,
    depth: np.ndarray,
    away: np.ndarray,
    sm: np.ndarray,
    lung: np.ndarray,
    bg: float,
    sp: tuple[float, float, float],
) -> np.ndarray | None:
    """One seed's nodule at its adaptive edge, or None for a vessel piece."""
    from scipy import ndimage as ndi

    rest = comp & (away > max(sp))
    if rest.any() and float(depth[rest].max()) >= VESSEL_DEPTH_RATIO * r and float(depth[rest].max()) <= r:
        neighbour = rest & (away <= r + 2 * max(sp))
        if neighbour.any() and float(depth[neighbour].max()) >= VESSEL_DEPTH_RATIO * r:
            return None  # as thick right next to it: a piece of a tube, not a nodule on one
    core_hu = min(float(np.percentile(sm[piece], CORE_PERCENTILE)), CORE_CAP_HU)
    threshold = max(bg + BOUNDARY_FRACTION * (core_hu - bg), bg + MIN_CONTRAST_HU)
    near = away <= max(REGROW_MM, REGROW_FRACTION * r)
    region = (sm > threshold) & lung & near
    if not region[seed]:
        return None
    labels, _ = ndi.label(region)
    region = labels == labels[seed]
    r2 = max(float(ndi.distance_transform_edt(region, sampling=sp)[seed]), r)
    nodule = _separate(region, seed, min(OPENING_FRACTION * r2, MAX_OPENING_MM), sp)
    if _elongation_ratio(nodule, sp) > MAX_ELONGATION_RATIO or _tube_ratio(nodule, sp) > MAX_TUBE_RATIO:
        return None
    return nodule


def _tube_ratio(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Volume over that of its largest inscribed ball: about 1-2 for a nodule, far more for vessels."""
    from scipy import ndimage as ndi

    r = float(ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing).max())
    return float(np.count_nonzero(mask) * np.prod(spacing) / (4.0 / 3.0 * np.pi * r**3))


def segment_nodules(hu: np.ndarray, spacing: tuple[float, ...]) -> NoduleSegmentation:
    """Find, separate from vessels and chest wall, and measure the nodules of a CT volume in HU."""
    from scipy import ndimage as ndi

    if hu.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu.shape}")
    sp = check_spacing(spacing, 3)
    sp3 = (sp[0], sp[1], sp[2])
    sm = smooth_hu(hu, sp3, EDGE_SMOOTHING_MM)
    lung = lung_mask(sm, sp3)
    aerated = lung & (sm < AIR_HU)
    bg = float(np.median(sm[aerated])) if aerated.any() else -850.0
    cand = (smooth_hu(hu, sp3, DETECT_SMOOTHING_MM) > DETECT_HU) & lung
    labels, _ = ndi.label(cand, structure=np.ones((3, 3, 3), bool))  # oblique vessels on thick slices
    found: list[NoduleMeasurement] = []
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        reach_mm = REGROW_MM + REGROW_FRACTION * 0.5 * _box_mm(box, sp3)
        margin = [int(np.ceil(reach_mm / s)) + 1 for s in sp3]
        big = tuple(
            slice(max(0, b.start - m), min(n_, b.stop + m))
            for b, m, n_ in zip(box, margin, hu.shape, strict=True)
        )
        for nodule in _segment_component(labels[big] == k, sm[big], lung[big], bg, sp3):
            full = np.zeros(hu.shape, bool)
            full[big] = nodule
            m = measure_nodule(hu, full, sp3, smoothed_hu=sm)
            if m.diameter_mm >= MIN_DIAMETER_MM:
                found.append(m)
    found.sort(key=lambda m: -m.volume_mm3)
    is_crop = max(hu.shape[1] * sp[1], hu.shape[2] * sp[2]) <= CROP_MAX_MM
    if is_crop and len(found) > 1:
        found.sort(key=lambda m: _distance_to_centre_mm(m.mask, sp3))
    return NoduleSegmentation(tuple(found), float(lung.mean()), bg, is_crop)


def nodule_count(seg: NoduleSegmentation) -> int:
    """The dominant nodule plus the others at least ``COUNT_MIN_DIAMETER_MM`` across."""
    if not seg.nodules:
        return 0
    return 1 + sum(
        1
        for m in seg.nodules[1:]
        if m.diameter_mm >= COUNT_MIN_DIAMETER_MM and m.elongation_ratio <= COUNT_MAX_ELONGATION_RATIO
    )


def _distance_to_centre_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    centre = (np.asarray(mask.shape) - 1) / 2.0
    pts = np.argwhere(mask)
    dist = np.linalg.norm((pts - centre) * np.asarray(spacing), axis=1)
    return float(dist.min() + 0.1 * dist.mean())  # ties (masks holding the centre) go to the centred one


def size_category(diameter_mm: float) -> str:
    """Fleischner size category (``lt6``, ``6to8``, ``gt8``) of an unrounded average diameter (rounded to the
    nearest mm first)."""
    if diameter_mm < 5.5:
        return "lt6"
    return "6to8" if diameter_mm < 8.5 else "gt8"
