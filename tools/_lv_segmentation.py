"""Classical left-ventricular blood-pool segmentation of a short-axis cine MRI (bright-blood SSFP), (t, z, y, x).

Method, all in physical units so that it does not depend on the pixel size:

1. **Locate the LV.** On each slice's time-mean image, bright blobs (Otsu within the central field of
   view) are scored by roundness, by how much they change over the cardiac cycle (the LV cavity beats),
   by how completely a dark ring (the myocardium) surrounds them, and by closeness to the image centre.
   Tracking starts from the best-scoring slice whose candidate the slices on both sides confirm (a
   candidate within reach): the base slice, where LV and atrium blur into one larger, still round and
   beating blob, is not confirmed from above. A start whose track is shorter than three slices is
   replaced by the next start (at most three are tried), and the longest track is kept.
2. **Track through the stack.** From the best slice outwards, each slice's seed is the previous slice's
   cavity centroid; a slice is kept while its cavity is round, enclosed by myocardium on most of its
   circumference, its centroid stays within reach of the neighbour's, and its cavity area over the cycle
   does not run against the ventricle's (the atria above the base fill while the ventricle empties:
   on Sunnybrook SC-HF-I-1 the first atrial slice correlates -0.92). This stops at the apex (no cavity)
   and at the base -- where the Sunnybrook experts stop too.
3. **Segment every frame of every kept slice.** A local Otsu threshold between blood and myocardium in a
   disc around the seed, the bright component holding the seed (after a small opening that cuts thin
   bridges into the right ventricle), holes filled and the convex hull taken: papillary muscles and
   trabeculae are counted as cavity, as in the Sunnybrook contours. If the component is not compact
   (solidity < 0.88 or elongated: a leak into the RV or atrium), or reaches out of the 45 mm disc (a
   threshold between lung and soft tissue on a small apical or end-systolic cavity gives one blob of the
   whole heart), the opening is enlarged until it is compact. Frames whose area jumps away from its
   temporal neighbours (the median over the neighbours where a cavity was found), or where nothing was
   found, are redone inside the slice's other cavities, dilated by 4 mm, at the median threshold of the
   frames that worked.

The result is a boolean (t, z, y, x) mask; slices outside the LV are empty.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import convex_hull_image, disk

__all__ = [
    "LV_CHECKS",
    "LVSegmentation",
    "lv_check_failures",
    "lv_flags_message",
    "segment_lv",
    "segment_lv_2d",
]

_SEARCH_RADIUS_FRACTION = 0.35
"""The LV is looked for within this fraction of the field of view from its centre."""
_MIN_CAVITY_MM2 = 40.0
"""Smallest cross-section counted as cavity (an apical slice)."""
_MAX_CAVITY_MM2 = 8000.0
"""Largest plausible cross-section (a dilated ventricle, about 100 mm across)."""
_MIN_RING_FRACTION = 0.7
"""Share of the cavity's circumference that myocardium must enclose for a slice to be in the LV."""
_MAX_STEP_MM = 15.0
"""Largest in-plane shift of the cavity centroid between neighbouring slices."""
_MIN_SOLIDITY = 0.88
"""Cavity area over its convex hull below which a component is taken for a leak."""
_MAX_STARTS = 3
"""Start slices tried at most."""
_MIN_TRACK_SLICES = 3
"""A track from the start slice shorter than this is retried from the next start."""
_MIN_AREA_CORRELATION = -0.2
"""A slice's cavity area must rise and fall with the start slice's over the cycle (correlation at least
this): the atria, above the base, fill while the ventricle empties (negative correlation)."""


@dataclass
class LVSegmentation:
    """An LV cavity mask with the slices it covers and what went wrong."""

    mask: np.ndarray
    """(t, z, y, x) bool cavity mask."""
    slices: list[int] = field(default_factory=list)
    """Slice indices counted as LV."""
    reference_areas: np.ndarray | None = None
    """Cavity area per frame summed over the slices kept so far: the curve a new slice's areas must follow."""
    flags: list[str] = field(default_factory=list)
    """Machine-readable warnings."""


