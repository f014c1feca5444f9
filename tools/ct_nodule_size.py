"""Lung nodule detection, segmentation and Fleischner measurements on chest CT (classical, no weights)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from dxgraph.core import ArtifactRef, ImageRef, ToolModel
from dxgraph.errors import ToolError
from dxgraph.tools._context import load_volume, save_artifact
from dxgraph.tools._nodule_segmentation import NoduleMeasurement, nodule_count, segment_nodules
from dxgraph.tools._registry import ErrorModel, tool

NOT_HU_P5 = -400.0
"""A CT volume whose 5th percentile is above this holds no aerated lung (or is not in HU)."""
DIAMETER_ERROR = ErrorModel(
    bias=-0.42,
    sd=4.42,
    n=487,
    source="LIDC-IDRI dev ct_lidc_nodules, 487 nodule crops (9 of 496 found no nodule), no fitting; "
    "bench/lidc_nodule_eval.py",
)
"""The classical average diameter against the same measure on the radiologists' max-voted masks: 60 %
within 1.5 mm, MAE 2.56 mm; the spread is in the tails (large nodules cut off, nodules merged with the
chest wall), the median error is 1.1 mm."""
CT_SPACING_RANGE_MM = (0.1, 20.0)
"""Voxel sizes a CT scanner produces. Outside them the segmenter's filters, sized in mm, would span no
voxel or millions of them (a header claiming 1e-6 mm voxels made a 20-million-pixel kernel)."""


class LungNoduleInput(ToolModel):
    """Input of segment_lung_nodules."""

    image: ImageRef
    """A 3D chest CT volume in HU with voxel spacing: a whole chest, a slab, or a nodule-centred crop."""


class LungNodules(ToolModel):
    """The nodules found in a CT volume and the Fleischner measurements of the dominant one."""

    nodule_mask: ArtifactRef
    """Boolean (z, y, x) mask of the dominant nodule, the shape of the volume."""
    nodule_count: int = Field(ge=1)
    """Nodules found: the dominant one plus the others at least 5 mm across and round."""
    diameter_mm: float = Field(ge=0)
    """Fleischner average diameter of the dominant nodule: mean of long and short axis on the axial slice
    where the long axis is longest (not rounded)."""
    long_axis_mm: float = Field(ge=0)
    """Longest in-plane diameter of the dominant nodule on that slice."""
    short_axis_mm: float = Field(ge=0)
    """Longest chord perpendicular to the long axis on the same slice."""
    volume_mm3: float = Field(ge=0)
    """Volume of the dominant nodule's mask."""
    nodule_type: Literal["solid", "part_solid", "ground_glass"]
    """Texture of the dominant nodule from HU (solid >= -300 HU; ground glass about -750 to -300 HU)."""
    solid_component_mm: float = Field(ge=0)
    """Average diameter of the solid part: equals diameter_mm for a solid nodule, 0 for ground glass."""
    quality_flags: list[str]
    """Machine-readable warnings about the input or the measurement."""


@tool(
    name="segment_lung_nodules",
    method="classical",
    version="0.1.0",
    modalities=("ct",),
    dims=("3d",),
    device="cpu",
    requires_spacing=True,
    spacing_range_mm=CT_SPACING_RANGE_MM,
    error_models={"diameter_mm": DIAMETER_ERROR},
)
def segment_lung_nodules(inp: LungNoduleInput) -> LungNodules:
    """Find and segment lung nodules on a 3D chest CT in HU and measure the dominant one (Fleischner 2017).

    Classical image analysis, no learned weights: the lung is the aerated region closed over
    juxtapleural nodules (so the chest wall and mediastinum are excluded); candidates above -700 HU are
    separated from vessels by a morphological opening scaled to their own thickness; tubular pieces are
    rejected; each nodule's edge is redrawn at 28% of the way from lung to nodule HU. The dominant nodule
    is the largest, or, in a volume at most 64 mm wide (a nodule-centred crop), the central one.
    Diameter = average of long and short (perpendicular) axes on the axial slice of maximal long axis;
    type from HU (solid, part-solid, ground glass). Raises ToolError(no_nodule_found) when there is none.
    """
    hu, spacing = load_volume(inp.image, "the CT image of segment_lung_nodules")
    require_aerated_lung(hu)
    seg = segment_nodules(hu, tuple(float(s) for s in spacing))
    if not seg.nodules:
        raise ToolError("no lung nodule of 3 mm or more was found in the volume", flags=("no_nodule_found",))
    dom = seg.nodules[0]
    flags = ["nodule_centred_crop_central_nodule_measured"] if seg.nodule_centred_crop else []
    return LungNodules(**dominant_nodule_fields(dom, dom.mask, nodule_count(seg), spacing[0], flags))


def require_aerated_lung(hu: np.ndarray) -> None:
    """ToolError ``no_lung_parenchyma_or_not_hu`` for a volume without aerated lung, or not in HU."""
    if float(np.percentile(hu, 5)) > NOT_HU_P5:
        raise ToolError(
            "the volume holds no aerated lung below -400 HU: not a chest CT in HU, or no lung in it",
            flags=("no_lung_parenchyma_or_not_hu",),
        )


def dominant_nodule_fields(
    dom: NoduleMeasurement, mask: np.ndarray, count: int, slice_spacing_mm: float, flags: list[str]
) -> dict[str, Any]:
    """The ``LungNodules`` fields of a measured dominant nodule drawn by ``mask``, with the flags every
    nodule segmenter raises (border contact, thick slices, a nodule near the detection limit)."""
    flags = list(flags)
    if dom.touches_border:
        flags.append("nodule_touches_volume_border")
    if float(slice_spacing_mm) > 2.5:
        flags.append("thick_slices_over_2_5mm")
    if dom.diameter_mm < 4.0:
        flags.append("nodule_near_detection_limit")
    return {
        "nodule_mask": save_artifact(mask, "mask"),
        "nodule_count": count,
        "diameter_mm": round(dom.diameter_mm, 3),
        "long_axis_mm": round(dom.long_axis_mm, 3),
        "short_axis_mm": round(dom.short_axis_mm, 3),
        "volume_mm3": round(dom.volume_mm3, 2),
        "nodule_type": dom.nodule_type,
        "solid_component_mm": round(dom.solid_component_mm, 3),
        "quality_flags": flags,
    }
