"""Solid-tumour response on CT by RECIST 1.1: lesion measurement, and baseline-to-follow-up assessment.

Both tools segment lesions classically (``tools/_lesion_geometry.py``: hypodense lesions in enhancing organ
parenchyma, and lymph nodes recognised by the fat around them) and apply the RECIST 1.1 rules of
Eisenhauer et al. 2009 (doi 10.1016/j.ejca.2008.10.026) with the clarifications of Schwartz et al. 2016
(doi 10.1016/j.ejca.2016.03.081). They assume a contrast-enhanced (portal venous) abdominal CT in HU.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, ToolModel, select_image
from dxgraph.errors import ToolError
from dxgraph.tools import _lesion_geometry as lg
from dxgraph.tools._context import load_volume, save_artifact
from dxgraph.tools._registry import tool

_PRIOR_STUDY: dict[str, Any] = dict(select_image(timepoint="prior"))
"""``json_schema_extra`` of the baseline image field: the case's prior study."""
THICK_SLICE_MM = 5.0
"""RECIST 1.1 assumes CT slices of 5 mm or less; thicker ones are flagged."""
LARGE_SHIFT_MM = 30.0
"""A registration shift larger than this between the studies is flagged (lesion matching may fail)."""


class RecistLesion(ToolModel):
    """One lesion found on a CT volume, with its RECIST 1.1 measurements."""

    centroid_mm: tuple[float, float, float]
    """Centroid (z, y, x) in mm from the centre of the first voxel."""
    longest_diameter_mm: float = Field(ge=0)
    """Longest axial diameter, on the axial slice where it is longest."""
    short_axis_mm: float = Field(ge=0)
    """Longest diameter perpendicular to the longest one, on the same slice."""
    slice_index: int
    """The axial slice of the measurement."""
    is_node: bool
    """Lymph node: a soft-tissue ovoid surrounded by fat (see surrounding_fat_ratio)."""
    organ: str
    """``organ_<n>`` (a connected enhancing parenchyma region) or ``nodes``."""
    volume_ml: float = Field(ge=0)
    """Volume of the segmented lesion."""
    mean_hu: float
    """Mean attenuation of the lesion."""
    surrounding_fat_ratio: float = Field(ge=0, le=1)
    """Fraction of a 3 mm shell around the lesion that is fat; >= 0.6 marks a node."""
    measurability: Literal["measurable", "non_measurable", "normal_node"]
    """RECIST 1.1 class: non-nodal measurable at >= 10 mm LD (>= 2 slice thicknesses); nodes at >= 15 mm
    short axis, pathological but non-measurable at 10-15 mm, normal below 10 mm."""
    recist_diameter_mm: float = Field(ge=0)
    """The diameter that would enter a RECIST sum: short axis for nodes, longest diameter otherwise."""


class MeasureRecistLesionsInput(ToolModel):
    """Input of measure_recist_lesions."""

    image: ImageRef
    """A contrast-enhanced 3D CT volume in HU, with its voxel spacing."""


class RecistLesions(ToolModel):
    """The lesions of one CT volume."""

    lesions: list[RecistLesion]
    """Lesions found, largest RECIST diameter first."""
    lesion_count: int = Field(ge=0)
    """Number of lesions found."""
    measurable_lesion_count: int = Field(ge=0)
    """Number of RECIST-measurable lesions."""
    min_measurable_diameter_mm: float
    """Smallest measurable non-nodal longest diameter at this slice thickness (10 mm, or twice the slice)."""
    lesion_mask: ArtifactRef
    """Binary mask of every lesion voxel, same shape as the image."""
    quality_flags: list[str]
    """Machine-readable warnings."""