def _ring_fraction(img: np.ndarray, comp: np.ndarray, thr: float, px_mm: float) -> float:
    """Share of rays from the cavity centroid that meet dark tissue (< thr) 1-12 mm past the cavity edge."""
    cy, cx = ndi.center_of_mass(comp)
    h, w = img.shape
    hits = 0
    n_rays = 36
    for a in np.linspace(0, 2 * np.pi, n_rays, endpoint=False):
        dy, dx = np.sin(a), np.cos(a)
        r = 0.0
        while True:  # walk to the cavity edge
            y, x = round(cy + r * dy), round(cx + r * dx)
            if not (0 <= y < h and 0 <= x < w) or not comp[y, x]:
                break
            r += 0.5
        found = False
        for step_mm in np.arange(1.0, 12.0, 0.5):
            rr = r + step_mm / px_mm
            y, x = round(cy + rr * dy), round(cx + rr * dx)
            if not (0 <= y < h and 0 <= x < w):
                break
            if img[y, x] < thr:
                found = True
                break
        hits += found
    return hits / n_rays


def _component_at(binary: np.ndarray, seed_yx: tuple[float, float], reach_px: float) -> np.ndarray | None:
    """The connected component holding the seed, or the nearest one within reach."""
    lab = label(binary, connectivity=1)
    if lab.max() == 0:
        return None
    sy, sx = round(seed_yx[0]), round(seed_yx[1])
    if 0 <= sy < lab.shape[0] and 0 <= sx < lab.shape[1] and lab[sy, sx] > 0:
        return lab == lab[sy, sx]
    dist, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
    if dist[sy, sx] > reach_px:
        return None
    return lab == lab[iy[sy, sx], ix[sy, sx]]


def _cavity(
    img: np.ndarray, seed_yx: tuple[float, float], px_mm: float, radius_mm: float = 45.0
) -> tuple[np.ndarray | None, float]:
    """Cavity mask of one image around a seed and the blood/myocardium threshold used."""
    h, w = img.shape
    half = int(np.ceil((radius_mm + 15.0) / px_mm))
    y0, x0 = max(0, int(seed_yx[0]) - half), max(0, int(seed_yx[1]) - half)
    y1, x1 = min(h, int(seed_yx[0]) + half + 1), min(w, int(seed_yx[1]) + half + 1)
    comp, thr = _cavity_in_crop(img[y0:y1, x0:x1], (seed_yx[0] - y0, seed_yx[1] - x0), px_mm, radius_mm)
    if comp is None:
        return None, thr
    full = np.zeros(img.shape, dtype=bool)
    full[y0:y1, x0:x1] = comp
    return full, thr


def _cavity_in_crop(
    img: np.ndarray, seed_yx: tuple[float, float], px_mm: float, radius_mm: float
) -> tuple[np.ndarray | None, float]:
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    dist_mm = np.hypot(yy - seed_yx[0], xx - seed_yx[1]) * px_mm
    roi = dist_mm < radius_mm
    thr = float(threshold_otsu(img[roi]))
    comp = None
    for _ in range(2):  # refine the threshold on a disc just larger than the cavity (blood vs myocardium)
        comp = _bright_component(img, thr, seed_yx, px_mm, roi)
        if comp is None:
            return None, thr
        r_eq_mm = np.sqrt(comp.sum() / np.pi) * px_mm
        local = dist_mm < min(radius_mm, r_eq_mm + 12.0)
        if local.sum() < 20:
            break
        thr = float(threshold_otsu(img[local]))
    comp = _bright_component(img, thr, seed_yx, px_mm, roi)
    if comp is None:
        return None, thr
    return convex_hull_image(ndi.binary_fill_holes(comp)), thr


