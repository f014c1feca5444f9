"""Synthetic multi-sequence brain MRI (T1, T1ce, T2, FLAIR) with a tumour of known volume.

The anatomy is the MNI152 2009 template that ships with nilearn (skull-stripped T1 plus grey- and
white-matter probability maps; no download).  Tissue fractions (grey matter, white matter, CSF) give
each sequence its contrast with partial volume built in.  A tumour is inserted as three hard
compartments on the template grid: a necrotic core, an irregular contrast-enhancing rim around it and
finger-like vasogenic oedema that spreads through white matter.  Normal enhancing structures (thin
vessels, choroid plexus in the lateral ventricles) are drawn too, so a tool must tell them from tumour.
Each sequence gets its own multiplicative bias field, global intensity scale, Rician noise and a
slight blur; optionally the volume is resampled to thick axial slices (slab partial volume).

The truth volumes are counted on the rendered compartment masks, on the template grid; averaging
slices preserves them exactly.  Everything random is drawn from ``seed``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from dxgraph.phantoms._cases import PhantomCase, PhantomImage

SEQUENCES = ("t1", "t1ce", "t2", "flair")
"""The MR sequences a phantom renders, in this order."""

# relative signal of each tissue per sequence (white matter of T1 = 1); jittered per case
_CONTRAST: dict[str, dict[str, float]] = {
    "t1": {"wm": 1.0, "gm": 0.75, "csf": 0.33, "necrosis": 0.35, "rim": 0.65, "oedema": 0.68,
           "vessel": 0.8, "plexus": 0.7},
    "t1ce": {"wm": 1.0, "gm": 0.78, "csf": 0.33, "necrosis": 0.37, "rim": 1.6, "oedema": 0.7,
             "vessel": 1.8, "plexus": 1.6},
    "t2": {"wm": 0.5, "gm": 0.7, "csf": 1.3, "necrosis": 1.2, "rim": 0.8, "oedema": 1.0,
           "vessel": 0.2, "plexus": 0.9},
    "flair": {"wm": 0.6, "gm": 0.75, "csf": 0.15, "necrosis": 0.7, "rim": 0.95, "oedema": 1.15,
              "vessel": 0.3, "plexus": 0.4},
}  # fmt: skip


@dataclass(frozen=True)
class BrainPhantom:
    """A rendered brain phantom: one (x, y, z) volume per sequence, its grid and the true volumes."""

    volumes: dict[str, np.ndarray]
    """Signal per sequence, (x, y, z) as stored in NIfTI, float32."""
    spacing_mm: tuple[float, float, float]
    """Voxel size (x, y, z) in mm of the rendered volumes."""
    enhancing_volume_ml: float
    """True volume of the contrast-enhancing rim."""
    necrosis_volume_ml: float
    """True volume of the non-enhancing necrotic core."""
    oedema_volume_ml: float
    """True volume of the peritumoural oedema (outside the rim and core)."""
    masks: dict[str, np.ndarray] = field(repr=False)
    """Compartment masks on the template grid (``enhancing``, ``necrosis``, ``oedema``)."""


@functools.cache
def _depth_mm(resolution_mm: int) -> np.ndarray:
    """Distance (mm) of each template voxel from the outside of the brain mask."""
    brain = _anatomy(resolution_mm)[0]
    return (ndi.distance_transform_edt(brain) * resolution_mm).astype(np.float32)


@functools.cache
def _anatomy(resolution_mm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask and grey/white/CSF fractions of the MNI152 template, (x, y, z)."""
    from nilearn import datasets

    brain = datasets.load_mni152_brain_mask(resolution=resolution_mm).get_fdata() > 0
    gm = np.clip(datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata(), 0, 1)
    wm = np.clip(datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(), 0, 1)
    total = gm + wm
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0)
    gm, wm = gm * scale * brain, wm * scale * brain
    csf = np.clip(1 - gm - wm, 0, 1) * brain
    return brain, gm.astype(np.float32), wm.astype(np.float32), csf.astype(np.float32)


