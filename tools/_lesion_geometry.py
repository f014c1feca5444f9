"""Solid-tumour lesions on CT and their RECIST 1.1 bookkeeping; pure numpy/scipy, no tool machinery.

Segmentation (``segment_lesions``) is classical and documented so that a reader can check it:

* HU are smoothed in-plane only (Gaussian, 0.8 mm; slices are thick, so never across them).
* body = smoothed HU above -400, the largest 3D component, holes filled slice by slice.
* enhancing parenchyma = soft tissue (-20 to 250 HU) above an Otsu split of the soft-tissue histogram
  below 150 HU, which separates enhancing organ parenchyma (liver, spleen: about 90-130 HU in the portal
  venous phase) from muscle, nodes and hypodense lesions (about 0-60 HU). An organ is a connected
  parenchyma region whose largest axial cross-section is at least ``MIN_ORGAN_SECTION_MM2`` (tubular
  vessels are narrower); its outline is closed and hole-filled slice by slice.
* seeds of non-nodal lesions that touch fat (a 2 mm ring, one slice up and down) are partial-volume rims
  and caps at organ ends or the renal sinus, not lesions.
* non-nodal lesions = regions inside an organ's hole-filled outline darker than the organ by at least
  ``MIN_LESION_CONTRAST_HU``; each one's outline is then re-thresholded halfway between its median HU and
  the organ parenchyma around it (the half-contrast level, where partial volume puts the true edge).
* lymph nodes = soft-tissue blobs outside the organs, not touching the scan edge, not enhancing like vessels
  (mean below ``MAX_NODE_HU``), whose 3 mm surrounding shell is mostly fat (``MIN_NODE_FAT_RATIO`` of the
  shell voxels at -190 to -30 HU): that fat rim is what marks a node on CT. Outlines are re-thresholded
  halfway between the node's core and the surrounding fat.

Known limits: lesions bulging through an organ's surface or touching fat, lesions against another
soft-tissue structure, merging or splitting lesions, and lesions under about 8 mm with low contrast can
be missed; a soft-tissue mass in fat is always called a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dxgraph.tools._mask_geometry import centroid_mm, otsu_threshold, recist_diameters, volume_ml

SMOOTH_SIGMA_MM = 0.8
"""In-plane Gaussian smoothing before thresholding, mm."""
BODY_HU = -400.0
"""Voxels above this (after smoothing) are body, below it air."""
FAT_HU_RANGE = (-190.0, -30.0)
"""Attenuation range counted as fat."""
SOFT_HU_RANGE = (-20.0, 250.0)
"""Attenuation range counted as soft tissue (bone and dense contrast above)."""
OTSU_MAX_HU = 150.0
"""The parenchyma/soft-tissue split is computed on soft tissue below this (kidney cortex and vessels
enhance more than liver and spleen, and would otherwise move the split above the liver)."""
MIN_PARENCHYMA_CONTRAST_HU = 25.0
"""Enhancing parenchyma must be this much brighter than the rest of the soft tissue, or a flag is raised."""
MIN_ORGAN_SECTION_MM2 = 1000.0
"""A parenchyma region is an organ when its largest axial cross-section reaches this area."""
MIN_LESION_CONTRAST_HU = 30.0
"""A non-nodal lesion's seed is at least this much darker than the organ's parenchyma."""
DETECT_SIGMA_MM = 1.5
"""In-plane smoothing of the image in which lesion seeds are detected (outlines use the lighter one)."""
MIN_SEED_VOLUME_MM3 = 20.0
"""Seeds smaller than this volume are noise, not lesions."""
MAX_SEED_FAT_RATIO = 0.2
"""Seeds inside an organ with more fat than this around them (2 mm ring) are partial-volume rims."""
NODE_SEED_HU = -35.0
"""Soft-tissue blobs are seeded above this attenuation (about halfway between fat and soft tissue)."""
MAX_NODE_EXTENT_MM = 60.0
"""Soft-tissue blobs wider than this in-plane are not nodes (bowel, muscle, vessels)."""
MAX_NODE_HU = 90.0
"""Soft-tissue blobs brighter than this on average enhance like vessels, not like nodes."""
MIN_NODE_FAT_RATIO = 0.6
"""Fraction of the 3 mm shell around a blob that must be fat for it to be a lymph node."""
NODE_SHELL_MM = 3.0
"""Width of the shell around a blob in which the fat fraction is measured."""
MIN_LESION_DIAMETER_MM = 4.0
"""Detected regions with a shorter longest diameter are discarded as noise."""
MIN_LESION_VOXELS = 6
"""Detected regions with fewer voxels are discarded as noise."""
MIN_LESION_SHORT_AXIS_MM = 2.5
"""Detected regions thinner than this are partial-volume slivers, not lesions."""

MEASURABLE_MIN_MM = 10.0
"""RECIST 1.1: a non-nodal lesion is measurable at >= 10 mm longest diameter (CT slices <= 5 mm)."""
MEASURABLE_NODE_SHORT_AXIS_MM = 15.0
"""RECIST 1.1: a lymph node is measurable (target-eligible) at >= 15 mm short axis."""
NORMAL_NODE_SHORT_AXIS_MM = 10.0
"""RECIST 1.1: a node below 10 mm short axis is normal (not pathological)."""
MAX_TARGETS = 5
"""RECIST 1.1: at most five target lesions in total."""
MAX_TARGETS_PER_ORGAN = 2
"""RECIST 1.1: at most two target lesions per organ (all lymph nodes together count as one organ)."""
PR_CHANGE_PERCENT = -30.0
"""RECIST 1.1: partial response at a decrease of at least 30 % of the sum vs baseline."""
PD_INCREASE_PERCENT = 20.0
"""RECIST 1.1: progression at an increase of at least 20 % of the sum vs nadir ..."""
PD_INCREASE_MM = 5.0
"""... which must also be at least 5 mm absolute."""
MATCH_MIN_TOLERANCE_MM = 10.0
"""Lesions at two timepoints match when their registered centroids lie within max(this, LD/2)."""

Measurability = Literal["measurable", "non_measurable", "normal_node"]
RecistCategory = Literal["CR", "PR", "SD", "PD"]


@dataclass(frozen=True)
class LesionGeometry:
    """Measurements of one segmented lesion."""

    centroid_mm: tuple[float, ...]
    """Centroid (z, y, x) in mm from the centre of voxel 0."""
    longest_diameter_mm: float
    """Longest axial diameter, on the axial slice where it is longest, edge to edge."""
    short_axis_mm: float
    """Longest diameter perpendicular to it on the same slice."""
    slice_index: int
    """Axial slice of the measurement."""
    is_node: bool
    """Whether it is a lymph node (a soft-tissue blob surrounded by fat)."""
    organ: str
    """``organ_<n>`` for lesions inside organ parenchyma, ``nodes`` for lymph nodes."""
    volume_ml: float
    """Volume of the segmented region."""
    mean_hu: float
    """Mean attenuation of the region."""
    surrounding_fat_ratio: float
    """Fraction of the 3 mm shell around the region that is fat."""
    touches_scan_edge: bool = False
    """Whether the region reaches the first or last slice (it may be cut off)."""


@dataclass
class Segmentation:
    """The lesions of one CT volume and the landmarks used to register it to another."""

    lesions: list[LesionGeometry]
    """Lesions, largest RECIST diameter first."""
    mask: np.ndarray
    """All lesion voxels (bool, z, y, x)."""
    organ_centroid_mm: tuple[float, ...] | None
    """Centroid of the largest hole-filled organ, when one is found and not cut by the scan range."""
    body_centroid_mm: tuple[float, ...]
    """Centroid of the body."""
    flags: list[str] = field(default_factory=list)
    """Quality flags."""


# --------------------------------------------------------------------------------------------
# RECIST rules
# --------------------------------------------------------------------------------------------


def min_measurable_mm(slice_thickness_mm: float) -> float:
    """Smallest measurable non-nodal longest diameter: 10 mm, or twice the slice thickness above 5 mm."""
    return max(MEASURABLE_MIN_MM, 2.0 * float(slice_thickness_mm))


def recist_diameter_mm(g: LesionGeometry) -> float:
    """The diameter that enters the RECIST sum: short axis for nodes, longest diameter otherwise."""
    return g.short_axis_mm if g.is_node else g.longest_diameter_mm


def measurability(g: LesionGeometry, slice_thickness_mm: float) -> Measurability:
    """RECIST 1.1 class of a lesion at baseline."""
    if g.is_node:
        if g.short_axis_mm >= MEASURABLE_NODE_SHORT_AXIS_MM:
            return "measurable"
        return "non_measurable" if g.short_axis_mm >= NORMAL_NODE_SHORT_AXIS_MM else "normal_node"
    return (
        "measurable" if g.longest_diameter_mm >= min_measurable_mm(slice_thickness_mm) else "non_measurable"
    )


def select_targets(lesions: list[LesionGeometry], slice_thickness_mm: float) -> list[int]:
    """Indices of the target lesions: measurable ones, largest RECIST diameter first, <= 2 per organ, <= 5."""
    order = sorted(
        (i for i, g in enumerate(lesions) if measurability(g, slice_thickness_mm) == "measurable"),
        key=lambda i: -recist_diameter_mm(lesions[i]),
    )
    chosen: list[int] = []
    per_organ: dict[str, int] = {}
    for i in order:
        organ = lesions[i].organ
        if per_organ.get(organ, 0) >= MAX_TARGETS_PER_ORGAN:
            continue
        chosen.append(i)
        per_organ[organ] = per_organ.get(organ, 0) + 1
        if len(chosen) == MAX_TARGETS:
            break
    return chosen


def is_unequivocal_new(g: LesionGeometry, slice_thickness_mm: float) -> bool:
    """Whether an unmatched follow-up lesion is large enough to call new without doubt.

    Nodes: short axis >= 10 mm (smaller nodes are normal in RECIST 1.1). Other lesions: at least the
    measurable size (10 mm, or twice a slice thickness over 5 mm); smaller spots are left as equivocal.
    """
    if g.is_node:
        return g.short_axis_mm >= NORMAL_NODE_SHORT_AXIS_MM
    return g.longest_diameter_mm >= min_measurable_mm(slice_thickness_mm)


def recist_category(
    change_percent: float,
    increase_from_nadir_mm: float,
    increase_from_nadir_percent: float,
    *,
    new_lesions: bool,
    all_targets_resolved: bool,
) -> RecistCategory:
    """RECIST 1.1 target response: PD (new lesion, or +20 % and +5 mm from nadir), then CR, PR (-30 %), SD."""
    if new_lesions or (
        increase_from_nadir_percent >= PD_INCREASE_PERCENT and increase_from_nadir_mm >= PD_INCREASE_MM
    ):
        return "PD"
    if all_targets_resolved:
        return "CR"
    if change_percent <= PR_CHANGE_PERCENT:
        return "PR"
    return "SD"


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------


def _dilate(mask: np.ndarray, spacing, radius_mm: float, z_slices: int = 0) -> np.ndarray:
    """Dilation by an in-plane disc of radius_mm (per slice), then by z_slices slices along z."""
    import cv2

    _, sy, sx = spacing
    ry, rx = max(1, round(radius_mm / sy)), max(1, round(radius_mm / sx))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1))
    m8 = mask.astype(np.uint8)
    out = np.stack([cv2.dilate(s, kernel) for s in m8]) > 0 if mask.any() else mask.copy()
    for _ in range(z_slices):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        out = grown
    return out


def _morph_xy(mask: np.ndarray, spacing, radius_mm: float, op: str) -> np.ndarray:
    """Slice-by-slice morphological ``open`` or ``close`` with an in-plane disc of radius_mm."""
    import cv2

    _, sy, sx = spacing
    ry, rx = max(1, round(radius_mm / sy)), max(1, round(radius_mm / sx))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1))
    code = cv2.MORPH_OPEN if op == "open" else cv2.MORPH_CLOSE
    return np.stack([cv2.morphologyEx(s, code, kernel) for s in mask.astype(np.uint8)]) > 0


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled on every axial slice (which also fills every hole enclosed in 3D)."""
    import cv2

    out = mask.copy()
    for z in range(mask.shape[0]):
        if not mask[z].any():
            continue
        outside = np.pad((~mask[z]).astype(np.uint8), 1, constant_values=1)
        cv2.floodFill(outside, None, (0, 0), 2)
        out[z] |= outside[1:-1, 1:-1] == 1
    return out