def _bright_component(
    img: np.ndarray, thr: float, seed_yx: tuple[float, float], px_mm: float, roi: np.ndarray
) -> np.ndarray | None:
    """Bright component at the seed, opened more and more until it is compact (no leak) and inside the
    disc around the seed (a threshold between lung and soft tissue gives a blob of the whole heart)."""
    binary = img > thr
    for open_mm in (2.0, 3.5, 5.0, 7.0):
        r = max(1, round(open_mm / px_mm))
        opened = ndi.binary_opening(binary, structure=disk(r))
        comp = _component_at(opened, seed_yx, reach_px=8.0 / px_mm)
        if comp is None:
            continue
        comp = ndi.binary_fill_holes(comp)
        if (comp & ~roi).any():
            continue
        props = regionprops(comp.astype(np.uint8))[0]
        if props.solidity >= _MIN_SOLIDITY and props.axis_major_length <= 2.0 * props.axis_minor_length:
            return comp
    return None


def _candidates(mean_img: np.ndarray, std_img: np.ndarray, px_mm: float) -> list[tuple[float, tuple]]:
    """Scored LV candidates of one slice: (score, (cy, cx, area_mm2))."""
    h, w = mean_img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r_norm = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    central = r_norm < _SEARCH_RADIUS_FRACTION
    thr = float(threshold_otsu(mean_img[central]))
    binary = ndi.binary_opening(mean_img > thr, structure=disk(max(1, round(2.5 / px_mm)))) & central
    lab = label(binary, connectivity=1)
    out = []
    std_scale = float(np.percentile(std_img[central], 90)) + 1e-6
    for p in regionprops(lab):
        area_mm2 = p.area * px_mm**2
        if not (_MIN_CAVITY_MM2 * 3 <= area_mm2 <= _MAX_CAVITY_MM2) or p.perimeter == 0:
            continue
        roundness = min(1.0, 4 * np.pi * p.area / p.perimeter**2)
        comp = lab == p.label
        band = ndi.binary_dilation(comp, structure=disk(max(1, round(4.0 / px_mm)))) & ~comp
        motion = min(1.0, float(std_img[band | comp].mean()) / std_scale)
        ring = _ring_fraction(mean_img, comp, thr, px_mm)
        cy, cx = p.centroid
        centrality = 1.0 - min(1.0, np.hypot((cy - h / 2) / h, (cx - w / 2) / w) / _SEARCH_RADIUS_FRACTION)
        score = roundness * p.solidity * (0.3 + motion) * ring**2 * (0.3 + centrality)
        out.append((score, (cy, cx, area_mm2)))
    return out


def segment_lv(cine: np.ndarray, spacing_mm: tuple[float, float, float]) -> LVSegmentation:
    """Segment the LV blood pool of a (t, z, y, x) short-axis cine with spacing (sz, sy, sx) in mm."""
    cine = np.asarray(cine, dtype=np.float32)
    n_t, n_z, _h, _w = cine.shape
    px_mm = float(np.sqrt(spacing_mm[1] * spacing_mm[2]))
    smooth = np.stack([[ndi.gaussian_filter(cine[t, z], 0.6) for z in range(n_z)] for t in range(n_t)])
    mean_imgs = smooth.mean(axis=0)
    std_imgs = smooth.std(axis=0)
    # 1. locate: best candidate per slice, consensus over the middle of the stack
    best: dict[int, tuple[float, tuple]] = {}
    for z in range(n_z):
        cands = _candidates(mean_imgs[z], std_imgs[z], px_mm)
        if cands:
            best[z] = max(cands, key=lambda c: c[0])
    # 2. + 3. track outwards from a start slice and segment every frame of each kept slice; a start that
    # gives a short track (the base slice, where atrium and LV blur together) is replaced by the next one
    result = LVSegmentation(mask=np.zeros(cine.shape, dtype=bool))
    for start in _start_slices(best, px_mm)[:_MAX_STARTS]:
        if start in result.slices:
            continue
        trial = _track(smooth, start, best[start][1][:2], px_mm)
        if len(trial.slices) > len(result.slices):
            result = trial
        if len(result.slices) >= _MIN_TRACK_SLICES:
            break
    if not result.slices:
        result.flags.append("lv_not_found")
    elif 0 in result.slices or n_z - 1 in result.slices:
        result.flags.append("lv_touches_stack_end")
    return result


