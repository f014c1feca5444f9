"""Left-ventricular volumes and ejection fraction from a short-axis cine MRI, (t, z, y, x).

``segment_lv_cavity`` outlines the LV blood pool on every frame and slice (classical, see
``tools/_lv_segmentation.py``; papillary muscles and trabeculae count as cavity, as in the Sunnybrook
contours). ``measure_ejection_fraction`` turns any LV cavity mask -- from that tool or drawn by an
expert -- into volumes by summation of discs: per frame, cavity pixels x pixel area x slice spacing.
End-diastole is the frame of largest volume, end-systole the frame of smallest; frames without any
cavity pixel (not contoured) are left out of that choice.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, ToolModel
from dxgraph.errors import ToolError
from dxgraph.tools._context import load_artifact, load_image, save_artifact
from dxgraph.tools._registry import ErrorModel, tool

__all__ = [
    "EjectionFraction",
    "EjectionFractionInput",
    "LVCavityMask",
    "SegmentLVCavityInput",
    "cine_and_spacing",
    "ejection_fraction_from_mask",
    "measure_ejection_fraction",
    "segment_lv_cavity",
]

MIN_FRAMES = 2
"""Fewest frames with a cavity that an ejection fraction needs."""


class SegmentLVCavityInput(ToolModel):
    """Input of segment_lv_cavity: a short-axis cine."""

    image: ImageRef
    """A 3D+t short-axis cine MRI (t, z, y, x) with spacing (sz, sy, sx) in mm."""


class LVCavityMask(ToolModel):
    """The LV blood pool, frame by frame and slice by slice."""

    lv_mask: ArtifactRef
    """(t, z, y, x) boolean LV cavity mask (papillary muscles included); empty slices are outside the LV."""
    lv_slices: list[int]
    """Slice indices the LV was found on (apex to base order of the stack)."""
    flags: list[str]
    """Warnings, such as ``lv_touches_stack_end`` (the stack may not cover the whole LV)."""
    quality_flags: list[str] = Field(default_factory=list)
    """Flags the review step reacts to: ``out_of_domain`` when a learned segmenter doubts its input."""
    weights_sha256: str | None = None
    """sha256 of the network weights (learned segmenters only)."""


class EjectionFractionInput(ToolModel):
    """Input of measure_ejection_fraction: the cine and an LV cavity mask of the same shape."""

    image: ImageRef
    """The 3D+t cine the mask belongs to; gives the spacing."""
    lv_mask: ArtifactRef
    """(t, z, y, x) boolean LV cavity mask; frames without any cavity pixel are ignored."""


class EjectionFraction(ToolModel):
    """LV volumes at end-diastole and end-systole and the ejection fraction."""

    lvef_percent: float = Field(json_schema_extra={"unit": "%"})
    """Ejection fraction: (EDV - ESV) / EDV x 100."""
    edv_ml: float
    """End-diastolic volume (largest cavity volume over the cycle), mL."""
    esv_ml: float
    """End-systolic volume (smallest cavity volume over the cycle), mL."""
    stroke_volume_ml: float
    """EDV - ESV, mL."""
    ed_frame: int
    """Index of the end-diastolic frame."""
    es_frame: int
    """Index of the end-systolic frame."""
    volumes_ml: list[float | None]
    """Cavity volume of every frame, mL; None for frames without any cavity pixel."""
    flags: list[str]
    """Warnings, such as ``few_frames`` or ``slices_differ_between_ed_and_es``."""


def cine_and_spacing(ref: ImageRef) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The (t, z, y, x) pixels of a cine and its (sz, sy, sx) spacing in mm; ToolError otherwise."""
    cine = load_image(ref)
    if cine.ndim != 4:
        raise ToolError(f"expected a (t, z, y, x) cine, got shape {cine.shape}", flags=("not_cine",))
    if ref.spacing_mm is None or len(ref.spacing_mm) != 3:
        raise ToolError("the cine has no (sz, sy, sx) spacing", flags=("no_spacing",))
    sz, sy, sx = (float(v) for v in ref.spacing_mm)
    return cine, (sz, sy, sx)


