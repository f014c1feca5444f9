"""Classical segmentation of brain MRI: brain mask, bias correction, enhancing tumour and FLAIR abnormality.

All volumes are (z, y, x) arrays with spacing (sz, sy, sx) in mm.  Nothing here is learned: intensities
are made comparable across scanners by a segmentation-based bias correction (in the spirit of N3/N4:
a smooth polynomial multiplicative field fitted to what remains after each voxel is divided by the mean
of its tissue class) and by expressing every sequence relative to its own normal-tissue reference level.
Lesion borders are drawn at half maximum between the lesion's plateau and its surroundings, which
keeps volumes unbiased under partial volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from dxgraph.tools._mask_geometry import otsu_threshold

WORK_SPACING_MM = 4.0
"""Grid spacing on which the bias field is estimated (it is smooth; coarser is faster)."""
BIAS_DEGREE = 3
"""Degree of the polynomial log bias field."""
BIAS_ITERATIONS = 6
"""Rounds of classify-then-fit in the bias correction."""
BIAS_OUTLIER_LOG = 0.2
"""Voxels further than this (log intensity) from their class mean do not vote on the bias field."""
ENHANCING_RATIO = 1.25
"""T1ce voxels brighter than this times normal white matter are enhancement candidates (no T1)."""
SUBTRACTION_RATIO = 0.25
"""With T1: (T1ce - T1) above this fraction of white matter is an enhancement candidate."""
FLAIR_RATIO = 1.35
"""FLAIR voxels brighter than this times the normal-tissue median are abnormality candidates."""
T2_CONFIRM_RATIO = 1.15
"""With T2: a FLAIR component is kept only if its median T2 exceeds this times the T2 around it."""
MIN_ENHANCING_ML = 0.25
"""Enhancing components smaller than this (a 7.8 mm sphere) are dropped: noise, vessel fragments."""
MIN_CONTRAST = 0.3
"""Enhancement must stand this far (in white-matter units) above the tissue around it."""
MIN_THICKNESS_MM = 2.5
"""An enhancing component (holes filled) must be this deep somewhere, or bulky (below): vessels are not."""
MIN_BULK_MM = 1.0
"""Volume over squared bounding-box diagonal (mm) of a component that is no vessel: tubes score ~0.3."""
GROUP_MM = 3.0
"""Seed fragments closer than this are one lesion (a rim broken by noise or partial volume)."""
PLEXUS_CSF_FRACTION = 0.2
"""A small enhancing component with this much CSF around it is choroid plexus, not tumour."""
PLEXUS_MAX_ML = 1.5
"""Only components smaller than this can be taken for choroid plexus."""
MIN_FRACTION = 0.2
"""FLAIR voxels less than this fraction of the way to the plateau count as background."""
MIN_FLAIR_ML = 0.3
"""FLAIR components smaller than this are dropped."""


@dataclass(frozen=True)
class EnhancingResult:
    """Enhancing tissue and the necrotic core it encloses."""

    enhancing: np.ndarray
    """Contrast-enhancing tumour voxels."""
    core: np.ndarray
    """Enhancing voxels plus the non-enhancing tissue they enclose (necrosis)."""
    enhancing_ml: float
    """Partial-volume-aware volume of the enhancing tissue, ml."""
    fraction: np.ndarray
    """Partial-volume fraction of enhancing tissue per voxel (0..1)."""
    dropped_vessel_like: int
    """Enhancing components dropped as too thin (vessels, dura)."""
    dropped_plexus_like: int
    """Enhancing components dropped as surrounded by CSF (choroid plexus)."""


@dataclass(frozen=True)
class FlairResult:
    """FLAIR hyperintense abnormality."""

    abnormal: np.ndarray
    """FLAIR-hyperintense voxels (before any tumour core is removed)."""
    fraction: np.ndarray
    """Partial-volume fraction of abnormality per voxel (0..1), for volumes."""
    dropped_not_t2_bright: int
    """FLAIR components dropped because T2 did not confirm them."""


def voxel_ml(spacing_mm: tuple[float, ...]) -> float:
    """Volume of one voxel in ml."""
    return float(np.prod(spacing_mm)) / 1000.0


def _ball(radius_mm: float, spacing_mm: tuple[float, ...]) -> np.ndarray:
    half = [max(0, int(radius_mm / s)) for s in spacing_mm]
    grid = np.indices([2 * h + 1 for h in half], dtype=np.float32)
    d2 = sum(((g - h) * s) ** 2 for g, h, s in zip(grid, half, spacing_mm, strict=True))
    return d2 <= radius_mm**2 + 1e-6


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def brain_mask(volumes: list[np.ndarray], spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Head/brain foreground of co-registered volumes: Otsu on each, united, then opened, largest
    component, holes filled. On skull-stripped images this is the brain; the opening (3 mm) detaches
    thin scalp bridges on images that are not."""
    fg = np.zeros(volumes[0].shape, bool)
    for v in volumes:
        sm = ndi.gaussian_filter(v.astype(np.float32), 1.0)
        top = float(np.percentile(sm, 99.5))
        pos = sm[sm > 0.02 * top]
        if pos.size == 0:
            continue
        fg |= sm > 0.5 * otsu_threshold(pos)
    opened = ndi.binary_opening(fg, _ball(3.0, spacing_mm))
    mask = _largest_component(opened if opened.any() else fg)
    mask = ndi.binary_fill_holes(mask)
    for z in range(mask.shape[0]):  # ventricles open to the surface on some slices
        mask[z] = ndi.binary_fill_holes(mask[z])
    return mask