def segment_lv_2d(img: np.ndarray, px_mm: float) -> np.ndarray:
    """The LV cavity of one short-axis image (H, W) without a cine: the best-scoring round, enclosed bright
    blob (no motion term), thresholded around its centre as in step 3; empty when none is found."""
    sm = ndi.gaussian_filter(np.asarray(img, np.float32), 0.6)
    cands = _candidates(sm, np.zeros_like(sm), px_mm)
    if not cands:
        return np.zeros(sm.shape, bool)
    _, (cy, cx, _area) = max(cands, key=lambda c: c[0])
    comp, _thr = _cavity(sm, (cy, cx), px_mm)
    return np.zeros(sm.shape, bool) if comp is None else comp


def _start_slices(best: dict[int, tuple[float, tuple]], px_mm: float) -> list[int]:
    """Slices to start tracking from, best first: round, beating and large candidates that the slices on
    both sides confirm (a candidate within reach); the slice at the base, where the atrium adds to the
    cavity, has a larger but unconfirmed blob."""

    def confirmed(z: int) -> bool:
        cy, cx = best[z][1][:2]
        return all(
            n in best and np.hypot(best[n][1][0] - cy, best[n][1][1] - cx) * px_mm <= _MAX_STEP_MM
            for n in (z - 1, z + 1)
        )

    return sorted(best, key=lambda z: (confirmed(z), best[z][0] * np.sqrt(best[z][1][2])), reverse=True)


def _track(smooth: np.ndarray, start: int, seed: tuple[float, float], px_mm: float) -> LVSegmentation:
    """Segment the start slice, then its neighbours outwards while they are LV."""
    result = LVSegmentation(mask=np.zeros(smooth.shape, dtype=bool))
    for direction in (+1, -1):
        prev = seed
        z = start if direction == +1 else start - 1
        while 0 <= z < smooth.shape[1]:
            kept = _segment_slice(smooth[:, z], prev, px_mm, result, z)
            if kept is None:
                break
            prev = kept
            z += direction
    result.slices.sort()
    return result


def _segment_slice(
    frames: np.ndarray, seed: tuple[float, float], px_mm: float, result: LVSegmentation, z: int
) -> tuple[float, float] | None:
    """Segment all frames of one slice; record and return its centroid, or None when it is not LV."""
    masks: list[np.ndarray | None] = []
    thrs = []
    for t in range(frames.shape[0]):
        comp, thr = _cavity(frames[t], seed, px_mm)
        masks.append(comp)
        thrs.append(thr)
    raw = np.array([0.0 if m is None else float(m.sum()) for m in masks])
    # frames whose area jumps away from its neighbours in time (a leak, or nothing found) are redone
    # inside the other frames' cavities (dilated by 4 mm), with the slice's median threshold
    # (the temporal median is taken over the frames where a cavity was found, so that a few good frames
    # among failed ones are not taken for outliers themselves)
    n_t = len(raw)
    smooth = np.array(
        [
            np.median([raw[(t + k) % n_t] for k in range(-2, 3) if raw[(t + k) % n_t] > 0] or [0.0])
            for t in range(n_t)
        ]
    )
    outlier = (raw == 0) | (np.abs(raw - smooth) > 0.2 * np.maximum(smooth, 1.0))
    good = [m for m, bad in zip(masks, outlier, strict=True) if m is not None and not bad]
    if not good:
        return None
    allowed = ndi.binary_dilation(np.any(good, axis=0), structure=disk(max(1, round(4.0 / px_mm))))
    centre = ndi.center_of_mass(np.any(good, axis=0))
    # the threshold of the frames that worked: a failed frame's threshold may split lung from myocardium
    thr_med = float(np.median([thr for thr, bad in zip(thrs, outlier, strict=True) if not bad]))
    for t in np.nonzero(outlier)[0].tolist():
        binary = ndi.binary_opening(frames[t] > thr_med, structure=disk(max(1, round(2.0 / px_mm))))
        m = _component_at(binary & allowed, centre, reach_px=8.0 / px_mm)
        masks[t] = None if m is None else convex_hull_image(ndi.binary_fill_holes(m))
        thrs[t] = thr_med
    areas = np.array([0.0 if m is None else m.sum() * px_mm**2 for m in masks])
    ed = int(np.argmax(areas))
    if areas[ed] < _MIN_CAVITY_MM2 or areas[ed] > _MAX_CAVITY_MM2:
        return None
    comp = masks[ed]
    assert comp is not None
    cy, cx = ndi.center_of_mass(comp)
    if np.hypot(cy - seed[0], cx - seed[1]) * px_mm > _MAX_STEP_MM:
        return None
    if _ring_fraction(frames[ed], comp, thrs[ed], px_mm) < _MIN_RING_FRACTION:
        return None
    ref = result.reference_areas
    if ref is not None and areas.std() > 0 and ref.std() > 0:
        if float(np.corrcoef(areas, ref)[0, 1]) < _MIN_AREA_CORRELATION:
            return None
    result.reference_areas = areas if ref is None else ref + areas
    for t, m in enumerate(masks):
        if m is None:
            result.flags.append(f"frame_{t}_slice_{z}_not_segmented")
        else:
            result.mask[t, z] = m
    result.slices.append(z)
    return float(cy), float(cx)


