"""Synthetic chest CT slabs with lung nodules of known size, volume, type and number.

``nodule_phantom`` renders a slab of chest (z, y, x) in HU: a curved chest wall (+40 HU) on one side,
lung parenchyma (about -850 HU, with slow texture), peripheral vessels (tubes of 0.5-1.0 mm radius, +40 HU, kept
at least 3 mm from the nodules), and one or more nodules: lobulated ellipsoids, solid (about +30 HU),
pure ground glass (about -600 HU) or part-solid (a ground-glass nodule around a solid core). Partial
volume is real: the scene is rendered on a grid three times finer in-plane and about 0.4 mm in z, then
averaged down onto anisotropic voxels (0.6-0.8 mm in-plane, 1.25-2.5 mm slices). Gaussian noise
(15-30 HU, slightly correlated) is added. Everything random comes from ``seed``.

The truth is measured on the rendered geometry, not copied from the design: the nodule's mask is where
its fine-grid occupancy is at least half a voxel, its diameter is the Fleischner average diameter of that
mask (tools/_nodule_segmentation.average_diameter_mm), its volume is the exact partial-volume sum.

``write_nodule_case`` writes a NIfTI file (or, with ``dicom=True``, a folder of single-slice CT DICOM
files with shuffled names) that ``read_image`` loads with the right spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dxgraph.phantoms._cases import PhantomCase, PhantomImage
from dxgraph.phantoms._volume_files import write_dicom_slice, write_nifti
from dxgraph.tools import average_diameter_mm

NoduleKind = Literal["solid", "part_solid", "ground_glass"]

_FINE_XY = 3
"""Supersampling factor in-plane."""
_FINE_Z_MM = 0.4
"""Target fine-grid step in z, mm."""
_FOV_MM = 90.0
"""In-plane field of view of the slab, mm (wider than a nodule-centred crop)."""
_DEPTH_MM = 40.0
"""Slab thickness, mm."""

LOW_RISK_TEXT = "52-year-old woman, never smoker, no family history of lung cancer. Incidental finding."
"""Canned clinical text of a low-risk patient."""
HIGH_RISK_TEXT = "67-year-old man, current smoker with 40 pack-years, emphysema. Incidental nodule on CT."
"""Canned clinical text of a high-risk patient."""


@dataclass(frozen=True)
class NodulePhantom:
    """A rendered chest slab and its truth."""

    hu: np.ndarray
    """(z, y, x) HU, int16."""
    spacing_mm: tuple[float, float, float]
    """(sz, sy, sx), mm."""
    nodule_masks: tuple[np.ndarray, ...]
    """Boolean mask of each nodule (half-voxel occupancy), the dominant (largest) first."""
    diameter_mm: float
    """Fleischner average diameter of the dominant nodule's mask."""
    volume_mm3: float
    """Partial-volume volume of the dominant nodule, mm^3."""
    nodule_type: NoduleKind
    """Type of the dominant nodule."""
    solid_component_mm: float
    """Average diameter of the dominant nodule's solid part: the diameter if solid, 0 if ground glass."""
    nodule_count: int
    """Number of nodules."""


def _fine_axes(n: int, step: float, k: int) -> np.ndarray:
    """Centres (mm) of the k fine samples in each of n voxels of size step, voxel 0 centred at 0."""
    return (np.arange(n * k) + 0.5) / k * step - step / 2