class RecistTarget(ToolModel):
    """One target lesion chosen at baseline and its measurement at follow-up."""

    organ: str
    """Organ at baseline (``organ_<n>`` or ``nodes``); at most two targets per organ."""
    is_node: bool
    """Lymph node target: its short axis enters the sum."""
    baseline_diameter_mm: float = Field(ge=0)
    """Diameter in the baseline sum: short axis for nodes, longest diameter otherwise."""
    followup_diameter_mm: float = Field(ge=0)
    """Diameter in the follow-up sum (0 when the lesion has disappeared)."""
    baseline_longest_diameter_mm: float = Field(ge=0)
    """Longest axial diameter at baseline."""
    baseline_short_axis_mm: float = Field(ge=0)
    """Short axis at baseline."""
    followup_longest_diameter_mm: float = Field(ge=0)
    """Longest axial diameter at follow-up (0 when gone)."""
    followup_short_axis_mm: float = Field(ge=0)
    """Short axis at follow-up (0 when gone)."""
    baseline_centroid_mm: tuple[float, float, float]
    """Centroid (z, y, x) in the baseline volume, mm from its first voxel."""
    followup_centroid_mm: tuple[float, float, float] | None
    """Centroid of the matched follow-up lesion in the follow-up volume; None when gone."""
    status: Literal["measured", "disappeared"]
    """Whether a matching lesion was found at follow-up."""


class AssessRecistInput(ToolModel):
    """Input of assess_recist_response."""

    baseline: ImageRef = Field(json_schema_extra=_PRIOR_STUDY)
    """The baseline (earlier) contrast-enhanced CT volume in HU."""
    follow_up: ImageRef
    """The follow-up (current) contrast-enhanced CT volume in HU."""


class RecistAssessment(ToolModel):
    """RECIST 1.1 target-lesion response between a baseline and a follow-up CT."""

    sum_diameters_baseline_mm: float = Field(ge=0)
    """Sum of the target lesions' diameters at baseline (LD; short axis for nodes)."""
    sum_diameters_followup_mm: float = Field(ge=0)
    """Sum of the same targets' diameters at follow-up."""
    sum_change_percent: float = Field(json_schema_extra={"unit": "%"})
    """Change of the sum from baseline, in percent (negative: shrinkage)."""
    sum_increase_from_nadir_percent: float = Field(json_schema_extra={"unit": "%"})
    """Increase of the sum over the nadir (smallest sum so far: the baseline, with two studies), percent."""
    sum_increase_from_nadir_mm: float
    """Absolute increase of the sum over the nadir, mm."""
    new_lesions: bool
    """An unequivocal new lesion at follow-up: unmatched to any baseline lesion, non-nodal >= 10 mm LD or
    node >= 10 mm short axis."""
    new_lesion_count: int = Field(ge=0)
    """Number of unequivocal new lesions."""
    equivocal_new_lesion_count: int = Field(ge=0)
    """Unmatched follow-up lesions too small to call new."""
    all_targets_resolved: bool
    """Every non-nodal target gone and every nodal target below 10 mm short axis."""
    target_lesions: list[RecistTarget]
    """Targets: the largest measurable baseline lesions, at most 2 per organ and 5 in all."""
    non_target_lesion_count: int = Field(ge=0)
    """Baseline lesions that are not targets (non-measurable, or beyond the target limits), normal nodes
    excluded."""
    recist_response: Literal["CR", "PR", "SD", "PD"]
    """Target-lesion response by RECIST 1.1 (PD: new lesion, or +20 % and +5 mm from nadir; CR: targets
    resolved; PR: -30 % from baseline; else SD), computed here to cross-check the criteria document."""
    registration_shift_mm: tuple[float, float, float]
    """Translation (z, y, x) from baseline to follow-up positions, from the organ (or body) centroid."""
    baseline_lesion_mask: ArtifactRef
    """Binary mask of the baseline lesions."""
    followup_lesion_mask: ArtifactRef
    """Binary mask of the follow-up lesions."""
    quality_flags: list[str]
    """Machine-readable warnings."""


