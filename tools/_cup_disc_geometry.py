"""Cup/disc geometry from masks: ratios, rim width per direction and per ISNT sector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIEW_SECTORS = ("superior", "inferior", "left", "right")


@dataclass(frozen=True)
class RimProfile:
    """Disc and cup radius along rays from the disc centre, one ray per degree."""

    angles_deg: np.ndarray
    """Ray angles, 0 = towards the viewer's right, 90 = up (superior), counter-clockwise."""
    disc_radius_px: np.ndarray
    """Distance from the centre to the disc edge along each ray."""
    cup_radius_px: np.ndarray
    """Distance from the centre to the cup edge along each ray (0 where the ray misses the cup)."""

    @property
    def rim_px(self) -> np.ndarray:
        """Rim width along each ray."""
        return np.maximum(self.disc_radius_px - self.cup_radius_px, 0.0)


def bbox_height_px(mask: np.ndarray) -> int:
    """Height of a mask's bounding box in rows (0 for an empty mask)."""
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def bbox_width_px(mask: np.ndarray) -> int:
    """Width of a mask's bounding box in columns (0 for an empty mask)."""
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


def centroid_xy(mask: np.ndarray) -> tuple[float, float]:
    """Centre of mass of a mask as (x, y)."""
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def rim_profile(disc: np.ndarray, cup: np.ndarray, step_px: float = 0.5) -> RimProfile:
    """Sample disc and cup extents along 360 rays from the disc centroid."""
    cx, cy = centroid_xy(disc)
    h, w = disc.shape
    max_r = float(np.hypot(h, w))
    radii = np.arange(0.0, max_r, step_px)
    angles = np.arange(360, dtype=float)
    theta = np.deg2rad(angles)[:, None]
    xs = np.rint(cx + radii[None, :] * np.cos(theta)).astype(int)
    ys = np.rint(cy - radii[None, :] * np.sin(theta)).astype(int)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    xs_c, ys_c = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)

    def extent(mask: np.ndarray) -> np.ndarray:
        hit = mask[ys_c, xs_c] & inside
        # outermost sample still inside the mask along each ray, counting only the run that starts
        # at the centre side: the last True before the first False after the first True
        out = np.zeros(len(angles))
        for i in range(len(angles)):
            idx = np.flatnonzero(hit[i])
            if idx.size == 0:
                continue
            gaps = np.flatnonzero(np.diff(idx) > 1)
            last = idx[gaps[0]] if gaps.size else idx[-1]
            out[i] = radii[last] + step_px / 2
        return out

    return RimProfile(angles, extent(disc), extent(cup))


def sector_of(angle_deg: np.ndarray) -> np.ndarray:
    """Sector of each ray angle as seen by the viewer: superior, inferior, left or right (90° each)."""
    a = np.mod(angle_deg, 360)
    out = np.empty(a.shape, dtype=object)
    out[(a >= 45) & (a < 135)] = "superior"
    out[(a >= 225) & (a < 315)] = "inferior"
    out[(a >= 135) & (a < 225)] = "left"
    out[(a < 45) | (a >= 315)] = "right"
    return out


def sector_rim_widths_px(profile: RimProfile) -> dict[str, float]:
    """Median rim width in the superior, inferior, left and right 90° sectors."""
    names = sector_of(profile.angles_deg)
    rim = profile.rim_px
    return {s: float(np.median(rim[names == s])) for s in VIEW_SECTORS}


def nasal_temporal(widths_px: dict[str, float], laterality: str | None) -> tuple[float | None, float | None]:
    """(nasal, temporal) rim widths: nasal is the viewer's right for OD, left for OS; None if unknown."""
    if laterality == "OD":
        return widths_px["right"], widths_px["left"]
    if laterality == "OS":
        return widths_px["left"], widths_px["right"]
    return None, None


POLE_HALF_WIDTH_DEG = 30
"""The ISGEO rim criterion looks at 11-1 o'clock and 5-7 o'clock: ±30° around each vertical pole."""


def narrowest_rim_to_disc_ratio(
    profile: RimProfile, smooth_deg: int = 5, pole_half_width_deg: int = POLE_HALF_WIDTH_DEG
) -> tuple[float, float]:
    """Narrowest rim at the vertical poles over the disc's vertical diameter, and its angle.

    Following the ISGEO definition (rim ≤ 0.1 of the disc between 11 and 1 or 5 and 7 o'clock),
    only rays within ±pole_half_width_deg of superior (90°) and inferior (270°) count. The rim is
    averaged over ±smooth_deg degrees first so that a single crossing vessel cannot make it.
    """
    k = 2 * smooth_deg + 1
    rim = profile.rim_px
    padded = np.concatenate([rim[-smooth_deg:], rim, rim[:smooth_deg]])
    smooth = np.convolve(padded, np.ones(k) / k, mode="valid")
    vertical_diameter = profile.disc_radius_px[90] + profile.disc_radius_px[270]
    a = np.mod(profile.angles_deg, 360)
    at_poles = (np.abs(a - 90) <= pole_half_width_deg) | (np.abs(a - 270) <= pole_half_width_deg)
    candidates = np.where(at_poles, smooth, np.inf)
    i = int(np.argmin(candidates))
    return float(smooth[i] / max(vertical_diameter, 1e-9)), float(profile.angles_deg[i])


def isnt_violated(widths_px: dict[str, float], laterality: str | None, tolerance_px: float) -> bool:
    """Whether the rim breaks the normal order I ≥ S ≥ N ≥ T (within a tolerance).

    With unknown laterality nasal and temporal cannot be told apart, so only
    I ≥ S ≥ max(left, right) is checked.
    """
    i, s = widths_px["inferior"], widths_px["superior"]
    ok = i >= s - tolerance_px and s >= max(widths_px["left"], widths_px["right"]) - tolerance_px
    nasal, temporal = nasal_temporal(widths_px, laterality)
    if nasal is not None and temporal is not None:
        ok = ok and nasal >= temporal - tolerance_px
    return not ok