LV_CHECKS: dict[str, str] = {
    "lv_not_found": "no left-ventricular cavity was found",
    "lv_not_enclosed": (
        "the tracked cavity is not a round blood pool enclosed by myocardium (a right ventricle, an atrium or "
        "another bright structure)"
    ),
    "lv_inconsistent": "the tracked cavity is not consistent across slices and phases (or does not beat)",
    "lv_implausible_size": "the tracked cavity's size is implausible for a left ventricle at this pixel spacing",
}
"""The plausibility checks every LV segmenter's mask must pass: flag -> what its failure means."""
_MIN_EDV_ML, _MAX_EDV_ML = 10.0, 600.0
"""Plausible end-diastolic volumes (a small child's to the largest dilated ventricle), mL."""
_MIN_CHECK_RING = 0.6
"""Median share of the cavity's circumference enclosed by darker wall, over the ED slices, below which the
cavity is not taken for the LV."""
_MAX_DARK_INTERIOR = 0.35
"""Share of the ED cavity (mid slices) darker than the blood/wall threshold above which it holds wall (the hull
of a crescent-shaped right ventricle wraps the septum); papillary muscles are about 10-20 %."""
_MIN_MASK_SOLIDITY = 0.75
"""Area over convex hull of the ED cavity on the mid slices below which it is crescent-shaped (a right ventricle)."""
_MIN_EXTENT_MM = 30.0
"""Shortest plausible extent of the LV cavity along the stack (slices x slice spacing), mm: a track of one or
two slices is an apical right ventricle or another blob, not a ventricle 50-110 mm long."""
_MIN_STROKE_FRACTION = 0.05
"""(EDV - ESV) / EDV below which the cavity does not beat: a static bright structure, not a ventricle."""


def lv_flags_message(failures: list[str]) -> str:
    """One sentence naming the failed LV checks."""
    return "; ".join(LV_CHECKS.get(f, f) for f in failures) + ": the ejection fraction is not assessable"


def _local_threshold(img: np.ndarray, comp: np.ndarray, px_mm: float) -> float:
    """Blood/wall threshold: midway between the cavity's median and the median of a 2-8 mm band outside it."""
    outer = ndi.binary_dilation(comp, structure=disk(max(1, round(8.0 / px_mm))))
    inner = ndi.binary_dilation(comp, structure=disk(max(1, round(2.0 / px_mm))))
    band = outer & ~inner
    if not band.any():
        return float(np.median(img[comp]))
    return 0.5 * (float(np.median(img[comp])) + float(np.median(img[band])))