def _kmeans_1d(values: np.ndarray, k: int = 3, iters: int = 20) -> np.ndarray:
    if values.size > 20000:  # a regular subsample is plenty for three numbers
        values = values[:: values.size // 20000]
    centres = np.percentile(values, np.linspace(10, 90, k))
    for _ in range(iters):
        lab = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[lab == j].mean() if np.any(lab == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres, atol=1e-5):
            break
        centres = new
    return np.sort(centres)


def _poly_basis(shape: tuple[int, ...], spacing_mm: tuple[float, ...], degree: int) -> np.ndarray:
    """Monomials up to ``degree`` of centred coordinates (in units of 100 mm), shape (*shape, n_terms)."""
    axes = [((np.arange(n) - (n - 1) / 2) * s / 100.0) for n, s in zip(shape, spacing_mm, strict=True)]
    terms = []
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                terms.append(
                    (axes[0] ** i)[:, None, None]
                    * (axes[1] ** j)[None, :, None]
                    * (axes[2] ** k)[None, None, :]
                )
    return np.stack(terms, axis=-1)


def _poly_field(shape: tuple[int, ...], spacing_mm: tuple[float, ...], coef: np.ndarray) -> np.ndarray:
    """The polynomial with these coefficients (terms ordered as ``_poly_basis``) on a full grid."""
    axes = [((np.arange(n) - (n - 1) / 2) * s / 100.0) for n, s in zip(shape, spacing_mm, strict=True)]
    out = np.zeros(shape, np.float32)
    t = 0
    for i in range(BIAS_DEGREE + 1):
        for j in range(BIAS_DEGREE + 1 - i):
            yz = np.zeros(shape[2])
            for k in range(BIAS_DEGREE + 1 - i - j):
                yz = yz + coef[t] * axes[2] ** k
                t += 1
            out += ((axes[0] ** i)[:, None, None] * (axes[1] ** j)[None, :, None] * yz[None, None, :]).astype(
                np.float32
            )
    return out


def correct_bias(
    vol: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, ...], classes: int = 3
) -> np.ndarray:
    """Divide out a smooth multiplicative field (N3/N4-like, segmentation-based).

    On a coarse grid, log intensities are compared with the mean of their tissue class (k-means of
    the corrected log intensities), and a 3rd-degree polynomial field is fitted to those residuals by
    least squares; voxels far from every class (lesions, partial volume) do not vote. Repeated.
    """
    factors = [max(1, round(WORK_SPACING_MM / s)) for s in spacing_mm]
    sl = tuple(slice(None, None, f) for f in factors)
    small = vol[sl].astype(np.float64)
    m = mask[sl] & (small > 0)
    if m.sum() < 200:
        return vol.astype(np.float32)
    m &= small > 0.3 * np.median(small[m])  # dark CSF and background carry no bias information
    coarse = tuple(s * f for s, f in zip(spacing_mm, factors, strict=True))
    x = _poly_basis(small.shape, coarse, BIAS_DEGREE)[m]
    y = np.log(small[m])
    field = np.zeros_like(y)
    coef = np.zeros(x.shape[1])
    for _ in range(BIAS_ITERATIONS):
        corrected = y - field
        centres = _kmeans_1d(corrected, classes)
        nearest = centres[np.argmin(np.abs(corrected[:, None] - centres[None, :]), axis=1)]
        w = (np.abs(corrected - nearest) < BIAS_OUTLIER_LOG).astype(np.float64)
        xw = x * w[:, None]
        coef = np.linalg.solve(xw.T @ x + 1e-6 * np.eye(x.shape[1]), xw.T @ (y - nearest))
        field = x @ coef
        field -= field.mean()
    full = _poly_field(vol.shape, tuple(spacing_mm), coef)
    full -= float(full[mask].mean())
    return (vol / np.exp(full)).astype(np.float32)


