"""Synthetic abdominal CT pairs (baseline and follow-up) with metastases and lymph nodes of known size.

``recist_pair`` renders two contrast-enhanced (portal-venous-like) abdominal CT volumes in HU of the same
phantom patient: an elliptic body with subcutaneous fat, a muscle wall, visceral fat, liver and spleen
(enhancing parenchyma, 88-120 HU), aorta, a vertebra, hypodense metastases (10-60 HU) inside the liver
and spleen, soft-tissue lymph nodes lying in fat, and confounders a lesion finder must leave alone:
kidneys with renal sinus fat, a descending colon with an air or fluid lumen. The follow-up study is the
baseline anatomy moved by a small rigid shift, with every lesion scaled about its centre by a factor
drawn for the requested response, optionally with one new lesion; slice thickness, pixel size, noise
and organ enhancement differ between the two studies.

Realism kept on purpose: partial volume (each object's voxel occupancy is supersampled, so thick slices
average across a lesion's cap), anisotropic voxels (0.7-0.9 mm in-plane, 2.5-5 mm slices), spatially
correlated noise and a smooth low-frequency HU drift. Truth is measured on the rendered masks (occupancy of
at least one half), with the same RECIST rules the tools follow, so it is what an ideal reader of these
volumes would measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from dxgraph.phantoms._cases import PhantomCase, PhantomImage
from dxgraph.phantoms._volume_files import write_nifti
from dxgraph.tools import (
    NORMAL_NODE_SHORT_AXIS_MM,
    LesionGeometry,
    centroid_mm,
    is_unequivocal_new,
    recist_category,
    recist_diameter_mm,
    recist_diameters,
    select_targets,
    volume_ml,
)

Response = Literal["CR", "PR", "SD", "PD"]
"""A designed RECIST 1.1 response."""

# design ranges of the lesion scale factor per response (applied to all three semi-axes)
_SCALE = {"PR": (0.42, 0.58), "SD": (0.9, 1.06), "PD": (1.3, 1.45)}
_SUPERSAMPLE_XY = 3
_SUPERSAMPLE_Z = 5


@dataclass(frozen=True)
class PhantomLesion:
    """One lesion of the phantom patient, in patient millimetres (baseline position)."""

    centre_mm: tuple[float, float, float]
    """Centre (z, y, x) in mm of the baseline anatomy."""
    semi_axes_mm: tuple[float, float, float]
    """Semi-axes (in-plane long, in-plane short, z) in mm at baseline."""
    angle_rad: float
    """In-plane rotation of the long axis."""
    lobulation: float
    """Relative amplitude of a 3-lobed contour modulation."""
    hu: float
    """Lesion attenuation in HU."""
    organ: str
    """``liver``, ``spleen`` or ``nodes``."""
    scale: float = 1.0
    """Scale factor at follow-up (0: gone)."""
    new: bool = False
    """Only present at follow-up."""

    @property
    def is_node(self) -> bool:
        """Whether the lesion is a lymph node."""
        return self.organ == "nodes"


@dataclass
class _Study:
    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    lesion_masks: list[tuple[tuple[slice, ...], np.ndarray] | None] = field(default_factory=list)


@dataclass(frozen=True)
class RecistPair:
    """A rendered baseline/follow-up pair with its truth."""

    baseline_hu: np.ndarray
    """Baseline volume (z, y, x) in HU, int16."""
    baseline_spacing_mm: tuple[float, float, float]
    """Baseline spacing (sz, sy, sx) in mm."""
    followup_hu: np.ndarray
    """Follow-up volume (z, y, x) in HU, int16."""
    followup_spacing_mm: tuple[float, float, float]
    """Follow-up spacing (sz, sy, sx) in mm."""
    shift_mm: tuple[float, float, float]
    """Rigid patient shift (z, y, x) in mm of the follow-up anatomy relative to the baseline."""
    lesions: tuple[PhantomLesion, ...]
    """All lesions, with their follow-up scale."""
    baseline_lesions: tuple[LesionGeometry, ...]
    """Truth measurements of the baseline lesions, measured on their rendered masks (None when not shown)."""
    followup_lesions: tuple[LesionGeometry | None, ...]
    """Truth measurements of every lesion at follow-up, by index in ``lesions``; None when gone."""
    baseline_index: tuple[int, ...]
    """Index into ``lesions`` of each entry of ``baseline_lesions``."""
    truth: dict[str, float | bool | str]
    """True values of the assessment tool's outputs."""
    baseline_mask: np.ndarray
    """All rendered baseline lesion voxels."""
    followup_mask: np.ndarray
    """All rendered follow-up lesion voxels."""


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _axis_mm(n: int, s: float) -> np.ndarray:
    return (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s)