def _pad_box(sl: tuple[slice, ...], pad: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(sl, pad, shape, strict=True)
    )


def _sub(outer: tuple[slice, ...], inner: tuple[slice, ...]) -> tuple[slice, ...]:
    """inner (absolute) expressed relative to outer."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner, strict=True))


def _body(sm: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    body = sm > BODY_HU
    lab, n = ndimage.label(body)
    if n == 0:
        return body
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return _fill_slices(lab == int(np.argmax(sizes)))


def _organs(
    sm: np.ndarray, body: np.ndarray, spacing, flags: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """(parenchyma mask, labels of hole-filled organs, organ count)."""
    from scipy import ndimage

    soft = body & (sm >= SOFT_HU_RANGE[0]) & (sm < SOFT_HU_RANGE[1])
    vals = sm[soft][::3]
    vals = vals[vals < OTSU_MAX_HU]  # strongly enhancing kidneys and vessels would pull the split upwards
    if vals.size < 1000:
        flags.append("no_soft_tissue")
        return np.zeros(sm.shape, bool), np.zeros(sm.shape, np.int32), 0
    t = otsu_threshold(vals)
    hi, lo = vals[vals >= t], vals[vals < t]
    if hi.size == 0 or lo.size == 0 or float(np.median(hi) - np.median(lo)) < MIN_PARENCHYMA_CONTRAST_HU:
        flags.append("no_enhancing_parenchyma_contrast")
    # the organ outline adds a smoother image's parenchyma and is closed, so that neither noise pores in
    # weakly enhancing parenchyma nor a thin bridge between a lesion and the capsule opens the lesion's
    # hole to the outside of the organ
    _, sy, sx = spacing
    smooth = ndimage.gaussian_filter(sm, (0.0, DETECT_SIGMA_MM / sy, DETECT_SIGMA_MM / sx))
    par = _morph_xy(soft & (sm >= t), spacing, 1.5, "open")
    outline = _morph_xy(_morph_xy(par | (soft & (smooth >= t)), spacing, 2.5, "close"), spacing, 1.5, "open")
    lab, _ = ndimage.label(outline)
    organs = np.zeros(sm.shape, np.int32)
    count = 0
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        if comp.sum(axis=(1, 2)).max() * sy * sx < MIN_ORGAN_SECTION_MM2:
            continue
        count += 1
        organs[sl][_fill_slices(comp) & (organs[sl] == 0)] = count
    return par, organs, count


Region = tuple[tuple[slice, ...], np.ndarray]
"""A region as (its box in the volume, a bool mask of the box)."""


def _grow(
    values: np.ndarray, seed: np.ndarray, level: float, *, darker: bool, within: np.ndarray | None
) -> np.ndarray:
    """Voxels beyond ``level`` (below it when darker) connected to the seed, holes filled per slice."""
    from scipy import ndimage

    beyond = values < level if darker else values > level
    if within is not None:
        beyond &= within
    lab, _ = ndimage.label(beyond)
    keep = np.unique(lab[seed & (lab > 0)])
    region = np.isin(lab, keep[keep > 0]) if keep.size else seed.copy()
    return _fill_slices(region)


def _organ_lesions(sm, par, organs, n_organs, spacing) -> list[tuple[Region, str]]:
    """Hypodense regions inside organs, each re-thresholded at its half-contrast level."""
    from scipy import ndimage

    sz, sy, sx = spacing
    min_seed = max(MIN_LESION_VOXELS, int(np.ceil(MIN_SEED_VOLUME_MM3 / (sz * sy * sx))))
    pad = (1, int(np.ceil(8 / sy)), int(np.ceil(8 / sx)))
    out: list[tuple[Region, str]] = []
    for k, osl in enumerate(ndimage.find_objects(organs), start=1):
        if osl is None:
            continue
        inside, s, p = organs[osl] == k, sm[osl], par[osl]
        organ_level = float(np.median(s[inside & p]))
        detect = ndimage.gaussian_filter(s, (0.0, DETECT_SIGMA_MM / sy, DETECT_SIGMA_MM / sx))
        dark = (detect < organ_level - MIN_LESION_CONTRAST_HU) & (detect > SOFT_HU_RANGE[0])
        seeds, _ = ndimage.label(inside & ~p & dark)
        for i, ssl in enumerate(ndimage.find_objects(seeds), start=1):
            if ssl is None:
                continue
            seed_abs = tuple(
                slice(o.start + q.start, o.start + q.stop) for o, q in zip(osl, ssl, strict=True)
            )
            box = _pad_box(seed_abs, pad, sm.shape)  # in the whole volume: the rim may leave the organ's box
            c = np.zeros([b.stop - b.start for b in box], bool)
            c[_sub(box, seed_abs)] = seeds[ssl] == i
            if c.sum() < min_seed:
                continue
            sb, pb, ins = sm[box], par[box], organs[box] == k
            rim = _dilate(c, spacing, 2.0, 1) & ~c
            if float(np.mean(sb[rim] < FAT_HU_RANGE[1])) > MAX_SEED_FAT_RATIO:
                continue  # a partial-volume rim or cap against fat (organ ends, renal sinus), not a lesion
            shell = _dilate(c, spacing, 6.0, 1) & ~c & pb & ins
            local = float(np.median(sb[shell])) if shell.sum() > 20 else organ_level
            core = float(np.percentile(sb[c], 50))
            region = _grow(sb, c, (local + core) / 2, darker=True, within=ins & (sb > SOFT_HU_RANGE[0]))
            out.append(((box, region), f"organ_{k}"))
    return out


def _nodes(sm, body, organs, spacing) -> list[tuple[Region, float]]:
    """Soft-tissue blobs in fat, re-thresholded halfway between their core and the surrounding fat."""
    from scipy import ndimage

    sz, sy, sx = spacing
    near_organ = _dilate(organs > 0, spacing, 4.0, z_slices=1)
    bone = _dilate(sm >= SOFT_HU_RANGE[1], spacing, 2.0)
    cand = body & (sm > NODE_SEED_HU) & ~near_organ & ~bone
    lab, _ = ndimage.label(cand)
    pad = (1, int(np.ceil(6 / sy)), int(np.ceil(6 / sx)))
    min_voxels = max(MIN_LESION_VOXELS, int(np.ceil(MIN_SEED_VOLUME_MM3 / (sz * sy * sx))))
    out: list[tuple[Region, float]] = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        if sl[0].start == 0 or sl[0].stop == sm.shape[0]:
            continue  # runs out of the scan: a vessel, the wall or the spine, not a node
        if max((sl[1].stop - sl[1].start) * sy, (sl[2].stop - sl[2].start) * sx) > MAX_NODE_EXTENT_MM:
            continue
        box = _pad_box(sl, pad, sm.shape)
        c = lab[box] == i
        if c.sum() < min_voxels:
            continue
        s = sm[box]
        if float(s[c].mean()) > MAX_NODE_HU:
            continue
        shell = _dilate(c, spacing, NODE_SHELL_MM) & ~c
        fat = (s >= FAT_HU_RANGE[0]) & (s <= FAT_HU_RANGE[1])
        fat_ratio = float(fat[shell].mean()) if shell.any() else 0.0
        if fat_ratio < MIN_NODE_FAT_RATIO:
            continue
        fat_level = float(np.median(s[shell & fat]))
        core = float(np.percentile(s[c], 50))
        region = _grow(s, c, (fat_level + core) / 2, darker=False, within=~near_organ[box] & ~bone[box])
        out.append(((box, region), fat_ratio))
    return out


def _measure(
    region: Region, sm: np.ndarray, spacing, *, is_node: bool, organ: str, fat_ratio: float
) -> LesionGeometry:
    box, m = region
    d = recist_diameters(m, spacing)
    offset = np.array([b.start for b in box], float) * np.asarray(spacing)
    zs = np.flatnonzero(m.any(axis=(1, 2))) + box[0].start
    return LesionGeometry(
        centroid_mm=tuple(float(c) for c in np.asarray(centroid_mm(m, spacing)) + offset),
        longest_diameter_mm=float(d.longest_mm),
        short_axis_mm=float(d.perpendicular_mm),
        slice_index=int(d.slice_index) + box[0].start,
        is_node=is_node,
        organ=organ,
        volume_ml=float(volume_ml(m, spacing)),
        mean_hu=float(sm[box][m].mean()),
        surrounding_fat_ratio=float(fat_ratio),
        touches_scan_edge=bool(zs[0] == 0 or zs[-1] == sm.shape[0] - 1),
    )


def segment_lesions(hu: np.ndarray, spacing: tuple[float, float, float]) -> Segmentation:
    """Find and measure hypodense organ lesions and lymph nodes in a contrast-enhanced CT volume (HU)."""
    from scipy import ndimage

    sz, sy, sx = (float(s) for s in spacing)
    spacing = (sz, sy, sx)
    flags: list[str] = []
    sm = ndimage.gaussian_filter(hu.astype(np.float32), (0.0, SMOOTH_SIGMA_MM / sy, SMOOTH_SIGMA_MM / sx))
    body = _body(sm)
    if not body.any():
        return Segmentation([], np.zeros(hu.shape, bool), None, (0.0, 0.0, 0.0), ["no_body"])
    if float(np.percentile(sm[body][::7], 5)) > -50:
        flags.append("not_hu_or_no_fat")
    par, organs, n_organs = _organs(sm, body, spacing, flags)
    if n_organs == 0:
        flags.append("no_organ_parenchyma_found")
    found: list[tuple[Region, bool, str, float]] = []
    for region, organ in _organ_lesions(sm, par, organs, n_organs, spacing):
        found.append((region, False, organ, 0.0))
    for region, fat_ratio in _nodes(sm, body, organs, spacing):
        found.append((region, True, "nodes", fat_ratio))
    # regions grown from different seeds of one lesion (a partial-volume cap seeded apart) overlap: merge them
    union = np.zeros(hu.shape, bool)
    for (box, m), *_ in found:
        union[box] |= m
    merged, _ = ndimage.label(union)
    kind: dict[int, tuple[bool, str, float]] = {}
    for (box, m), is_node, organ, fat_ratio in found:
        for i in np.unique(merged[box][m]):
            kind.setdefault(int(i), (is_node, organ, fat_ratio))
    lesions: list[LesionGeometry] = []
    mask = np.zeros(hu.shape, bool)
    for i, sl in enumerate(ndimage.find_objects(merged), start=1):
        if sl is None or i not in kind:
            continue
        m = merged[sl] == i
        if m.sum() < MIN_LESION_VOXELS:
            continue
        is_node, organ, fat_ratio = kind[i]
        g = _measure((sl, m), sm, spacing, is_node=is_node, organ=organ, fat_ratio=fat_ratio)
        if g.longest_diameter_mm < MIN_LESION_DIAMETER_MM or g.short_axis_mm < MIN_LESION_SHORT_AXIS_MM:
            continue
        mask[sl] |= m
        lesions.append(g)
    if any(g.touches_scan_edge for g in lesions):
        flags.append("lesion_cut_by_scan_range")
    lesions.sort(key=lambda g: -recist_diameter_mm(g))
    organ_centroid = None
    if n_organs:
        sizes = np.bincount(organs.ravel())[1:]
        largest = organs == 1 + int(np.argmax(sizes))
        zs = np.flatnonzero(largest.any(axis=(1, 2)))
        if zs[0] > 0 and zs[-1] < hu.shape[0] - 1:
            organ_centroid = tuple(float(c) for c in centroid_mm(largest, spacing))
    body_centroid = tuple(float(c) for c in centroid_mm(body, spacing))
    return Segmentation(lesions, mask, organ_centroid, body_centroid, flags)


# --------------------------------------------------------------------------------------------
# two timepoints
# --------------------------------------------------------------------------------------------


def registration_shift_mm(baseline: Segmentation, followup: Segmentation) -> tuple[tuple[float, ...], str]:
    """Translation (z, y, x) in mm taking baseline positions to follow-up ones, and what it was taken from.

    The centroid of the largest hole-filled organ when both studies contain it whole (a rigid landmark that
    lesion growth inside it does not move), else the body centroid.
    """
    if baseline.organ_centroid_mm is not None and followup.organ_centroid_mm is not None:
        a, b, how = baseline.organ_centroid_mm, followup.organ_centroid_mm, "organ"
    else:
        a, b, how = baseline.body_centroid_mm, followup.body_centroid_mm, "body"
    return tuple(float(q - p) for p, q in zip(a, b, strict=True)), how


def match_lesions(
    baseline: list[LesionGeometry], followup: list[LesionGeometry], shift_mm: tuple[float, ...]
) -> dict[int, int]:
    """One-to-one matches baseline index -> follow-up index by registered centroid distance.

    A pair may match when its distance is within max(10 mm, half the baseline longest diameter); among
    those, the assignment minimises the total distance.
    """
    from scipy.optimize import linear_sum_assignment

    if not baseline or not followup:
        return {}
    a = np.array([g.centroid_mm for g in baseline]) + np.asarray(shift_mm)
    b = np.array([g.centroid_mm for g in followup])
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    tol = np.array([max(MATCH_MIN_TOLERANCE_MM, g.longest_diameter_mm / 2) for g in baseline])
    big = 1e6
    cost = np.where(d <= tol[:, None], d, big)
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if cost[r, c] < big}