def normalise(vol: np.ndarray, mask: np.ndarray, reference: str) -> np.ndarray:
    """Express a bias-corrected volume in units of a normal-tissue level.

    ``reference``: ``brightest`` (T1/T1ce: white matter, the brightest tissue class), ``tissue``
    (FLAIR/T2: median of brain voxels that are not CSF).
    """
    v = vol[mask]
    if reference == "brightest":
        ref = _kmeans_1d(v[v > 0.1 * np.percentile(v, 99)])[-1]
    elif reference == "tissue":
        med = np.median(v)
        tissue = v[(v > 0.5 * med) & (v < 1.5 * med)]
        ref = float(np.median(tissue)) if tissue.size else float(med)
    else:
        raise ValueError(f"unknown reference {reference!r}")
    return (vol / max(float(ref), 1e-6)).astype(np.float32)


@dataclass(frozen=True)
class _Grown:
    mask: np.ndarray
    size_voxels: float
    contrast: float
    fraction: np.ndarray
    """Per-voxel fraction of the way from background to plateau, on the component's ring; 0 elsewhere."""


def _half_max_grow(
    value: np.ndarray,
    seeds: np.ndarray,
    allowed: np.ndarray,
    spacing_mm: tuple[float, ...],
    floor: float,
    plateau_percentile: float,
    inner_background: bool,
    interior_plateau: bool = False,
) -> list[_Grown]:
    """Per seed component: the voxels near it above half-way between its plateau and its surroundings,
    and its partial-volume-aware size in voxels (each voxel counts the fraction of the way it lies from
    the local background to the plateau; inside the component's enclosed holes the holes' background)."""
    grouped, _ = ndi.label(ndi.binary_dilation(seeds, _ball(GROUP_MM, spacing_mm)))
    lab = np.where(seeds, grouped, 0)
    out = []
    near = _ball(4.0, spacing_mm)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        pad = [max(3, int(np.ceil(7.0 / s))) for s in spacing_mm]
        box = tuple(
            slice(max(0, s.start - p), min(n_, s.stop + p))
            for s, p, n_ in zip(sl, pad, value.shape, strict=True)
        )
        comp = lab[box] == i
        v = value[box]
        ok = allowed[box]
        dilated = ndi.binary_dilation(comp, near)
        holes = _fill_enclosed(comp, spacing_mm) & ~comp
        outer = dilated & ~comp & ~holes & ok
        if interior_plateau:  # background away from the component's own partial-volume edge
            far = outer & ~ndi.binary_dilation(comp, np.ones((3, 3, 3)))
            outer = far if far.any() else outer
        core = ndi.binary_erosion(comp) if interior_plateau else comp
        plateau = float(np.percentile(v[core if core.any() else comp], plateau_percentile))
        bg_outer = float(np.median(v[outer])) if outer.any() else 0.0
        bg_inner = float(np.median(v[holes])) if holes.any() and inner_background else bg_outer
        thr = max(floor, (plateau + (bg_outer + bg_inner) / 2) / 2)
        grown = dilated & ok & (v > thr)
        enclosed = _fill_enclosed(grown, spacing_mm) & ~grown
        background = np.where(enclosed, bg_inner, bg_outer)
        ring = ndi.binary_dilation(grown, np.ones((3, 3, 3))) & ok
        frac = np.clip((v - background) / np.maximum(plateau - background, 1e-3), 0, 1)
        if interior_plateau:  # heterogeneous surroundings (grey matter) must not count as a little lesion
            frac = np.where(frac < MIN_FRACTION, 0, frac)
        size = float(frac[ring].sum())
        full = np.zeros(value.shape, bool)
        full[box] = grown
        fraction = np.zeros(value.shape, np.float32)
        fraction[box] = np.where(ring, frac, 0)
        out.append(_Grown(full, size, plateau - bg_outer, fraction))
    return out


