"""Brain tumour tools for multi-sequence MRI: enhancing tumour volume (T1ce) and peritumoural oedema (FLAIR).

Each tool takes the sequences it needs as separate image inputs chosen by sequence name; optional
sequences improve the measurement when the case has them.  All sequences of one study must be
co-registered on one voxel grid.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, ToolModel, select_image
from dxgraph.errors import ToolError
from dxgraph.tools._context import load_volume, save_artifact
from dxgraph.tools._registry import tool

_CACHE_SIZE = 4
if TYPE_CHECKING:
    from dxgraph.tools import _brain_segmentation as seg

_enhancing_cache: OrderedDict[tuple, seg.EnhancingResult] = OrderedDict()


class EnhancingTumourInput(ToolModel):
    """Input of measure_enhancing_tumour."""

    t1ce: ImageRef = Field(json_schema_extra=select_image(sequence="t1ce"))
    """Post-contrast (gadolinium) T1-weighted 3D MRI of the brain."""
    t1: ImageRef | None = Field(default=None, json_schema_extra=select_image(sequence="t1"))
    """Pre-contrast T1-weighted MRI on the same grid; when given, enhancement is read on T1ce minus T1."""


class EnhancingTumour(ToolModel):
    """Contrast-enhancing tumour found on T1ce."""

    enhancing_volume_ml: float = Field(ge=0)
    """Volume of contrast-enhancing tissue that is not a normal enhancing structure, ml (partial-volume aware)."""
    necrosis_volume_ml: float = Field(ge=0)
    """Volume of non-enhancing tissue enclosed by the enhancing rim (necrotic core), ml."""
    lesion_count: int = Field(ge=0)
    """Number of separate enhancing lesions kept."""
    enhancing_mask: ArtifactRef
    """Binary (z, y, x) mask of the enhancing tissue."""
    tumour_core_mask: ArtifactRef
    """Binary (z, y, x) mask of enhancing tissue plus the necrotic core it encloses."""
    quality_flags: list[str]
    """Machine-readable warnings, e.g. ``no_t1_for_subtraction``."""


class PeritumouralOedemaInput(ToolModel):
    """Input of measure_peritumoural_oedema."""

    flair: ImageRef = Field(json_schema_extra=select_image(sequence="flair"))
    """T2-FLAIR 3D MRI of the brain."""
    t2: ImageRef | None = Field(default=None, json_schema_extra=select_image(sequence="t2"))
    """T2-weighted MRI on the same grid; when given, FLAIR hyperintensities must be T2-bright too."""
    t1ce: ImageRef | None = Field(default=None, json_schema_extra=select_image(sequence="t1ce"))
    """Post-contrast T1 on the same grid; when given, the enhancing tumour and its necrosis are excluded."""
    t1: ImageRef | None = Field(default=None, json_schema_extra=select_image(sequence="t1"))
    """Pre-contrast T1 on the same grid, used with t1ce to find the enhancing tumour."""


class PeritumouralOedema(ToolModel):
    """FLAIR-hyperintense abnormality around a tumour."""

    oedema_volume_ml: float = Field(ge=0)
    """FLAIR-hyperintense volume outside the enhancing tumour and its necrotic core, ml (with T1ce;
    without it, the whole FLAIR abnormality and flagged)."""
    flair_abnormality_volume_ml: float = Field(ge=0)
    """Whole FLAIR-hyperintense volume, tumour core included, ml."""
    oedema_mask: ArtifactRef
    """Binary (z, y, x) mask of the oedema."""
    quality_flags: list[str]
    """Machine-readable warnings, e.g. ``tumour_core_not_excluded``."""


def _volume(ref: ImageRef, name: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    arr, spacing = load_volume(ref, name)
    if min(arr.shape) < 8:
        raise ToolError(
            f"{name} of shape {arr.shape} is too small to be a brain MRI", flags=("image_too_small",)
        )
    return arr, spacing


def _same_grid(
    ref_name: str,
    ref: tuple[np.ndarray, tuple[float, ...]],
    name: str,
    other: tuple[np.ndarray, tuple[float, ...]],
) -> None:
    if ref[0].shape != other[0].shape or not np.allclose(ref[1], other[1], rtol=0.01):
        raise ToolError(
            f"{name} {other[0].shape} at {other[1]} mm and {ref_name} {ref[0].shape} at {ref[1]} mm are not on "
            "one grid; co-register the sequences first",
            flags=("sequences_not_coregistered",),
        )


def _brain_signal_flags(arr: np.ndarray, name: str) -> list[str]:
    if float(np.percentile(arr, 99.5)) <= float(np.percentile(arr, 0.5)):
        raise ToolError(f"{name} holds a constant image", flags=("blank_image",))
    return []


def _enhancing(
    t1ce: ImageRef, t1: ImageRef | None
) -> tuple[seg.EnhancingResult, tuple[float, ...], list[str]]:
    """The enhancing segmentation of one (t1ce, t1) pair, computed once per process for the same pixels."""
    from dxgraph.tools import _brain_segmentation as seg  # scipy: imported when a brain is measured

    ce = _volume(t1ce, "t1ce")
    flags = _brain_signal_flags(ce[0], "t1ce")
    pre = None
    if t1 is None:
        flags.append("no_t1_for_subtraction")
    else:
        pre = _volume(t1, "t1")
        _same_grid("t1ce", ce, "t1", pre)
        flags += _brain_signal_flags(pre[0], "t1")
    key = (t1ce.pixels.sha256, None if t1 is None else t1.pixels.sha256, ce[1])
    result = _enhancing_cache.get(key)
    if result is None:
        result = seg.segment_enhancing(ce[0], None if pre is None else pre[0], ce[1])
        _enhancing_cache[key] = result
        while len(_enhancing_cache) > _CACHE_SIZE:
            _enhancing_cache.popitem(last=False)
    if result.dropped_vessel_like:
        flags.append("vessel_like_enhancement_ignored")
    if result.dropped_plexus_like:
        flags.append("choroid_plexus_like_enhancement_ignored")
    return result, ce[1], flags


@tool(
    name="measure_enhancing_tumour",
    method="classical",
    version="0.1.0",
    modalities=("mr",),
    dims=("3d",),
    device="cpu",
    requires_spacing=True,
)
def measure_enhancing_tumour(inp: EnhancingTumourInput) -> EnhancingTumour:
    """Measure the volume of contrast-enhancing brain tumour on post-contrast T1 MRI (T1ce).

    Needs the T1ce volume with voxel spacing; a pre-contrast T1 on the same grid is optional and
    makes the measurement read enhancement on the subtraction (T1ce - T1), which is more specific.
    Classical image analysis, no learned model: brain mask, polynomial bias-field correction, intensity
    relative to normal white matter, enhancing tissue delineated at half maximum with partial-volume-aware
    volume. Thin or tubular enhancement (vessels, dura), components under 0.25 ml and enhancement
    surrounded by CSF (choroid plexus) are not counted. Also reports the necrotic core the rim encloses.
    """
    from dxgraph.tools import _brain_segmentation as seg  # scipy: imported when a brain is measured

    result, spacing, flags = _enhancing(inp.t1ce, inp.t1)
    vml = seg.voxel_ml(spacing)
    lesions = int(np.max(_label(result.core))) if result.core.any() else 0
    necrosis = float((result.core & ~result.enhancing).sum() * vml)
    return EnhancingTumour(
        enhancing_volume_ml=round(result.enhancing_ml, 4),
        necrosis_volume_ml=round(necrosis, 4),
        lesion_count=lesions,
        enhancing_mask=save_artifact(result.enhancing, "mask"),
        tumour_core_mask=save_artifact(result.core, "mask"),
        quality_flags=flags,
    )


def _label(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.label(mask, np.ones((3, 3, 3)))[0]


@tool(
    name="measure_peritumoural_oedema",
    method="classical",
    version="0.1.0",
    modalities=("mr",),
    dims=("3d",),
    device="cpu",
    requires_spacing=True,
)
def measure_peritumoural_oedema(inp: PeritumouralOedemaInput) -> PeritumouralOedema:
    """Measure the volume of FLAIR-hyperintense peritumoural oedema on brain MRI.

    Needs the T2-FLAIR volume with voxel spacing. Optional sequences on the same grid: T2 (a FLAIR
    hyperintensity must also be T2-bright), T1ce and T1 (the enhancing tumour and the necrotic core it
    encloses are subtracted, leaving the oedema). Without T1ce the whole FLAIR abnormality is reported
    and flagged ``tumour_core_not_excluded``. Bias-field corrected, intensities relative to normal
    brain tissue, abnormality delineated at half maximum; components under 0.3 ml are ignored.
    """
    from dxgraph.tools import _brain_segmentation as seg  # scipy: imported when a brain is measured

    fl = _volume(inp.flair, "flair")
    flags = _brain_signal_flags(fl[0], "flair")
    t2 = None
    if inp.t2 is None:
        flags.append("no_t2_confirmation")
    else:
        t2v = _volume(inp.t2, "t2")
        _same_grid("flair", fl, "t2", t2v)
        t2 = t2v[0]
    core = None
    enhancing_fraction = None
    if inp.t1ce is None:
        flags.append("tumour_core_not_excluded")
    else:
        _same_grid("flair", fl, "t1ce", _volume(inp.t1ce, "t1ce"))
        enh, _, enh_flags = _enhancing(inp.t1ce, inp.t1)
        core = enh.core
        enhancing_fraction = enh.fraction
        flags += [f for f in enh_flags if f == "no_t1_for_subtraction"]
    result = seg.segment_flair(fl[0], t2, fl[1])
    if result.dropped_not_t2_bright:
        flags.append("flair_only_hyperintensity_ignored")
    oedema = result.abnormal if core is None else result.abnormal & ~core
    oedema_fraction = result.fraction
    if core is not None:  # partial-volume rim voxels just outside the core are FLAIR-bright too
        assert enhancing_fraction is not None  # computed with the core
        oedema_fraction = np.where(core, 0, result.fraction * (1 - enhancing_fraction))
    vml = seg.voxel_ml(fl[1])
    return PeritumouralOedema(
        oedema_volume_ml=round(float(oedema_fraction.sum() * vml), 4),
        flair_abnormality_volume_ml=round(float(result.fraction.sum() * vml), 4),
        oedema_mask=save_artifact(oedema, "mask"),
        quality_flags=flags,
    )