@tool(
    name="segment_lv_cavity",
    method="classical",
    version="0.2.0",
    modalities=("mr",),
    dims=("3d+t",),
    requires_spacing=True,
    error_models={
        # bench/lv_slices_eval.py --cines: EF errors +3.54 and -0.17 points (it needs a cine: the slice set's
        # single images give it no motion to find the ventricle by, Dice 0.24 there)
        "lvef_percent": ErrorModel(
            bias=1.68,
            sd=2.62,
            n=2,
            source="Sunnybrook SC-HF-I-1 and SC-HF-I-2 DICOM cines, EF vs the experts' contours, no fitting",
        )
    },
)
def segment_lv_cavity(inp: SegmentLVCavityInput) -> LVCavityMask:
    """Segment the left-ventricular blood pool on every frame and slice of a short-axis cine MRI.

    Classical: the LV is located by roundness, motion and an enclosing dark myocardium, tracked from slice to
    slice and thresholded per frame (papillary muscles count as cavity). The mask must then pass the LV
    checks -- enclosed by myocardium (``lv_not_enclosed``), consistent across slices and phases and beating
    (``lv_inconsistent``), a plausible size for the spacing (``lv_implausible_size``) -- or the tool raises
    ToolError with those flags, so that the ejection fraction is not assessable rather than wrong.
    """
    from dxgraph.tools._lv_segmentation import lv_check_failures, lv_flags_message, segment_lv

    cine, spacing = cine_and_spacing(inp.image)
    seg = segment_lv(cine, spacing)
    if not seg.slices:
        raise ToolError("no left-ventricular cavity found in the cine", flags=("lv_not_found",))
    failures, warnings = lv_check_failures(cine, seg.mask, spacing)
    if failures:
        raise ToolError(lv_flags_message(failures), flags=tuple(failures))
    return LVCavityMask(
        lv_mask=save_artifact(seg.mask, "mask"), lv_slices=seg.slices, flags=[*seg.flags, *warnings]
    )


def ejection_fraction_from_mask(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> EjectionFraction:
    """Volumes and EF of a (t, z, y, x) cavity mask by summation of discs (area x slice spacing)."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    frames = [t for t in range(mask.shape[0]) if counts[t] > 0]
    if len(frames) < MIN_FRAMES:
        raise ToolError(
            f"the LV mask covers {len(frames)} frame(s); EF needs end-diastole and end-systole",
            flags=("too_few_frames",),
        )
    vols = {t: float(counts[t]) * voxel_ml for t in frames}
    ed = max(frames, key=lambda t: vols[t])
    es = min(frames, key=lambda t: vols[t])
    edv, esv = vols[ed], vols[es]
    flags: list[str] = []
    if len(frames) < 10:
        flags.append("few_frames")  # ED and ES may fall between sampled frames
    ed_slices = set(np.nonzero(mask[ed].reshape(mask.shape[1], -1).any(axis=1))[0].tolist())
    es_slices = set(np.nonzero(mask[es].reshape(mask.shape[1], -1).any(axis=1))[0].tolist())
    if ed_slices != es_slices:
        flags.append("slices_differ_between_ed_and_es")
    return EjectionFraction(
        lvef_percent=100.0 * (edv - esv) / edv,
        edv_ml=edv,
        esv_ml=esv,
        stroke_volume_ml=edv - esv,
        ed_frame=ed,
        es_frame=es,
        volumes_ml=[vols.get(t) for t in range(mask.shape[0])],
        flags=flags,
    )


@tool(
    name="measure_ejection_fraction",
    method="geometry",
    version="0.1.0",
    modalities=("mr",),
    dims=("3d+t",),
    requires_spacing=True,
)
def measure_ejection_fraction(inp: EjectionFractionInput) -> EjectionFraction:
    """End-diastolic and end-systolic LV volumes and the ejection fraction from an LV cavity mask."""
    cine, spacing = cine_and_spacing(inp.image)
    mask = load_artifact(inp.lv_mask).astype(bool)
    if mask.shape != cine.shape:
        raise ToolError(
            f"LV mask {mask.shape} and cine {cine.shape} differ in shape", flags=("mask_mismatch",)
        )
    return ejection_fraction_from_mask(mask, spacing)