def lv_check_failures(
    cine: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float]
) -> tuple[list[str], list[str]]:
    """The failed plausibility checks (``LV_CHECKS`` flags) of a (t, z, y, x) cavity mask, and warnings.

    Enclosure (on the end-diastolic frame): the cavity is surrounded by darker wall on most of its
    circumference, is not crescent-shaped and holds little wall. Consistency: contiguous slices whose
    centroids stay within ``_MAX_STEP_MM`` of their neighbours', whose areas rise and fall with the whole
    cavity's over the cycle, and a cavity that beats. Size: EDV and cross-sections plausible in mm.
    """
    sz, sy, sx = spacing_mm
    px_mm = float(np.sqrt(sy * sx))
    n_t = mask.shape[0]
    counts = mask.reshape(n_t, mask.shape[1], -1).sum(axis=2).astype(float)  # (t, z) pixels
    slices = [int(z) for z in np.nonzero(counts.sum(axis=0))[0]]
    if not slices:
        return ["lv_not_found"], []
    frames = [t for t in range(n_t) if counts[t].sum() > 0]
    vols = counts.sum(axis=1) * sz * sy * sx / 1000.0
    ed = max(frames, key=lambda t: vols[t])
    es = min(frames, key=lambda t: vols[t])
    failures: list[str] = []
    warnings: list[str] = []
    # size
    max_area_mm2 = float(counts[ed].max()) * sy * sx
    extent_mm = len(slices) * sz
    if (
        not (_MIN_EDV_ML <= vols[ed] <= _MAX_EDV_ML)
        or max_area_mm2 > _MAX_CAVITY_MM2
        or extent_mm < _MIN_EXTENT_MM
    ):
        failures.append("lv_implausible_size")
    # enclosure, on the ED frame's slices (mid slices for shape: the apex and base are irregular)
    img = np.asarray(cine[ed], np.float32)
    ed_slices = [z for z in slices if counts[ed, z] > 0]
    rings, dark, solid = [], [], []
    mid = ed_slices[len(ed_slices) // 4 : len(ed_slices) - len(ed_slices) // 4] or ed_slices
    for z in ed_slices:
        comp = mask[ed, z]
        sm = ndi.gaussian_filter(img[z], 0.6)
        thr = _local_threshold(sm, comp, px_mm)
        rings.append(_ring_fraction(sm, comp, thr, px_mm))
        if z in mid:
            dark.append(float((sm[comp] < thr).mean()))
            props = regionprops(label(comp, connectivity=1))
            biggest = max(props, key=lambda p: p.area)
            solid.append(float(comp.sum()) / float(biggest.area_convex))
    if (
        float(np.median(rings)) < _MIN_CHECK_RING
        or float(np.median(dark)) > _MAX_DARK_INTERIOR
        or float(np.median(solid)) < _MIN_MASK_SOLIDITY
    ):
        failures.append("lv_not_enclosed")
    # consistency over slices and phases
    inconsistent = slices != list(range(slices[0], slices[-1] + 1))
    cents = {z: ndi.center_of_mass(mask[ed, z]) for z in ed_slices}
    for a, b in itertools.pairwise(ed_slices):
        if np.hypot(cents[a][0] - cents[b][0], cents[a][1] - cents[b][1]) * px_mm > _MAX_STEP_MM:
            inconsistent = True
    if len(frames) >= 4 and len(slices) >= 2:
        total = counts[frames].sum(axis=1)
        against = 0
        for z in slices:
            a = counts[frames, z]
            if a.std() > 0 and total.std() > 0 and np.corrcoef(a, total)[0, 1] < _MIN_AREA_CORRELATION:
                against += 1
        if against > len(slices) / 3:
            inconsistent = True
    if len(frames) >= 4 and (vols[ed] - vols[es]) / max(vols[ed], 1e-9) < _MIN_STROKE_FRACTION:
        inconsistent = True
    if inconsistent:
        failures.append("lv_inconsistent")
    if len(frames) < n_t:
        warnings.append("frames_without_cavity")
    return failures, warnings