def _smooth_field(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length sigma_vox (voxels)."""
    f = max(1, int(sigma_vox / 3))
    small = rng.standard_normal(tuple(max(2, s // f + 1) for s in shape)).astype(np.float32)
    small = ndi.gaussian_filter(small, sigma_vox / f, mode="wrap")
    fld = ndi.zoom(small, [s / n for s, n in zip(shape, small.shape, strict=True)], order=1)
    fld = fld[tuple(slice(0, s) for s in shape)]
    return (fld - fld.mean()) / (fld.std() + 1e-6)


def _bias_log_field(shape: tuple[int, ...], voxel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth zero-mean, unit-std field: a sum of a few plane waves of 250-500 mm wavelength."""
    axes = [np.arange(n, dtype=np.float32) * voxel_mm for n in shape]
    out = np.zeros(shape, np.float32)
    for _ in range(4):
        k = rng.standard_normal(3)
        k *= 2 * np.pi / (np.linalg.norm(k) * rng.uniform(250, 500))
        phase = rng.uniform(0, 2 * np.pi)
        # cos(a + b + c) expanded would need all terms; evaluate directly, it is cheap enough
        arg = (
            (k[0] * axes[0])[:, None, None]
            + (k[1] * axes[1])[None, :, None]
            + (k[2] * axes[2])[None, None, :]
        )
        out += np.float32(rng.standard_normal()) * np.cos(arg + np.float32(phase))
    return (out - out.mean()) / (out.std() + 1e-6)


def _take_lowest(values: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """Mask of the ``count`` allowed voxels with the lowest values (ties broken by order)."""
    out = np.zeros(values.shape, bool)
    idx = np.flatnonzero(allowed)
    if count <= 0 or idx.size == 0:
        return out
    count = min(count, idx.size)
    order = np.argpartition(values.ravel()[idx], count - 1)[:count]
    out.ravel()[idx[order]] = True
    return out


def _tumour(
    brain: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    voxel_mm: float,
    enhancing_ml: float,
    necrosis_ml: float,
    oedema_ml: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Hard compartment masks of one irregular tumour placed in deep white matter."""
    vv_ml = voxel_mm**3 / 1000.0
    inside = _depth_mm(round(voxel_mm))
    deep = (inside > 28) & (wm > 0.8)
    if not deep.any():
        deep = inside > inside.max() * 0.6
    cands = np.argwhere(deep)
    centre = cands[rng.integers(len(cands))].astype(np.float64)
    grid = np.indices(brain.shape, dtype=np.float32)
    dist_mm = np.sqrt(sum(((g - c) * voxel_mm) ** 2 for g, c in zip(grid, centre, strict=True)))
    del grid
    corr = 6.0 / voxel_mm
    lumpy = dist_mm / np.clip(1 + 0.22 * _smooth_field(brain.shape, corr, rng), 0.5, 1.6)
    n_lesion = round((enhancing_ml + necrosis_ml) / vv_ml)
    lesion = _take_lowest(lumpy, brain, n_lesion)
    core_field = lumpy / np.clip(1 + 0.12 * _smooth_field(brain.shape, corr, rng), 0.6, 1.4)
    core = _take_lowest(core_field, ndi.binary_erosion(lesion), round(necrosis_ml / vv_ml))
    fingers = dist_mm / np.clip(1 + 0.35 * _smooth_field(brain.shape, 1.5 * corr, rng), 0.4, 1.8)
    spreadable = brain & (wm > 0.35) & (csf < 0.4) & ~lesion
    oedema = _take_lowest(fingers, spreadable, round(oedema_ml / vv_ml))
    return {"enhancing": lesion & ~core, "necrosis": core, "oedema": oedema}


def _normal_enhancers(
    brain: np.ndarray, csf: np.ndarray, voxel_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional maps (0..1) of thin enhancing vessels and of choroid plexus tufts in the ventricles."""
    shape = brain.shape
    vessel = np.zeros(shape, np.float32)
    pts = np.argwhere(brain)
    for _ in range(int(rng.integers(4, 8))):
        p = pts[rng.integers(len(pts))].astype(np.float64)
        heading = rng.standard_normal(3)
        heading /= np.linalg.norm(heading)
        radius_mm = rng.uniform(0.6, 1.2)
        for _step in range(int(rng.uniform(20, 50) / voxel_mm * 2)):
            heading += 0.25 * rng.standard_normal(3)
            heading /= np.linalg.norm(heading)
            p = p + heading * 0.5
            i = np.round(p).astype(int)
            if np.any(i < 1) or np.any(i >= np.array(shape) - 1) or not brain[tuple(i)]:
                break
            lo, hi = i - 2, i + 3
            sl = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(lo, hi, shape, strict=True))
            sub = np.indices([s.stop - s.start for s in sl], dtype=np.float32)
            d = np.sqrt(sum(((g + s.start - q) * voxel_mm) ** 2 for g, s, q in zip(sub, sl, p, strict=True)))
            frac = np.clip((radius_mm - d) / voxel_mm + 0.5, 0, 1)
            vessel[sl] = np.maximum(vessel[sl], frac)
    # choroid plexus: small blobs deep in the lateral ventricles (CSF far from the brain surface)
    inside = _depth_mm(round(voxel_mm))
    ventricle = (csf > 0.8) & (inside > 25)
    plexus = np.zeros(shape, np.float32)
    vpts = np.argwhere(ventricle)
    if len(vpts):
        grid = None
        for _ in range(2):
            c = vpts[rng.integers(len(vpts))].astype(np.float64)
            if grid is None:
                grid = np.indices(shape, dtype=np.float32)
            d = np.sqrt(sum(((g - q) * voxel_mm) ** 2 for g, q in zip(grid, c, strict=True)))
            plexus = np.maximum(plexus, np.clip((rng.uniform(2.5, 4.0) - d) / voxel_mm + 0.5, 0, 1))
        plexus *= ventricle | ndi.binary_dilation(ventricle)
    return vessel, plexus


def brain_phantom(
    seed: int,
    *,
    enhancing_ml: float = 8.0,
    necrosis_ml: float | None = None,
    oedema_ml: float = 25.0,
    resolution_mm: int = 2,
    slice_factor: int = 1,
    noise_ratio: float = 0.03,
    bias_strength: float = 0.15,
) -> BrainPhantom:
    """Render a four-sequence brain phantom with a tumour of the given volumes (0 ml: no tumour).

    ``necrosis_ml`` defaults to a random 30-100 % of the enhancing volume (0-50 % below 5 ml: small
    lesions are nearly solid); ``slice_factor`` averages that many template slices into one axial slice.
    """
    rng = np.random.default_rng(seed)
    brain, gm, wm, csf = _anatomy(resolution_mm)
    vox = float(resolution_mm)
    if necrosis_ml is None:
        # small lesions are solid or nearly so; larger ones ring-enhancing with a necrotic centre
        necrosis_ml = enhancing_ml * (rng.uniform(0.3, 1.0) if enhancing_ml >= 5 else rng.uniform(0, 0.5))
    if enhancing_ml > 0 or oedema_ml > 0:
        masks = _tumour(brain, wm, csf, vox, enhancing_ml, necrosis_ml, oedema_ml, rng)
    else:
        masks = {k: np.zeros(brain.shape, bool) for k in ("enhancing", "necrosis", "oedema")}
    vessel, plexus = _normal_enhancers(brain, csf, vox, rng)
    lesion = masks["enhancing"] | masks["necrosis"] | masks["oedema"]
    vessel[lesion] = 0
    plexus[lesion] = 0
    # tissue fractions of the normal brain; lesion compartments replace them
    normal = (~lesion).astype(np.float32) * (1 - vessel) * (1 - plexus)
    volumes: dict[str, np.ndarray] = {}
    bias_base = _bias_log_field(brain.shape, vox, rng)
    for name in SEQUENCES:
        c = {k: v * rng.uniform(0.93, 1.07) for k, v in _CONTRAST[name].items()}
        sig = normal * (gm * c["gm"] + wm * c["wm"] + csf * c["csf"])
        sig += vessel * brain * c["vessel"] + plexus * c["plexus"]
        for comp in ("enhancing", "necrosis", "oedema"):
            sig += masks[comp] * np.float32(c["rim" if comp == "enhancing" else comp])
        sig = ndi.gaussian_filter(sig, 0.5)
        own = _bias_log_field(brain.shape, vox, rng)
        bias = np.exp(bias_strength * (0.6 * bias_base + 0.8 * own)).astype(np.float32)
        sig = sig * bias
        if slice_factor > 1:
            nz = sig.shape[2] // slice_factor * slice_factor
            sig = sig[:, :, :nz].reshape(sig.shape[0], sig.shape[1], -1, slice_factor).mean(axis=3)
        sigma = noise_ratio * (1.0 / np.sqrt(slice_factor) if slice_factor > 1 else 1.0)
        re = sig + rng.normal(0, sigma, sig.shape).astype(np.float32)
        im = rng.normal(0, sigma, sig.shape).astype(np.float32)
        scale = rng.uniform(300, 3000)
        volumes[name] = (np.sqrt(re * re + im * im) * scale).astype(np.float32)
    vv_ml = vox**3 / 1000.0
    if slice_factor > 1:  # the truth counts only the slices that were rendered
        nz = brain.shape[2] // slice_factor * slice_factor
        masks = {k: m[:, :, :nz] for k, m in masks.items()}
    return BrainPhantom(
        volumes=volumes,
        spacing_mm=(vox, vox, vox * slice_factor),
        enhancing_volume_ml=float(masks["enhancing"].sum() * vv_ml),
        necrosis_volume_ml=float(masks["necrosis"].sum() * vv_ml),
        oedema_volume_ml=float(masks["oedema"].sum() * vv_ml),
        masks=masks,
    )


def write_brain_tumour_case(
    folder: Path,
    seed: int,
    *,
    enhancing_ml: float = 8.0,
    oedema_ml: float = 25.0,
    necrosis_ml: float | None = None,
    sequences: tuple[str, ...] = SEQUENCES,
    resolution_mm: int = 2,
    slice_factor: int = 2,
) -> PhantomCase:
    """Write one phantom study as one int16 NIfTI per present sequence; truth by quantity name."""
    import nibabel as nib

    unknown = set(sequences) - set(SEQUENCES)
    if unknown:
        raise ValueError(f"unknown sequences {sorted(unknown)}; use {SEQUENCES}")
    ph = brain_phantom(
        seed,
        enhancing_ml=enhancing_ml,
        necrosis_ml=necrosis_ml,
        oedema_ml=oedema_ml,
        resolution_mm=resolution_mm,
        slice_factor=slice_factor,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*ph.spacing_mm, 1.0])
    images = []
    for name in sequences:
        path = folder / f"brain_{seed}_{name}.nii.gz"
        data = np.clip(np.round(ph.volumes[name]), 0, 32767).astype(np.int16)
        img = nib.Nifti1Image(data, affine)
        img.header.set_zooms(ph.spacing_mm)
        nib.save(img, str(path))
        images.append(PhantomImage(path=path, modality="mr", sequence=name))
    truth: dict[str, float | bool | str] = {}
    if "t1ce" in sequences:
        truth["enhancing_volume_ml"] = ph.enhancing_volume_ml
    if "flair" in sequences:
        truth["oedema_volume_ml"] = ph.oedema_volume_ml
    kind = "tumour" if ph.enhancing_volume_ml > 0 else "no tumour"
    return PhantomCase(
        question="brain tumour",
        images=tuple(images),
        truth=truth,
        description=(
            f"brain MRI phantom ({kind}; enhancing {ph.enhancing_volume_ml:.1f} ml, oedema "
            f"{ph.oedema_volume_ml:.1f} ml; sequences {', '.join(sequences)}; seed {seed})"
        ),
    )


def brain_tumour_demo_cases(folder: Path) -> list[PhantomCase]:
    """Three demo studies: an enhancing tumour, a normal brain, and a tumour without T1ce (abstains)."""
    folder = Path(folder)
    return [
        write_brain_tumour_case(folder / "tumour", 101, enhancing_ml=12.0, oedema_ml=35.0),
        write_brain_tumour_case(folder / "normal", 102, enhancing_ml=0.0, oedema_ml=0.0),
        write_brain_tumour_case(
            folder / "no_t1ce", 103, enhancing_ml=10.0, oedema_ml=30.0, sequences=("t1", "t2", "flair")
        ),
    ]
