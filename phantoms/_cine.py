"""Synthetic short-axis cine MRI (bright-blood SSFP) with a beating left ventricle of known EF.

``cine_phantom`` renders a (t, z, y, x) stack: a body ellipse of soft tissue with a subcutaneous fat
ring and two dark lungs, a left ventricle whose blood pool is a truncated (half) ellipsoid -- base plane
at the top of the stack, apex below -- that contracts radially and longitudinally over the cycle inside
a myocardium that thickens, a crescent-shaped right ventricle against the septum, and above the base the
left atrium and aortic root (bright, but not enclosed by myocardium). Nuisance: thick slices and pixel
supersampling (partial volume), a smooth coil bias field, and Rician noise (magnitude of complex
Gaussian noise). Everything random comes from ``seed``.

``pathology=`` draws the design of one of five hearts (``CINE_PATHOLOGIES``): ``normal`` (normal cavity and
wall, EF 55-70 %), ``dilated`` (large cavity, thin wall, EF 15-35 %), ``hypertrophic`` (small cavity,
14-19 mm wall, EF 60-75 %), ``infarcted`` (an akinetic, thinned 3.5-5 mm sector of 70-120 degrees from the
apex to mid-ventricle, which lowers the EF below the design of the rest of the wall) and ``dilated_rv``
(a normal LV beside a right ventricle about twice as large and as long as the LV, the structure a
segmenter must not track).

The truth is measured on the rendered high-resolution occupancy, not taken from the design: per frame,
LV blood fraction summed over voxels x voxel volume; EDV = largest, ESV = smallest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dxgraph.imaging import dicom_series_layout
from dxgraph.phantoms._cases import PhantomCase, PhantomImage
from dxgraph.phantoms._volume_files import write_dicom_slice, write_nifti

_SUPER_XY = 2
"""In-plane supersampling per pixel side (partial volume)."""
_SUPER_Z = 4
"""Sub-slices averaged across a slice's thickness."""
_BLOOD, _MYO, _TISSUE, _FAT, _LUNG = 1.0, 0.28, 0.42, 0.85, 0.04
"""Signal of each tissue in bright-blood SSFP, relative to blood."""