def _ct_volume(ref: ImageRef, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    return load_volume(ref, what)


def _record(g: lg.LesionGeometry, thickness_mm: float) -> RecistLesion:
    return RecistLesion(
        centroid_mm=(g.centroid_mm[0], g.centroid_mm[1], g.centroid_mm[2]),
        longest_diameter_mm=g.longest_diameter_mm,
        short_axis_mm=g.short_axis_mm,
        slice_index=g.slice_index,
        is_node=g.is_node,
        organ=g.organ,
        volume_ml=g.volume_ml,
        mean_hu=g.mean_hu,
        surrounding_fat_ratio=min(1.0, max(0.0, g.surrounding_fat_ratio)),
        measurability=lg.measurability(g, thickness_mm),
        recist_diameter_mm=lg.recist_diameter_mm(g),
    )


def _thickness_flags(spacing: tuple[float, float, float], prefix: str = "") -> list[str]:
    return [f"{prefix}slices_thicker_than_5mm"] if spacing[0] > THICK_SLICE_MM else []


@tool(
    name="measure_recist_lesions",
    method="classical",
    version="0.1.0",
    modalities=("ct",),
    dims=("3d",),
    device="cpu",
    requires_spacing=True,
)
def measure_recist_lesions(inp: MeasureRecistLesionsInput) -> RecistLesions:
    """Find and measure solid-tumour lesions on a contrast-enhanced CT: RECIST 1.1 diameters per lesion.

    Segments hypodense lesions inside enhancing organ parenchyma (liver, spleen) and lymph nodes (soft-tissue
    ovoids with fat around them: a node is classified from the fat in a 3 mm shell around it). Per lesion:
    centroid, longest axial diameter on the slice where it is longest, the perpendicular short axis on that
    slice, volume, and its RECIST measurability. Classical thresholds, no learned model; lesions abutting
    an organ surface or other soft tissue can be missed.
    """
    hu, spacing = _ct_volume(inp.image, "image")
    seg = lg.segment_lesions(hu, spacing)
    records = [_record(g, spacing[0]) for g in seg.lesions]
    return RecistLesions(
        lesions=records,
        lesion_count=len(records),
        measurable_lesion_count=sum(r.measurability == "measurable" for r in records),
        min_measurable_diameter_mm=lg.min_measurable_mm(spacing[0]),
        lesion_mask=save_artifact(seg.mask, "mask"),
        quality_flags=[*seg.flags, *_thickness_flags(spacing)],
    )


def _targets(
    base: list[lg.LesionGeometry],
    fu: list[lg.LesionGeometry],
    target_idx: list[int],
    matches: dict[int, int],
) -> list[RecistTarget]:
    out = []
    for i in target_idx:
        g = base[i]
        h = fu[matches[i]] if i in matches else None
        out.append(
            RecistTarget(
                organ=g.organ,
                is_node=g.is_node,
                baseline_diameter_mm=lg.recist_diameter_mm(g),
                # a target's follow-up diameter is read from the baseline lesion's kind (node: short axis)
                followup_diameter_mm=0.0
                if h is None
                else (h.short_axis_mm if g.is_node else h.longest_diameter_mm),
                baseline_longest_diameter_mm=g.longest_diameter_mm,
                baseline_short_axis_mm=g.short_axis_mm,
                followup_longest_diameter_mm=0.0 if h is None else h.longest_diameter_mm,
                followup_short_axis_mm=0.0 if h is None else h.short_axis_mm,
                baseline_centroid_mm=(g.centroid_mm[0], g.centroid_mm[1], g.centroid_mm[2]),
                followup_centroid_mm=None
                if h is None
                else (h.centroid_mm[0], h.centroid_mm[1], h.centroid_mm[2]),
                status="disappeared" if h is None else "measured",
            )
        )
    return out


@tool(
    name="assess_recist_response",
    method="rule",
    version="0.1.0",
    modalities=("ct",),
    dims=("3d",),
    device="cpu",
    requires_spacing=True,
)
def assess_recist_response(inp: AssessRecistInput) -> RecistAssessment:
    """Tumour response by RECIST 1.1 between a baseline (prior) CT and a follow-up (current) CT.

    Measures the lesions of both studies as measure_recist_lesions does; selects target lesions at baseline
    (the largest measurable, at most 2 per organ, all nodes counting as one organ, at most 5); registers the
    follow-up to the baseline by the centroid of the largest organ (else the body) to absorb patient shift;
    matches lesions by registered centroid distance; sums the targets' diameters (short axis for nodes) at
    both timepoints. With two studies the nadir is the baseline. A follow-up lesion matching no baseline
    lesion is an unequivocal new lesion when non-nodal >= 10 mm LD (twice the slice thickness above 5 mm)
    or a node >= 10 mm short axis. A target not found again at follow-up counts as disappeared (0 mm; RECIST
    would record 5 mm for a remnant too small to measure). Non-target lesions are counted but their
    progression is not assessed.
    """
    b_hu, b_sp = _ct_volume(inp.baseline, "baseline")
    f_hu, f_sp = _ct_volume(inp.follow_up, "follow_up")
    base = lg.segment_lesions(b_hu, b_sp)
    fu = lg.segment_lesions(f_hu, f_sp)
    flags = [f"baseline_{f}" for f in base.flags] + [f"followup_{f}" for f in fu.flags]
    flags += _thickness_flags(b_sp, "baseline_") + _thickness_flags(f_sp, "followup_")
    if abs(b_sp[0] - f_sp[0]) > 1.0:
        flags.append("slice_thickness_differs_between_studies")
    target_idx = lg.select_targets(base.lesions, b_sp[0])
    if not target_idx:
        raise ToolError(
            "no measurable lesion at baseline: RECIST 1.1 target response cannot be assessed",
            flags=("no_measurable_disease", *flags),
        )
    shift, how = lg.registration_shift_mm(base, fu)
    if how != "organ":
        flags.append("registered_by_body_centroid")
    if float(np.linalg.norm(shift)) > LARGE_SHIFT_MM:
        flags.append("large_patient_shift")
    matches = lg.match_lesions(base.lesions, fu.lesions, shift)
    targets = _targets(base.lesions, fu.lesions, target_idx, matches)
    matched_fu = set(matches.values())
    unmatched = [g for j, g in enumerate(fu.lesions) if j not in matched_fu]
    new = [g for g in unmatched if lg.is_unequivocal_new(g, f_sp[0])]
    equivocal = [
        g
        for g in unmatched
        if not lg.is_unequivocal_new(g, f_sp[0])
        and not (g.is_node and g.short_axis_mm < lg.NORMAL_NODE_SHORT_AXIS_MM)
    ]
    if equivocal:
        flags.append("equivocal_new_lesion")
    base_sum = float(sum(t.baseline_diameter_mm for t in targets))
    fu_sum = float(sum(t.followup_diameter_mm for t in targets))
    change = 100.0 * (fu_sum - base_sum) / base_sum
    resolved = all(
        t.followup_diameter_mm < lg.NORMAL_NODE_SHORT_AXIS_MM if t.is_node else t.status == "disappeared"
        for t in targets
    )
    if any(base.lesions[i].touches_scan_edge for i in target_idx):
        flags.append("target_cut_by_scan_range")
    non_targets = [
        i
        for i, g in enumerate(base.lesions)
        if i not in target_idx and lg.measurability(g, b_sp[0]) != "normal_node"
    ]
    response = lg.recist_category(
        change, fu_sum - base_sum, change, new_lesions=bool(new), all_targets_resolved=resolved
    )
    return RecistAssessment(
        sum_diameters_baseline_mm=base_sum,
        sum_diameters_followup_mm=fu_sum,
        sum_change_percent=change,
        sum_increase_from_nadir_percent=change,
        sum_increase_from_nadir_mm=fu_sum - base_sum,
        new_lesions=bool(new),
        new_lesion_count=len(new),
        equivocal_new_lesion_count=len(equivocal),
        all_targets_resolved=resolved,
        target_lesions=targets,
        non_target_lesion_count=len(non_targets),
        recist_response=response,
        registration_shift_mm=(shift[0], shift[1], shift[2]),
        baseline_lesion_mask=save_artifact(base.mask, "mask"),
        followup_lesion_mask=save_artifact(fu.mask, "mask"),
        quality_flags=flags,
    )