def segment_enhancing(
    t1ce: np.ndarray,
    t1: np.ndarray | None,
    spacing_mm: tuple[float, ...],
) -> EnhancingResult:
    """Contrast-enhancing tumour on T1ce (T1ce minus T1 when T1 is given), without thin or CSF-bound
    enhancing structures (vessels, dura, choroid plexus)."""
    vols = [t1ce] if t1 is None else [t1ce, t1]
    mask = brain_mask(vols, spacing_mm)
    inner = ndi.binary_erosion(mask, _ball(2.0, spacing_mm))
    ce = normalise(correct_bias(t1ce, mask, spacing_mm), mask, "brightest")
    if t1 is not None:
        pre = normalise(correct_bias(t1, mask, spacing_mm), mask, "brightest")
        value, seed_thr, plateau_pct = ce - pre, SUBTRACTION_RATIO, 85.0
    else:
        # seeds sit just under the rim's plateau on T1ce alone: their median is the plateau; on the
        # subtraction the seeds reach far down the rim's edges and the plateau is their upper part
        value, seed_thr, plateau_pct = ce, ENHANCING_RATIO, 50.0
    value = ndi.gaussian_filter(value, 0.5) * mask
    seeds = (value > seed_thr) & inner
    floor = 0.6 * seed_thr if t1 is not None else 1.12
    enhancing = np.zeros(t1ce.shape, bool)
    core = np.zeros(t1ce.shape, bool)
    vml = voxel_ml(spacing_mm)
    csf_like = ce < 0.5
    n_vessel = n_plexus = 0
    enhancing_ml = 0.0
    fraction = np.zeros(t1ce.shape, np.float32)
    for grown in _half_max_grow(value, seeds, mask, spacing_mm, floor, plateau_pct, True):
        comp, size = grown.mask, grown.size_voxels
        if comp.sum() * vml < MIN_ENHANCING_ML or grown.contrast < MIN_CONTRAST:
            continue
        filled = _fill_enclosed(comp, spacing_mm)
        depth = ndi.distance_transform_edt(np.pad(filled, 1), sampling=spacing_mm)
        if float(depth.max()) < MIN_THICKNESS_MM and _bulk_mm(comp, spacing_mm) < MIN_BULK_MM:
            n_vessel += 1
            continue
        shell = ndi.binary_dilation(filled, _ball(3.0, spacing_mm)) & ~filled & mask
        small = comp.sum() * vml < PLEXUS_MAX_ML
        if small and shell.any() and float(csf_like[shell].mean()) > PLEXUS_CSF_FRACTION:
            n_plexus += 1
            continue
        enhancing |= comp
        core |= filled
        enhancing_ml += size * vml
        np.maximum(fraction, grown.fraction, out=fraction)
    return EnhancingResult(enhancing, core, enhancing_ml, fraction, n_vessel, n_plexus)


def _bulk_mm(comp: np.ndarray, spacing_mm: tuple[float, ...]) -> float:
    """Volume (mm3) over the squared bounding-box diagonal (mm2): tubes score low, blobs and shells high."""
    idx = np.argwhere(comp)
    extent = (idx.max(axis=0) - idx.min(axis=0) + 1) * np.asarray(spacing_mm)
    return float(comp.sum() * np.prod(spacing_mm) / np.sum(extent**2))


def _fill_enclosed(comp: np.ndarray, spacing_mm: tuple[float, ...]) -> np.ndarray:
    """The component with what it encloses: 3D hole filling after a small closing, and per axial slice."""
    closed = ndi.binary_closing(comp, _ball(2.5, spacing_mm), border_value=0) | comp
    filled = ndi.binary_fill_holes(closed)
    for z in np.flatnonzero(closed.any(axis=(1, 2))):
        filled[z] |= ndi.binary_fill_holes(closed[z])
    return filled


def segment_flair(flair: np.ndarray, t2: np.ndarray | None, spacing_mm: tuple[float, ...]) -> FlairResult:
    """FLAIR-hyperintense abnormality inside the brain; with T2, components T2 does not confirm are dropped."""
    vols = [flair] if t2 is None else [flair, t2]
    mask = brain_mask(vols, spacing_mm)
    inner = ndi.binary_erosion(mask, _ball(2.0, spacing_mm))
    fl = normalise(correct_bias(flair, mask, spacing_mm), mask, "tissue")
    value = ndi.gaussian_filter(fl, 0.5) * mask
    seeds = (value > FLAIR_RATIO) & inner
    t2n = None if t2 is None else correct_bias(t2, mask, spacing_mm, classes=2)
    abnormal = np.zeros(flair.shape, bool)
    fraction = np.zeros(flair.shape, np.float32)
    vml = voxel_ml(spacing_mm)
    dropped = 0
    for grown in _half_max_grow(value, seeds, mask, spacing_mm, 1.15, 50, False, True):
        comp = grown.mask
        if comp.sum() * vml < MIN_FLAIR_ML:
            continue
        if t2n is not None:
            # surrounding brain tissue, not CSF (dark on FLAIR, bright on T2)
            around = ndi.binary_dilation(comp, _ball(4.0, spacing_mm)) & ~comp & mask & (value > 0.6)
            if around.any() and np.median(t2n[comp]) < T2_CONFIRM_RATIO * np.median(t2n[around]):
                dropped += 1
                continue
        abnormal |= comp
        np.maximum(fraction, grown.fraction, out=fraction)
    return FlairResult(abnormal, fraction, dropped)