@dataclass(frozen=True)
class CinePhantom:
    """A rendered cine with its true LV cavity occupancy and volumes."""

    cine: np.ndarray
    """(t, z, y, x) float32 magnitude image."""
    spacing_mm: tuple[float, float, float]
    """(sz, sy, sx) in mm."""
    lv_fraction: np.ndarray
    """(t, z, y, x) float32 share of each voxel that is LV blood pool."""
    volumes_ml: tuple[float, ...]
    """True cavity volume per frame, mL."""
    edv_ml: float
    """Largest cavity volume, mL."""
    esv_ml: float
    """Smallest cavity volume, mL."""
    lvef_percent: float
    """(EDV - ESV) / EDV x 100."""
    ed_frame: int
    """Frame of the largest volume."""
    es_frame: int
    """Frame of the smallest volume."""


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative bias: a random low-order polynomial, exp-mapped, mean about 1."""
    h, w = shape
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    c = rng.normal(0.0, 1.0, 5)
    field = c[0] * xx + c[1] * yy + 0.5 * c[2] * xx * yy + 0.5 * c[3] * xx**2 + 0.5 * c[4] * yy**2
    field = field / (np.abs(field).max() + 1e-9)
    return np.exp(strength * field).astype(np.float32)


CINE_PATHOLOGIES = ("normal", "dilated", "hypertrophic", "infarcted", "dilated_rv")
"""The heart designs ``cine_phantom(pathology=...)`` draws from."""


@dataclass(frozen=True)
class _Design:
    """Drawn design values of one pathology (mm, fractions)."""

    ef: float
    r_ed: float
    len_ed: float
    wall: float
    rv_scale: float = 1.0
    rv_length: float = 0.8
    infarct: tuple[float, float, float, float] | None = None
    """(centre angle rad, half width rad, thinned wall mm, depth below the base where it starts mm)."""


def _pathology_design(seed: int, pathology: str, ef_percent: float | None) -> _Design:
    """Design values of one pathology, from their own generator (the default draws stay as they were)."""
    if pathology not in CINE_PATHOLOGIES:
        raise ValueError(f"unknown pathology {pathology!r}; choose {', '.join(CINE_PATHOLOGIES)}")
    g = np.random.default_rng((seed, 1 + CINE_PATHOLOGIES.index(pathology)))
    ef_range, r_range, len_range, wall_range = {
        "normal": ((55.0, 70.0), (20.0, 26.0), (65.0, 80.0), (8.0, 11.0)),
        "dilated": ((15.0, 35.0), (31.0, 37.0), (85.0, 100.0), (6.0, 8.0)),
        "hypertrophic": ((60.0, 75.0), (16.0, 21.0), (60.0, 75.0), (14.0, 19.0)),
        "infarcted": ((35.0, 55.0), (25.0, 31.0), (75.0, 90.0), (8.0, 10.0)),
        "dilated_rv": ((50.0, 65.0), (21.0, 26.0), (65.0, 80.0), (8.0, 11.0)),
    }[pathology]
    ef = float(g.uniform(*ef_range) if ef_percent is None else ef_percent) / 100.0
    d = _Design(ef, g.uniform(*r_range), g.uniform(*len_range), g.uniform(*wall_range))
    if pathology == "dilated_rv":
        return _Design(d.ef, d.r_ed, d.len_ed, d.wall, rv_scale=g.uniform(1.35, 1.5), rv_length=1.0)
    if pathology == "infarcted":
        infarct = (
            g.uniform(0.0, 2 * np.pi),
            np.deg2rad(g.uniform(35.0, 60.0)),
            g.uniform(3.5, 5.0),
            d.len_ed * g.uniform(0.3, 0.5),
        )
        return _Design(d.ef, d.r_ed, d.len_ed, d.wall, infarct=infarct)
    return d


def cine_phantom(
    seed: int,
    *,
    ef_percent: float | None = None,
    pathology: str | None = None,
    n_frames: int = 20,
    n_slices: int | None = None,
    slice_mm: float | None = None,
    pixel_mm: float | None = None,
    noise: float | None = None,
) -> CinePhantom:
    """Render one seeded cine phantom; design values not given are drawn from the seed."""
    rng = np.random.default_rng(seed)
    ef = float(rng.uniform(20.0, 65.0) if ef_percent is None else ef_percent) / 100.0
    sz = float(rng.uniform(8.0, 10.0) if slice_mm is None else slice_mm)
    px = float(rng.uniform(1.2, 1.8) if pixel_mm is None else pixel_mm)
    sigma = float(rng.uniform(0.03, 0.06) if noise is None else noise)
    # LV at end-diastole: cavity radii (mm), long-axis length base->apex (mm), wall thickness (mm)
    r_ed = rng.uniform(22.0, 30.0)
    r2_ed = r_ed * rng.uniform(0.85, 1.0)
    len_ed = rng.uniform(65.0, 85.0)
    wall = rng.uniform(8.0, 11.0)
    design = None if pathology is None else _pathology_design(seed, pathology, ef_percent)
    if design is not None:
        ratio = r2_ed / r_ed
        ef, r_ed, len_ed, wall = design.ef, design.r_ed, design.len_ed, design.wall
        r2_ed = r_ed * ratio
    rv_scale = 1.0 if design is None else design.rv_scale
    rv_length = 0.8 if design is None else design.rv_length
    infarct = None if design is None else design.infarct
    k_r = (1.0 - ef) ** (1.0 / 2.5)  # radial shortening; longitudinal k_r**0.5 -> volume scales k_r**2.5
    es_phase = rng.uniform(0.33, 0.42)
    n_z_needed = math.ceil((len_ed + wall) / sz) + 1  # apex cap and one slice above the base
    n_z = int(n_z_needed if n_slices is None else n_slices)
    fov_mm = 230.0
    n_px = round(fov_mm / px)
    # geometry in mm: x right, y down, z up (base plane near the top of the stack)
    cx, cy = fov_mm / 2 + rng.uniform(-10, 10), fov_mm / 2 + rng.uniform(-10, 10)
    z_base = (n_z - 1.5 + rng.uniform(0.0, 0.2)) * sz  # the top slice is (mostly) above the base
    rv_side = rng.choice([-1.0, 1.0])
    rv_angle = rng.uniform(-0.4, 0.4)
    coords = (np.arange(n_px * _SUPER_XY) + 0.5) / _SUPER_XY * px
    full_x, full_y = np.meshgrid(coords, coords)
    sub_offsets = ((np.arange(_SUPER_Z) + 0.5) / _SUPER_Z - 0.5) * sz
    # static anatomy (the same on every slice): body, fat ring, lungs
    body = ((full_x - fov_mm / 2) / 105.0) ** 2 + ((full_y - fov_mm / 2) / 80.0) ** 2
    lungs = np.zeros_like(full_x, dtype=bool)
    for side in (-1.0, 1.0):
        lungs |= ((full_x - (cx + side * 62.0)) / 34.0) ** 2 + ((full_y - cy) / 55.0) ** 2 < 1.0
    static = np.where(body < 1.0, _TISSUE, 0.0)
    static = np.where((body < 1.0) & (body > 0.8), _FAT, static)
    static = np.where(lungs & (body < 0.8), _LUNG, static).astype(np.float32)
    static_px = static.reshape(n_px, _SUPER_XY, n_px, _SUPER_XY).mean(axis=(1, 3))
    # the heart is rendered in a box of whole pixels around it; the rest is static
    half_mm = 80.0
    if design is not None:  # room for a dilated LV and a dilated right ventricle
        rr_max = (r_ed + 1.4 * wall + 14.0) * rv_scale
        half_mm = min(
            fov_mm / 2,
            max(80.0, 0.9 * (r_ed + 1.4 * wall + 2.0) + 0.6 * (rv_scale - 1) * rr_max + 1.05 * rr_max + 6.0),
        )
    half = math.ceil(half_mm / px)
    y0, x0 = max(0, int(cy / px) - half), max(0, int(cx / px) - half)
    y1, x1 = min(n_px, int(cy / px) + half), min(n_px, int(cx / px) + half)
    box = (slice(y0 * _SUPER_XY, y1 * _SUPER_XY), slice(x0 * _SUPER_XY, x1 * _SUPER_XY))
    xx, yy, static_box = full_x[box], full_y[box], static[box]
    bias = [_smooth_field((n_px, n_px), rng, 0.35) for _ in range(n_z)]
    cine = np.zeros((n_frames, n_z, n_px, n_px), np.float32)
    frac = np.zeros_like(cine)
    ux, uy = math.cos(rv_angle) * rv_side, math.sin(rv_angle)
    if infarct is not None:  # polar geometry of the LV: an akinetic, thinned sector
        theta = np.arctan2(yy - cy, xx - cx)
        dist = np.hypot(yy - cy, xx - cx)
        r_ell = 1.0 / np.sqrt((np.cos(theta) / r_ed) ** 2 + (np.sin(theta) / r2_ed) ** 2)
        delta = np.abs(np.angle(np.exp(1j * (theta - infarct[0]))))
        in_sector = np.clip((infarct[1] - delta) / 0.15 + 0.5, 0.0, 1.0)
    for t in range(n_frames):
        phase = t / n_frames
        c = math.sin(math.pi * phase / (2 * es_phase)) ** 2 if phase < 2 * es_phase else 0.0
        kr = 1.0 - (1.0 - k_r) * c
        kl = kr**0.5
        ra, rb, ln = r_ed * kr, r2_ed * kr, len_ed * kl
        w_t = wall * (1.0 + 0.4 * c)
        for z in range(n_z):
            acc = np.zeros_like(xx, dtype=np.float32)
            lv_acc = np.zeros_like(xx, dtype=np.float32)
            for dz in sub_offsets:
                zz = z * sz + dz
                d = z_base - zz  # depth below the base plane, mm
                img = static_box.copy()
                if d >= 0:
                    s_cav = max(0.0, 1.0 - (d / ln) ** 2)
                    s_epi = max(0.0, 1.0 - (d / (ln + w_t)) ** 2)
                    r_epi_a, r_epi_b = (ra + w_t) * math.sqrt(s_epi), (rb + w_t) * math.sqrt(s_epi)
                    epi = ((xx - cx) / max(r_epi_a, 1e-3)) ** 2 + ((yy - cy) / max(r_epi_b, 1e-3)) ** 2 < 1
                    # right ventricle: a crescent against the septum, shorter than the LV
                    s_rv = max(0.0, 1.0 - (d / (rv_length * len_ed)) ** 2)
                    if infarct is not None:  # akinetic sector: no motion, thinned wall, from its depth down
                        m = in_sector * float(np.clip((d - infarct[3]) / 5.0 + 0.5, 0.0, 1.0))
                        k_eff = kr + (1.0 - kr) * m
                        w_eff = w_t * (1.0 - m) + infarct[2] * m
                        epi = dist < (k_eff * r_ell + w_eff) * math.sqrt(s_epi)
                    if s_rv > 0:
                        rr = (ra + w_t + 14.0) * math.sqrt(s_rv) * rv_scale
                        off = 0.9 * (ra + w_t + 2.0) + 0.6 * (rv_scale - 1.0) * rr
                        rvx, rvy = cx + ux * off, cy + uy * off
                        rv = ((xx - rvx) / (rr * 1.05)) ** 2 + ((yy - rvy) / (rr * 0.8)) ** 2 < 1
                        rv_wall = ((xx - rvx) / (rr * 1.05 + 3)) ** 2 + ((yy - rvy) / (rr * 0.8 + 3)) ** 2 < 1
                        img = np.where(rv_wall & ~epi, _MYO, img)
                        img = np.where(rv & ~epi, _BLOOD * 0.95, img)
                    img = np.where(epi, _MYO, img)
                    if s_cav > 0:
                        if infarct is not None:
                            cav = dist < k_eff * r_ell * math.sqrt(s_cav)
                        else:
                            cav = ((xx - cx) / (ra * math.sqrt(s_cav))) ** 2 + (
                                (yy - cy) / (rb * math.sqrt(s_cav))
                            ) ** 2 < 1
                        img = np.where(cav, _BLOOD, img)
                        lv_acc += cav
                else:
                    # above the base: left atrium (behind) and aortic root, bright, thin-walled
                    # the atrium fills while the ventricle empties
                    la_r = r_ed * 0.8 * (1.0 + 0.25 * c)
                    la = ((xx - cx + ux * 8) / la_r) ** 2 + ((yy - cy - 18.0) / (0.85 * la_r)) ** 2 < 1
                    ao = ((xx - cx + ux * 6) / 13.0) ** 2 + ((yy - cy + 16.0) / 13.0) ** 2 < 1
                    img = np.where(la | ao, _BLOOD * 0.9, img)
                acc += img
            acc /= _SUPER_Z
            lv_acc /= _SUPER_Z
            bh, bw = (y1 - y0), (x1 - x0)
            plane = static_px.copy()
            plane[y0:y1, x0:x1] = acc.reshape(bh, _SUPER_XY, bw, _SUPER_XY).mean(axis=(1, 3))
            cine[t, z] = plane * bias[z]
            frac[t, z, y0:y1, x0:x1] = lv_acc.reshape(bh, _SUPER_XY, bw, _SUPER_XY).mean(axis=(1, 3))
    # Rician noise: magnitude of (signal + complex Gaussian noise)
    n1 = rng.normal(0.0, sigma, cine.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, cine.shape).astype(np.float32)
    cine = np.sqrt((cine + n1) ** 2 + n2**2).astype(np.float32)
    voxel_ml = sz * px * px / 1000.0
    vols = tuple(float(v) * voxel_ml for v in frac.reshape(n_frames, -1).sum(axis=1))
    ed, es = int(np.argmax(vols)), int(np.argmin(vols))
    return CinePhantom(
        cine=cine,
        spacing_mm=(sz, px, px),
        lv_fraction=frac,
        volumes_ml=vols,
        edv_ml=vols[ed],
        esv_ml=vols[es],
        lvef_percent=100.0 * (vols[ed] - vols[es]) / vols[ed],
        ed_frame=ed,
        es_frame=es,
    )


def _write_nifti(path: Path, ph: CinePhantom) -> None:
    write_nifti(path, np.round(ph.cine * 1000.0).astype(np.int16), ph.spacing_mm, frame_ms=40.0)


def write_dicom_cine(
    folder: Path, cine: np.ndarray, spacing_mm: tuple[float, float, float], seed: int = 0
) -> None:
    """Write a (t, z, y, x) cine as single-frame MR DICOM files (one per frame and slice), oblique geometry."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_t, n_z = cine.shape[:2]
    a = rng.uniform(0.2, 0.6)  # an oblique short-axis orientation
    row = np.array([math.cos(a), math.sin(a), 0.0])
    col = np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    origin = rng.uniform(-100, 100, 3)
    series_uid = generate_uid()
    pixels = np.clip(np.round(cine * 1000.0), 0, 65535).astype(np.uint16)
    order = rng.permutation(n_t * n_z)  # file names unrelated to the order
    for k, (t, z) in enumerate((t, z) for z in range(n_z) for t in range(n_t)):
        write_dicom_slice(
            folder / f"IM{order[k]:05d}.dcm",
            pixels[t, z],
            modality="MR",
            series_uid=series_uid,
            instance_number=k + 1,
            orientation=(*row, *col),
            position_mm=tuple(origin + z * spacing_mm[0] * normal),
            pixel_spacing_mm=(spacing_mm[1], spacing_mm[2]),
            slice_thickness_mm=spacing_mm[0],
            TriggerTime=f"{t * 40.0:.1f}",
        )