def _smooth_field(
    shape: tuple[int, ...], sigma_vox: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    from scipy import ndimage

    white = rng.standard_normal(shape).astype(np.float32)
    f = ndimage.gaussian_filter(white, sigma_vox)
    return (f - f.mean()) / (f.std() + 1e-6)


def _ellipse_cylinder_occupancy(
    yy: np.ndarray, xx: np.ndarray, ry: float, rx: float, pixel_mm: float
) -> np.ndarray:
    """In-plane occupancy (0..1) of an axis-aligned elliptic cylinder centred at 0 (approximate SDF)."""
    r = np.sqrt((yy / ry) ** 2 + (xx / rx) ** 2)
    sdf = (r - 1.0) * min(ry, rx)
    return np.clip(0.5 - sdf / pixel_mm, 0.0, 1.0)


def _ellipsoid_occupancy_smooth(
    zz: np.ndarray, yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, axes: np.ndarray, pixel_mm: float
) -> np.ndarray:
    """Occupancy of a big ellipsoid (organs) from an approximate SDF; thick slices get z-supersampling."""
    r = np.sqrt(
        ((zz - centre[0]) / axes[0]) ** 2
        + ((yy - centre[1]) / axes[1]) ** 2
        + ((xx - centre[2]) / axes[2]) ** 2
    )
    sdf = (r - 1.0) * float(np.min(axes))
    return np.clip(0.5 - sdf / pixel_mm, 0.0, 1.0)


def _organ_occupancy(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre: np.ndarray,
    axes: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Occupancy of a big ellipsoid within its bounding box: (box slices, fractions), z-supersampled."""
    sz, sy, sx = spacing
    box = []
    for cen, ax, s, n in zip(centre, axes, spacing, shape, strict=True):
        mid = (n - 1) / 2.0
        box.append(
            slice(max(0, math.floor((cen - ax) / s + mid) - 2), min(n, math.ceil((cen + ax) / s + mid) + 3))
        )
    z = (np.arange(box[0].start, box[0].stop) - (shape[0] - 1) / 2.0) * sz
    y = ((np.arange(box[1].start, box[1].stop) - (shape[1] - 1) / 2.0) * sy)[None, :, None]
    x = ((np.arange(box[2].start, box[2].stop) - (shape[2] - 1) / 2.0) * sx)[None, None, :]
    occ = np.zeros((len(z), y.shape[1], x.shape[2]), np.float32)
    offsets = (np.arange(_SUPERSAMPLE_Z) - (_SUPERSAMPLE_Z - 1) / 2) / _SUPERSAMPLE_Z * sz
    for dz in offsets:
        zz = (z + dz)[:, None, None]
        occ += _ellipsoid_occupancy_smooth(zz, y, x, centre, axes, min(sy, sx)).astype(np.float32)
    return tuple(box), occ / _SUPERSAMPLE_Z


def _low_frequency(shape, spacing, rng: np.random.Generator) -> np.ndarray:
    """A smooth field of amplitude about one: sum of three separable cosine products, 150-400 mm periods."""
    grids = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    field = np.zeros(shape, np.float32)
    for _ in range(3):
        f = [
            np.cos(2 * math.pi * g / rng.uniform(150, 400) + rng.uniform(0, 2 * math.pi)).astype(np.float32)
            for g in grids
        ]
        field += f[0][:, None, None] * f[1][None, :, None] * f[2][None, None, :]
    return field / 1.5


def _lesion_occupancy(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    lesion: PhantomLesion,
    centre: np.ndarray,
    scale: float,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Supersampled occupancy of one lesion inside its bounding box: (box slices, fractions)."""
    sz, sy, sx = spacing
    a, b, c = (float(v) * scale for v in lesion.semi_axes_mm)
    reach = max(a, b) * (1 + lesion.lobulation) + 1.5 * max(sy, sx)
    reach_z = c + sz
    lo_hi = []
    for cen, s, r, n in zip(centre, spacing, (reach_z, reach, reach), shape, strict=True):
        mid = (n - 1) / 2.0
        lo = max(0, math.floor((cen - r) / s + mid))
        hi = min(n, math.ceil((cen + r) / s + mid) + 1)
        lo_hi.append((lo, hi))
    box = tuple(slice(lo, hi) for lo, hi in lo_hi)
    if any(hi <= lo for lo, hi in lo_hi):
        return box, np.zeros((0, 0, 0), np.float32)
    nz, ny, nx = (hi - lo for lo, hi in lo_hi)
    fz = (np.arange(_SUPERSAMPLE_Z) - (_SUPERSAMPLE_Z - 1) / 2) / _SUPERSAMPLE_Z
    fxy = (np.arange(_SUPERSAMPLE_XY) - (_SUPERSAMPLE_XY - 1) / 2) / _SUPERSAMPLE_XY
    mids = [(n - 1) / 2.0 for n in shape]
    zc = ((np.arange(lo_hi[0][0], lo_hi[0][1]) - mids[0]) * sz - centre[0])[:, None] + fz[None, :] * sz
    yc = ((np.arange(lo_hi[1][0], lo_hi[1][1]) - mids[1]) * sy - centre[1])[:, None] + fxy[None, :] * sy
    xc = ((np.arange(lo_hi[2][0], lo_hi[2][1]) - mids[2]) * sx - centre[2])[:, None] + fxy[None, :] * sx
    Z = zc.reshape(nz, _SUPERSAMPLE_Z, 1, 1, 1, 1)
    Y = yc.reshape(1, 1, ny, _SUPERSAMPLE_XY, 1, 1)
    X = xc.reshape(1, 1, 1, 1, nx, _SUPERSAMPLE_XY)
    ca, sa = math.cos(lesion.angle_rad), math.sin(lesion.angle_rad)
    u = ca * X + sa * Y  # along the long axis
    v = -sa * X + ca * Y
    theta = np.arctan2(v / b, u / a)
    bound = 1.0 + lesion.lobulation * np.cos(3 * theta + 7.0 * lesion.angle_rad)
    inside = (u / a) ** 2 + (v / b) ** 2 + (Z / c) ** 2 <= bound**2
    occ = inside.mean(axis=(1, 3, 5)).astype(np.float32)
    return box, occ


def _render(
    rng: np.random.Generator,
    spacing: tuple[float, float, float],
    shape: tuple[int, int, int],
    anatomy: dict,
    lesions: list[PhantomLesion],
    shift: np.ndarray,
    followup: bool,
) -> _Study:
    """One study in HU with the lesions shown at this timepoint; lesion masks are occupancy >= 0.5."""
    _, sy, sx = spacing
    y = _axis_mm(shape[1], sy)[:, None] - shift[1]
    x = _axis_mm(shape[2], sx)[None, :] - shift[2]
    px = min(sy, sx)
    body = _ellipse_cylinder_occupancy(y, x, anatomy["body_ry"], anatomy["body_rx"], px)
    fat_in = anatomy["fat_mm"]
    wall_in = fat_in + anatomy["wall_mm"]
    wall_out = _ellipse_cylinder_occupancy(y, x, anatomy["body_ry"] - fat_in, anatomy["body_rx"] - fat_in, px)
    visceral = _ellipse_cylinder_occupancy(
        y, x, anatomy["body_ry"] - wall_in, anatomy["body_rx"] - wall_in, px
    )
    hu2d = -1000.0 * (1 - body) + anatomy["fat_hu"] * (body - wall_out)
    hu2d += anatomy["muscle_hu"] * (wall_out - visceral) + anatomy["fat_hu"] * visceral
    # vertebra and aorta: cylinders along z
    for key, hu_key in (("vertebra", "bone_hu"), ("aorta", "aorta_hu")):
        cy, cx, r = anatomy[key]
        occ = _ellipse_cylinder_occupancy(y - cy, x - cx, r, r, px)
        hu2d = hu2d * (1 - occ) + anatomy[hu_key] * occ
    if anatomy["colon"] is not None:  # descending colon: a soft-tissue wall around air or fluid
        cy, cx, r, lumen_hu = anatomy["colon"]
        outer = _ellipse_cylinder_occupancy(y - cy, x - cx, r, r, px)
        lumen = _ellipse_cylinder_occupancy(y - cy, x - cx, r - 3.0, r - 3.0, px)
        hu2d = hu2d * (1 - outer) + anatomy["muscle_hu"] * (outer - lumen) + lumen_hu * lumen
    hu = np.repeat(hu2d[None].astype(np.float32), shape[0], axis=0)
    for centre, axes, side in anatomy["kidneys"]:  # enhancing kidneys with renal sinus fat opening medially
        c = np.asarray(centre) + shift
        kbox, occ = _organ_occupancy(shape, spacing, c, np.asarray(axes))
        hu[kbox] = hu[kbox] * (1 - occ) + anatomy["kidney_hu"] * occ
        sinus_c = c - np.array([0.0, 0.0, side * 0.6 * axes[2]])
        sinus_axes = np.array([0.6 * axes[0], 0.45 * axes[1], 0.5 * axes[2]])
        sbox, occ = _organ_occupancy(shape, spacing, sinus_c, sinus_axes)
        hu[sbox] = hu[sbox] * (1 - occ) + anatomy["fat_hu"] * occ
    organ_hu = dict(anatomy["organ_hu"])
    if followup:
        organ_hu = {k: v + rng.uniform(-8, 8) for k, v in organ_hu.items()}
    for name in ("liver", "spleen"):
        centre, axes = anatomy[name]
        obox, occ = _organ_occupancy(shape, spacing, np.asarray(centre) + shift, np.asarray(axes))
        tex = 1.0 + 0.03 * _smooth_field(occ.shape, (0.5, 3.0, 3.0), rng)
        hu[obox] = hu[obox] * (1 - occ) + (organ_hu[name] * tex) * occ
    masks: list[tuple[tuple[slice, ...], np.ndarray] | None] = []
    for les in lesions:
        scale = les.scale if followup else 1.0
        if (les.new and not followup) or scale <= 0:
            masks.append(None)
            continue
        box, occ = _lesion_occupancy(shape, spacing, les, np.asarray(les.centre_mm) + shift, scale)
        if occ.size == 0 or not (occ >= 0.5).any():
            masks.append(None)
            continue
        hu[box] = hu[box] * (1 - occ) + les.hu * occ
        masks.append((box, occ >= 0.5))
    drift = anatomy["drift_hu"] * _low_frequency(shape, spacing, rng)
    noise_sd = rng.uniform(8.0, 16.0)
    noise = _smooth_field(shape, (0.0, 0.6, 0.6), rng) * noise_sd
    body3d = np.repeat(body[None] > 0.5, shape[0], axis=0)
    out = hu + np.where(body3d, drift + noise, 0.2 * noise)
    return _Study(np.clip(np.rint(out), -1024, 3000).astype(np.int16), spacing, masks)


# --------------------------------------------------------------------------------------------
# design
# --------------------------------------------------------------------------------------------


def _anatomy(rng: np.random.Generator) -> dict:
    body_ry, body_rx = rng.uniform(92, 104), rng.uniform(122, 136)
    fat_mm, wall_mm = rng.uniform(10, 18), rng.uniform(7, 11)
    inner_ry, inner_rx = body_ry - fat_mm - wall_mm, body_rx - fat_mm - wall_mm
    liver = (
        (rng.uniform(-3, 3), rng.uniform(-22, -12), -inner_rx * rng.uniform(0.42, 0.46)),
        (rng.uniform(30, 35), inner_ry * rng.uniform(0.57, 0.63), inner_rx * rng.uniform(0.4, 0.44)),
    )
    spleen = (
        (rng.uniform(-4, 4), rng.uniform(0, 8), inner_rx * rng.uniform(0.62, 0.66)),
        (rng.uniform(26, 30), rng.uniform(26, 30), rng.uniform(20, 24)),
    )
    vertebra = (inner_ry - rng.uniform(24, 28), rng.uniform(-3, 3), rng.uniform(15, 18))
    aorta = (
        vertebra[0] - vertebra[2] - rng.uniform(14, 18),
        vertebra[1] + rng.uniform(14, 18),
        rng.uniform(9, 11),
    )
    organs = [liver, spleen]
    kidneys = []
    for side in (-1.0, 1.0):
        axes = (rng.uniform(26, 30), rng.uniform(15, 17), rng.uniform(15, 17))
        centre = (
            rng.uniform(10, 20),  # kidneys lie lower (caudal) than liver and spleen
            vertebra[0] + rng.uniform(-7, -3),
            vertebra[1] + side * (vertebra[2] + rng.uniform(5, 8) + axes[2]),
        )
        if _clear(centre, axes, organs, 5.0) and _in_cavity(centre, axes, (inner_ry, inner_rx), 3.0):
            kidneys.append((centre, axes, side))
    colon = None
    r = rng.uniform(11, 14)
    cyl = (-inner_ry * rng.uniform(0.45, 0.55), inner_rx * rng.uniform(0.45, 0.55), r)
    if _clear((0.0, cyl[0], cyl[1]), (1e3, r, r), organs, 5.0) and _in_cavity(
        (0.0, cyl[0], cyl[1]), (1.0, r, r), (inner_ry, inner_rx), 4.0
    ):
        colon = (*cyl, float(rng.choice([-950.0, rng.uniform(0, 20)])))
    return {
        "kidneys": kidneys,
        "colon": colon,
        "kidney_hu": rng.uniform(140, 180),
        "body_ry": body_ry,
        "body_rx": body_rx,
        "fat_mm": fat_mm,
        "wall_mm": wall_mm,
        "inner": (inner_ry, inner_rx),
        "liver": liver,
        "spleen": spleen,
        "vertebra": vertebra,
        "aorta": aorta,
        "fat_hu": rng.uniform(-115, -85),
        "muscle_hu": rng.uniform(40, 58),
        "bone_hu": rng.uniform(350, 550),
        "aorta_hu": rng.uniform(140, 190),
        "organ_hu": {"liver": rng.uniform(88, 112), "spleen": rng.uniform(95, 120)},
        "drift_hu": rng.uniform(2, 6),
    }


def _surface(centre, axes, n: int = 400) -> np.ndarray:
    """n points spread over an axis-aligned ellipsoid's surface, (z, y, x) mm."""
    k = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * k / n)
    theta = np.pi * (1 + 5**0.5) * k
    unit = np.stack([np.cos(phi), np.sin(phi) * np.sin(theta), np.sin(phi) * np.cos(theta)], axis=1)
    return np.asarray(centre) + unit * np.asarray(axes)


def _clear(centre, axes, others, gap: float) -> bool:
    """Whether an ellipsoid keeps about ``gap`` mm from each of the other (centre, axes) ellipsoids."""
    pts = _surface(centre, axes)
    for oc, oa in others:
        q = (pts - np.asarray(oc)) / (np.asarray(oa) + gap)
        if (np.sum(q**2, axis=1) <= 1).any() or _inside_ellipsoid(np.asarray(oc), centre, axes, 0.0):
            return False
    return True


def _in_cavity(centre, axes, inner: tuple[float, float], margin: float) -> bool:
    """Whether an ellipsoid's in-plane outline stays inside the visceral cavity by ``margin`` mm."""
    pts = _surface(centre, axes)
    return bool(np.all((pts[:, 1] / (inner[0] - margin)) ** 2 + (pts[:, 2] / (inner[1] - margin)) ** 2 <= 1))


def _inside_ellipsoid(p: np.ndarray, centre, axes, margin) -> bool:
    """Whether p lies inside the ellipsoid shrunk by margin (a number or one per axis)."""
    shrunk = np.asarray(axes, float) - np.asarray(margin, float)
    if (shrunk <= 0).any():
        return False
    q = (np.asarray(p) - np.asarray(centre)) / shrunk
    return bool(np.sum(q**2) <= 1.0)


def _fits(p, radius: float, placed: list[tuple[np.ndarray, float]], gap: float) -> bool:
    return all(np.linalg.norm(np.asarray(p) - q) >= radius + r + gap for q, r in placed)


def _organ_lesion(
    rng: np.random.Generator,
    anatomy: dict,
    organ: str,
    ld_mm: float,
    placed: list[tuple[np.ndarray, float]],
    max_scale: float,
) -> PhantomLesion | None:
    """A hypodense lesion of the given baseline longest diameter well inside the organ, or None if no room."""
    centre, axes = anatomy[organ]
    a = ld_mm / 2.0
    b = a * rng.uniform(0.7, 0.95)
    c = a * rng.uniform(0.7, 1.0)
    reach = a * max_scale * 1.1
    for _ in range(200):
        p = np.asarray(centre) + rng.uniform(-1, 1, 3) * np.asarray(axes)
        if not _inside_ellipsoid(p, centre, axes, (c * max_scale * 1.1 + 5.0, reach + 6.0, reach + 6.0)):
            continue
        if not _fits(p, reach, placed, 8.0):
            continue
        placed.append((p, reach))
        return PhantomLesion(
            centre_mm=(float(p[0]), float(p[1]), float(p[2])),
            semi_axes_mm=(a, b, c),
            angle_rad=float(rng.uniform(0, math.pi)),
            lobulation=float(rng.uniform(0.0, 0.06)),
            hu=float(rng.uniform(10, 60)),
            organ=organ,
        )
    return None


def _node(
    rng: np.random.Generator,
    anatomy: dict,
    short_axis_mm: float,
    placed: list[tuple[np.ndarray, float]],
    max_scale: float,
) -> PhantomLesion | None:
    """A soft-tissue ovoid node in visceral fat, clear of organs, vessels and bone, or None if no room."""
    inner_ry, inner_rx = anatomy["inner"]
    b = short_axis_mm / 2.0
    a = b * rng.uniform(1.2, 1.5)
    c = a * rng.uniform(0.7, 0.9)
    reach = a * max_scale * 1.05
    reach_z = c * max_scale * 1.05
    solid = [
        (np.asarray(anatomy["liver"][0]), np.asarray(anatomy["liver"][1])),
        (np.asarray(anatomy["spleen"][0]), np.asarray(anatomy["spleen"][1])),
        *((np.asarray(c), np.asarray(a)) for c, a, _ in anatomy["kidneys"]),
    ]
    tubes = [anatomy["vertebra"], anatomy["aorta"]]
    if anatomy["colon"] is not None:
        tubes.append(anatomy["colon"][:3])
    for _ in range(400):
        p = np.array(
            [rng.uniform(-15, 15), rng.uniform(-0.6, 0.75) * inner_ry, rng.uniform(-0.5, 0.5) * inner_rx]
        )
        # inside the visceral cavity with a fat margin
        if (p[1] / (inner_ry - reach - 6)) ** 2 + (p[2] / (inner_rx - reach - 6)) ** 2 > 1:
            continue
        if any(
            _inside_ellipsoid(p, cen, ax + np.array([reach_z, reach, reach]) + 6.0, 0.0) for cen, ax in solid
        ):
            continue
        clear = True
        for cy, cx, r in tubes:
            if math.hypot(p[1] - cy, p[2] - cx) < r + reach + 5.0:
                clear = False
        if not clear or not _fits(p, reach, placed, 8.0):
            continue
        placed.append((p, reach))
        return PhantomLesion(
            centre_mm=(float(p[0]), float(p[1]), float(p[2])),
            semi_axes_mm=(a, b, c),
            angle_rad=float(rng.uniform(0, math.pi)),
            lobulation=0.0,
            hu=float(rng.uniform(25, 50)),
            organ="nodes",
        )
    return None


def _design(
    rng: np.random.Generator,
    anatomy: dict,
    response: Response,
    new_lesion: bool,
    new_lesion_mm: float | None = None,
) -> list[PhantomLesion]:
    """Lesions with sizes kept away from RECIST thresholds, and their follow-up scale for the response."""
    lo, hi = _SCALE.get(response, (1.0, 1.0))
    max_scale = max(hi, 1.0)
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[PhantomLesion] = []

    def add(les: PhantomLesion | None) -> None:
        if les is not None:
            lesions.append(les)

    # liver: two targets, maybe a smaller non-target
    big = rng.uniform(24, 40)
    add(_organ_lesion(rng, anatomy, "liver", big, placed, max_scale))
    add(_organ_lesion(rng, anatomy, "liver", rng.uniform(16, big * 0.85), placed, max_scale))
    if rng.random() < 0.5:
        add(_organ_lesion(rng, anatomy, "liver", rng.uniform(6, 8.5), placed, max_scale))
    if rng.random() < 0.6:
        add(_organ_lesion(rng, anatomy, "spleen", rng.uniform(15, 22), placed, max_scale))
    add(_node(rng, anatomy, rng.uniform(17, 24), placed, max_scale))
    if rng.random() < 0.5:
        add(_node(rng, anatomy, rng.uniform(6, 8), placed, max_scale))
    out = []
    for les in lesions:
        if response == "CR":
            if les.is_node:
                scale = rng.uniform(5.0, 7.5) / (2 * les.semi_axes_mm[1])
                scale = min(scale, 1.0)
            else:
                scale = 0.0
        else:
            scale = float(rng.uniform(lo, hi))
        out.append(replace(les, scale=scale))
    if new_lesion:
        first = "liver" if rng.random() < 0.7 else "nodes"
        order: tuple[str, ...] = (first, "nodes" if first == "liver" else "liver", "spleen")
        if new_lesion_mm is not None:
            order = ("liver", "spleen")
        new = None
        for organ in order:
            if organ == "nodes":
                new = _node(rng, anatomy, rng.uniform(13, 16), placed, 1.0)
            else:
                size = rng.uniform(13, 18) if new_lesion_mm is None else float(new_lesion_mm)
                new = _organ_lesion(rng, anatomy, organ, size, placed, 1.0)
            if new is not None:
                break
        if new is not None:
            out.append(replace(new, new=True, scale=1.0))
    return out


def _measure_truth(masks: list, lesions: list[PhantomLesion], spacing) -> list[LesionGeometry | None]:
    """RECIST measurements of each rendered lesion mask (None for lesions not shown)."""
    out: list[LesionGeometry | None] = []
    for entry, les in zip(masks, lesions, strict=True):
        if entry is None:
            out.append(None)
            continue
        box, m = entry
        d = recist_diameters(m, spacing)
        offset = np.array([b.start for b in box], float) * np.asarray(spacing)
        out.append(
            LesionGeometry(
                centroid_mm=tuple(float(c) for c in np.asarray(centroid_mm(m, spacing)) + offset),
                longest_diameter_mm=d.longest_mm,
                short_axis_mm=d.perpendicular_mm,
                slice_index=d.slice_index + box[0].start,
                is_node=les.is_node,
                organ=les.organ,
                volume_ml=volume_ml(m, spacing),
                mean_hu=les.hu,
                surrounding_fat_ratio=1.0 if les.is_node else 0.0,
            )
        )
    return out


def recist_pair(
    seed: int,
    *,
    response: Response = "PR",
    new_lesion: bool = False,
    new_lesion_mm: float | None = None,
    baseline_thickness_mm: float | None = None,
    followup_thickness_mm: float | None = None,
) -> RecistPair:
    """Render a deterministic baseline/follow-up CT pair whose true RECIST response follows the design.

    ``response`` sets the follow-up scale of every lesion (CR: non-nodal lesions gone, nodes to 5-7.5 mm short
    axis; PR: x0.42-0.58; SD: x0.9-1.06; PD: x1.3-1.45); ``new_lesion`` adds one new lesion at follow-up
    (a 13-18 mm metastasis or a 13-16 mm short-axis node; ``new_lesion_mm`` sets the longest diameter of a
    new metastasis instead, e.g. below 10 mm for an equivocal one). Slice thicknesses are drawn from 2.5-5 mm
    unless given. The truth applies RECIST 1.1 to the rendered masks: the same target selection, sums and
    response rules as ``assess_recist_response``.
    """
    if response not in ("CR", "PR", "SD", "PD"):
        raise ValueError(f"response must be CR, PR, SD or PD, got {response!r}")
    rng = np.random.default_rng(seed)
    anatomy = _anatomy(rng)
    lesions = _design(rng, anatomy, response, new_lesion or new_lesion_mm is not None, new_lesion_mm)
    shift = np.array([rng.uniform(-3, 3), rng.uniform(-7, 7), rng.uniform(-7, 7)])
    studies = []
    for followup, thick in ((False, baseline_thickness_mm), (True, followup_thickness_mm)):
        sz = float(thick) if thick is not None else float(rng.choice([2.5, 3.0, 4.0, 5.0]))
        sxy = float(rng.uniform(0.75, 0.95))
        extent_z = 100.0
        shape = (
            round(extent_z / sz),
            math.ceil(2 * (anatomy["body_ry"] + 14) / sxy),
            math.ceil(2 * (anatomy["body_rx"] + 14) / sxy),
        )
        studies.append(
            _render(
                rng, (sz, sxy, sxy), shape, anatomy, lesions, shift if followup else np.zeros(3), followup
            )
        )
    base, fu = studies
    base_all = _measure_truth(base.lesion_masks, lesions, base.spacing_mm)
    fu_all = _measure_truth(fu.lesion_masks, lesions, fu.spacing_mm)
    base_index = tuple(i for i, g in enumerate(base_all) if g is not None)
    base_geoms = tuple(g for g in base_all if g is not None)
    thickness = base.spacing_mm[0]
    targets = select_targets(list(base_geoms), thickness)
    fu_diam: list[float] = []
    for t in targets:
        g = fu_all[base_index[t]]
        fu_diam.append(0.0 if g is None else recist_diameter_mm(g))
    base_sum = sum(recist_diameter_mm(base_geoms[t]) for t in targets)
    fu_sum = float(sum(fu_diam))
    new = any(
        les.new and g is not None and is_unequivocal_new(g, fu.spacing_mm[0])
        for les, g in zip(lesions, fu_all, strict=True)
    )
    resolved = all(
        bool(d < NORMAL_NODE_SHORT_AXIS_MM) if base_geoms[t].is_node else d == 0.0
        for t, d in zip(targets, fu_diam, strict=True)
    )
    change = 100.0 * (fu_sum - base_sum) / base_sum if base_sum > 0 else 0.0
    truth: dict[str, float | bool | str] = {
        "sum_diameters_baseline_mm": float(base_sum),
        "sum_diameters_followup_mm": fu_sum,
        "sum_change_percent": change,
        "sum_increase_from_nadir_percent": change,
        "sum_increase_from_nadir_mm": fu_sum - base_sum,
        "new_lesions": bool(new),
        "all_targets_resolved": bool(resolved),
        "target_count": float(len(targets)),
    }
    truth["recist_response"] = recist_category(
        change, fu_sum - base_sum, change, new_lesions=bool(new), all_targets_resolved=bool(resolved)
    )
    return RecistPair(
        baseline_hu=base.hu,
        baseline_spacing_mm=base.spacing_mm,
        followup_hu=fu.hu,
        followup_spacing_mm=fu.spacing_mm,
        shift_mm=(float(shift[0]), float(shift[1]), float(shift[2])),
        lesions=tuple(lesions),
        baseline_lesions=base_geoms,
        followup_lesions=tuple(fu_all),
        baseline_index=base_index,
        truth=truth,
        baseline_mask=_union(base.lesion_masks, base.hu.shape),
        followup_mask=_union(fu.lesion_masks, fu.hu.shape),
    )


def _union(masks: list, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for entry in masks:
        if entry is not None:
            out[entry[0]] |= entry[1]
    return out


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def write_recist_case(
    folder: Path, seed: int, response: Response = "PR", new_lesion: bool = False
) -> PhantomCase:
    """Write a baseline (prior) and follow-up (current) CT pair as NIfTI files, with the RECIST truth."""
    pair = recist_pair(seed, response=response, new_lesion=new_lesion)
    folder = Path(folder)
    stem = f"recist_{response.lower()}{'_new' if new_lesion else ''}_{seed}"
    prior = write_nifti(folder / f"{stem}_baseline.nii.gz", pair.baseline_hu, pair.baseline_spacing_mm)
    current = write_nifti(folder / f"{stem}_followup.nii.gz", pair.followup_hu, pair.followup_spacing_mm)
    truth = {k: v for k, v in pair.truth.items() if k != "target_count"}
    label = {"CR": "complete response", "PR": "partial response", "SD": "stable disease", "PD": "progression"}
    return PhantomCase(
        question="tumour response by RECIST 1.1 compared with the prior CT",
        images=(
            PhantomImage(prior, "ct", timepoint="prior"),
            PhantomImage(current, "ct", timepoint="current"),
        ),
        truth=truth,
        clinical_text="Metastatic colorectal cancer on chemotherapy; restaging CT against the baseline CT.",
        description=(
            f"Abdominal CT phantom pair designed for {label[response]}"
            f"{' with a new liver lesion or node' if new_lesion else ''}: "
            f"true RECIST {truth['recist_response']}, target sum "
            f"{truth['sum_diameters_baseline_mm']:.0f} -> {truth['sum_diameters_followup_mm']:.0f} mm"
        ),
    )


def recist_demo_cases(folder: Path) -> list[PhantomCase]:
    """Four phantom CT pairs spanning complete response, partial response, stable disease and progression."""
    return [
        write_recist_case(folder, 101, response="CR"),
        write_recist_case(folder, 102, response="PR"),
        write_recist_case(folder, 103, response="SD"),
        write_recist_case(folder, 104, response="PD"),
    ]