def _nodule_field(
    zz: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    centre: np.ndarray,
    semi: np.ndarray,
    rot: np.ndarray,
    lobes: tuple[tuple[float, int, float], ...],
) -> np.ndarray:
    """Normalised radius (< 1 inside) of a lobulated, rotated ellipsoid at the fine points."""
    p = np.stack(np.broadcast_arrays(zz - centre[0], yy - centre[1], xx - centre[2]), axis=-1) @ rot
    q = p / semi
    rho = np.sqrt(np.sum(q**2, axis=-1))
    theta = np.arctan2(q[..., 1], q[..., 2])
    phi = np.arccos(np.clip(q[..., 0] / np.maximum(rho, 1e-9), -1, 1))
    mod = np.ones_like(rho)
    for amp, k, phase in lobes:
        mod += amp * np.cos(k * theta + phase) * np.sin(phi)
    return rho / mod


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def nodule_phantom(
    seed: int,
    *,
    diameter_mm: float | None = None,
    nodule_type: NoduleKind | None = None,
    count: int = 1,
    solid_fraction: float | None = None,
) -> NodulePhantom:
    """Render a chest slab with ``count`` nodules; the first (dominant) has about ``diameter_mm``."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    d0 = float(diameter_mm if diameter_mm is not None else rng.uniform(4.0, 20.0))
    kind0: NoduleKind = nodule_type or rng.choice(["solid", "solid", "part_solid", "ground_glass"])
    sy = sx = float(rng.uniform(0.6, 0.8))
    sz = float(rng.choice([1.25, 1.5, 2.0, 2.5]))
    ny = nx = round(_FOV_MM / sy)
    nz = round(_DEPTH_MM / sz)
    kz = max(1, round(sz / _FINE_Z_MM))

    # nodules: the dominant first, the others 45-85% of its diameter and at least 5.5 mm (the tool counts
    # extra nodules from 5 mm), >= 12 mm apart
    if count > 1 and d0 < 6.5:
        raise ValueError("a phantom with several nodules needs a dominant nodule of 6.5 mm or more")
    wall_x = 0.12 * _FOV_MM
    designs: list[tuple[float, NoduleKind]] = [(d0, kind0)]
    for _ in range(count - 1):
        designs.append((float(np.clip(d0 * rng.uniform(0.45, 0.7), 5.5, 0.85 * d0)), "solid"))
    centres: list[np.ndarray] = []
    for d, _k in designs:
        for _try in range(500):
            c = np.array(
                [
                    rng.uniform(0.35, 0.65) * nz * sz,
                    rng.uniform(0.2, 0.8) * ny * sy,
                    rng.uniform(wall_x + 8 + d, _FOV_MM - 6 - d),
                ]
            )
            if all(np.linalg.norm(c - o) > 12 + d for o in centres):
                break
        centres.append(c)

    # vessels: straight tubes through the slab, away from the nodules
    vessels: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _try in range(200):
        if len(vessels) >= int(rng.integers(4, 8)):
            break
        p0 = np.array([rng.uniform(0, nz * sz), rng.uniform(0, ny * sy), rng.uniform(wall_x + 5, _FOV_MM)])
        u = rng.standard_normal(3)
        u[0] *= 0.5
        u /= np.linalg.norm(u)
        radius = float(rng.uniform(0.5, 1.0))
        ok = True
        for c, (d, _k) in zip(centres, designs, strict=True):
            dist = np.linalg.norm(np.cross(c - p0, u))
            if dist < d / 2 * 1.4 + radius + 3.0:
                ok = False
        if ok:
            vessels.append((p0, u, radius))

    lung_hu = float(rng.uniform(-880, -820))
    params = []
    for (d, kind), c in zip(designs, centres, strict=True):
        elong = rng.uniform(0.85, 1.15, 3)
        semi = d / 2 * elong / np.cbrt(np.prod(elong))
        lobes = tuple(
            (float(rng.uniform(0.02, 0.07)), int(rng.integers(3, 7)), float(rng.uniform(0, 6.3)))
            for _ in range(2)
        )
        frac = float(solid_fraction if solid_fraction is not None else rng.uniform(0.35, 0.55))
        params.append((c, semi, _random_rotation(rng), lobes, kind, frac))

    # background on the voxel grid, edges given a linear partial-volume ramp one voxel wide
    cz, cy, cx = (np.arange(n) * st for n, st in ((nz, sz), (ny, sy), (nx, sx)))
    zz3, yy3, xx3 = np.meshgrid(cz, cy, cx, indexing="ij")
    texture = ndi.gaussian_filter(rng.standard_normal((nz, ny, nx)), (0.5, 4.0, 4.0))
    hu = lung_hu + 15.0 * texture / (texture.std() + 1e-9)
    wall_phase, wall_amp = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 5.0)
    wall_edge = wall_x + wall_amp * np.sin(yy3 / 25.0 + wall_phase + zz3 / 30.0)
    occ_wall = np.clip((wall_edge - xx3) / sx + 0.5, 0, 1)
    hu = hu * (1 - occ_wall) + 40.0 * occ_wall
    for p0, u, radius in vessels:
        rel = np.stack([zz3 - p0[0], yy3 - p0[1], xx3 - p0[2]], axis=-1)
        dist = np.linalg.norm(np.cross(rel, u), axis=-1)
        occ_v = np.clip((radius - dist) / sx + 0.5, 0, 1)
        hu = hu * (1 - occ_v) + 40.0 * occ_v

    # nodules supersampled in their boxes: fine occupancy averaged down onto the voxels
    ks = (kz, _FINE_XY, _FINE_XY)
    occupancy: list[np.ndarray] = []
    solid_occupancy: list[np.ndarray] = []
    for c, semi, rot, lobes, kind, frac in params:
        reach = semi.max() * 1.3 + 1.0
        box = tuple(
            slice(max(0, int((c[i] - reach) / st)), min(n, int((c[i] + reach) / st) + 2))
            for i, (st, n) in enumerate(zip((sz, sy, sx), (nz, ny, nx), strict=True))
        )
        axes = [
            _fine_axes(b.stop - b.start, st, k) + b.start * st
            for b, st, k in zip(box, (sz, sy, sx), ks, strict=True)
        ]
        zf, yf, xf = np.meshgrid(*axes, indexing="ij", sparse=True)
        f = _nodule_field(zf, yf, xf, c, semi, rot, lobes)
        shape = tuple(b.stop - b.start for b in box)

        def down(a: np.ndarray, shape: tuple[int, ...] = shape) -> np.ndarray:
            return a.reshape(shape[0], ks[0], shape[1], ks[1], shape[2], ks[2]).mean(axis=(1, 3, 5))

        occ = np.zeros(hu.shape)
        occ[box] = down((f < 1.0).astype(np.float32))
        core = np.zeros(hu.shape)
        if kind == "solid":
            core = occ
        elif kind == "part_solid":
            core[box] = down((f < frac).astype(np.float32))
        solid_hu, ggo_hu = rng.uniform(10, 50), rng.uniform(-650, -550)
        hu = hu * (1 - occ) + (ggo_hu * (occ - core) + solid_hu * core)
        occupancy.append(occ)
        solid_occupancy.append(core)

    noise = ndi.gaussian_filter(rng.standard_normal(hu.shape), (0, 0.6, 0.6))
    hu = hu + noise / noise.std() * rng.uniform(15, 30)
    sp = (sz, sy, sx)
    masks = tuple(o >= 0.5 for o in occupancy)
    vol0 = float(occupancy[0].sum() * sz * sy * sx)
    diam0 = average_diameter_mm(masks[0], sp)[0]
    solid_mm = {"solid": diam0, "ground_glass": 0.0}.get(kind0)
    if solid_mm is None:
        solid_mm = average_diameter_mm(solid_occupancy[0] >= 0.5, sp)[0]
    return NodulePhantom(
        hu=np.clip(np.round(hu), -1024, 3071).astype(np.int16),
        spacing_mm=sp,
        nodule_masks=masks,
        diameter_mm=diam0,
        volume_mm3=vol0,
        nodule_type=kind0,
        solid_component_mm=float(solid_mm),
        nodule_count=len(masks),
    )


def write_dicom_series(
    folder: Path, hu: np.ndarray, spacing_mm: tuple[float, float, float], seed: int = 0
) -> None:
    """Write a (z, y, x) HU volume as single-slice CT DICOM files with shuffled names (axial geometry)."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_z = hu.shape[0]
    origin = rng.uniform(-150, -50, 3)
    series_uid = generate_uid()
    stored = np.clip(hu.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
    names = rng.permutation(n_z)
    for z in range(n_z):
        write_dicom_slice(
            folder / f"CT{names[z]:05d}.dcm",
            stored[z],
            modality="CT",
            series_uid=series_uid,
            instance_number=z + 1,
            orientation=(1, 0, 0, 0, 1, 0),
            position_mm=(origin[0], origin[1], origin[2] + z * spacing_mm[0]),
            pixel_spacing_mm=(spacing_mm[1], spacing_mm[2]),
            slice_thickness_mm=spacing_mm[0],
            RescaleSlope="1",
            RescaleIntercept="-1024",
        )


def write_nodule_case(
    folder: Path,
    seed: int,
    *,
    diameter_mm: float | None = None,
    nodule_type: NoduleKind | None = None,
    count: int = 1,
    clinical_text: str | None = None,
    clinical_risk: Literal["low", "high"] | None = None,
    dicom: bool = False,
) -> PhantomCase:
    """Render a nodule phantom and write it (NIfTI, or a DICOM series with ``dicom=True``) under ``folder``.

    ``clinical_risk`` without ``clinical_text`` picks a canned text of that risk, and puts the risk in the
    truth; the truth also holds diameter_mm, volume_mm3, nodule_type, nodule_count, solid_component_mm.
    """
    ph = nodule_phantom(seed, diameter_mm=diameter_mm, nodule_type=nodule_type, count=count)
    if dicom:
        path = folder / f"nodule_{seed}_dicom"
        write_dicom_series(path, ph.hu, ph.spacing_mm, seed)
    else:
        path = folder / f"nodule_{seed}.nii.gz"
        write_nifti(path, ph.hu, ph.spacing_mm)
    if clinical_text is None and clinical_risk is not None:
        clinical_text = LOW_RISK_TEXT if clinical_risk == "low" else HIGH_RISK_TEXT
    truth: dict[str, float | bool | str] = {
        "diameter_mm": ph.diameter_mm,
        "volume_mm3": ph.volume_mm3,
        "nodule_type": ph.nodule_type,
        "nodule_count": ph.nodule_count,
        "solid_component_mm": ph.solid_component_mm,
    }
    if clinical_risk is not None:
        truth["clinical_risk"] = clinical_risk
    kind = ph.nodule_type.replace("_", "-")
    return PhantomCase(
        question="Pulmonary nodule on chest CT: Fleischner follow-up?",
        images=(PhantomImage(path=path, modality="ct"),),
        truth=truth,
        clinical_text=clinical_text,
        description=f"chest CT slab, {ph.nodule_count} nodule(s), dominant {kind} {ph.diameter_mm:.1f} mm",
    )


def nodule_demo_cases(folder: Path) -> list[PhantomCase]:
    """Four demo cases: small solid low risk (no follow-up), 7 mm solid high risk, 12 mm part-solid
    (DICOM series), multiple ground-glass without clinical text (both risk rows)."""
    return [
        write_nodule_case(folder, 11, diameter_mm=4.5, nodule_type="solid", clinical_risk="low"),
        write_nodule_case(folder, 12, diameter_mm=7.0, nodule_type="solid", clinical_risk="high"),
        write_nodule_case(
            folder, 13, diameter_mm=12.0, nodule_type="part_solid", clinical_risk="high", dicom=True
        ),
        write_nodule_case(folder, 14, diameter_mm=9.0, nodule_type="ground_glass", count=2),
    ]