def write_lvef_case(
    folder: Path, seed: int, *, ef_percent: float | None = None, as_dicom: bool = False, **design: float
) -> PhantomCase:
    """Write one cine phantom (NIfTI 4D, or a folder of DICOM files) and return the case with its truth."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ph = cine_phantom(seed, ef_percent=ef_percent, **design)  # type: ignore[arg-type]
    if as_dicom:
        path = folder / f"cine_{seed}"
        write_dicom_cine(path, ph.cine, ph.spacing_mm, seed)
    else:
        path = folder / f"cine_{seed}.nii.gz"
        _write_nifti(path, ph)
    return PhantomCase(
        question="What is the left-ventricular ejection fraction? Heart failure with reduced EF?",
        images=(PhantomImage(path=path, modality="mr"),),
        truth={"lvef_percent": ph.lvef_percent, "edv_ml": ph.edv_ml, "esv_ml": ph.esv_ml},
        description=(
            f"short-axis cine phantom, {ph.cine.shape[1]} slices of {ph.spacing_mm[0]:.1f} mm, "
            f"EF {ph.lvef_percent:.0f}%, EDV {ph.edv_ml:.0f} mL"
        ),
    )


def lvef_demo_cases(folder: Path) -> list[PhantomCase]:
    """Three cine phantoms: reduced, mildly reduced and preserved EF (one as a DICOM series)."""
    folder = Path(folder)
    return [
        write_lvef_case(folder, 101, ef_percent=28.0, as_dicom=True),
        write_lvef_case(folder, 102, ef_percent=45.0),
        write_lvef_case(folder, 103, ef_percent=62.0),
    ]


def expert_contour_mask(
    dicom_folder: Path, contour_folder: Path, kind: str = "icontour"
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Rasterise Sunnybrook-style contour files onto a cine's (t, z, y, x) grid.

    A file ``IM-0001-NNNN-icontour-manual.txt`` holds (x, y) pixel coordinates of one contour on DICOM
    instance NNNN; pixels whose centres lie inside the polygon are set. Returns the mask and the
    contour points by instance number.
    """
    from skimage.draw import polygon

    layout = dicom_series_layout(Path(dicom_folder))
    where = {int(n): (t, z) for (t, z), n in np.ndenumerate(layout.instance_numbers)}
    n_t, n_z = layout.instance_numbers.shape
    mask = np.zeros((n_t, n_z, layout.rows, layout.cols), dtype=bool)
    contours: dict[int, np.ndarray] = {}
    for f in sorted(Path(contour_folder).glob(f"*-{kind}-manual.txt")):
        instance = int(f.name.split("-")[2])
        pts = np.loadtxt(f).reshape(-1, 2)
        t, z = where[instance]
        rr, cc = polygon(pts[:, 1], pts[:, 0], (layout.rows, layout.cols))
        mask[t, z, rr, cc] = True
        contours[instance] = pts
    return mask, contours


def cine_without_lv(ph: CinePhantom) -> np.ndarray:
    """The phantom's cine with the LV blood pool replaced by wall signal (the median of a 2-4 px band around
    it, per frame and slice): the right ventricle and the atrium are the only bright, beating structures left,
    so an LV segmenter must find nothing rather than track them."""
    from scipy import ndimage as ndi

    cine = ph.cine.copy()
    for t in range(cine.shape[0]):
        for z in range(cine.shape[1]):
            frac = ph.lv_fraction[t, z]
            m = frac > 0.01
            if m.any():
                band = ndi.binary_dilation(m, iterations=4) & ~ndi.binary_dilation(m, iterations=2)
                wall = float(np.median(cine[t, z][band]))
                cine[t, z] = cine[t, z] * (1.0 - frac) + wall * frac
    return cine


def static_blob_cine(
    seed: int, *, n_frames: int = 12, n_slices: int = 10, pixel_mm: float = 1.4
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A (t, z, y, x) cine of soft tissue holding one bright, round, static blob 50 mm across (no myocardium,
    no motion: a stomach or a cyst), with Rician noise; returns it and its spacing (9 mm slices)."""
    rng = np.random.default_rng(seed)
    n = round(210.0 / pixel_mm)
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * pixel_mm
    c = 105.0 + rng.uniform(-10, 10, 2)
    img = np.where(np.hypot(yy - 105.0, xx - 105.0) < 95.0, _TISSUE, 0.0)
    img = np.where(np.hypot(yy - c[0], xx - c[1]) < 25.0, _BLOOD, img).astype(np.float32)
    cine = np.broadcast_to(img, (n_frames, n_slices, n, n)).astype(np.float32)
    n1 = rng.normal(0.0, 0.04, cine.shape).astype(np.float32)
    n2 = rng.normal(0.0, 0.04, cine.shape).astype(np.float32)
    return np.sqrt((cine + n1) ** 2 + n2**2).astype(np.float32), (9.0, pixel_mm, pixel_mm)
