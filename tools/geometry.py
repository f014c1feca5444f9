"""measure_region: area or volume, RECIST diameters, bounding box and centroid of any mask, in mm."""

from __future__ import annotations

import numpy as np

from dxgraph.core import ArtifactRef, ImageRef, ToolModel
from dxgraph.errors import ToolError
from dxgraph.tools import _mask_geometry as geo
from dxgraph.tools._context import load_artifact
from dxgraph.tools._registry import tool

MIN_PIXELS_ACROSS = 5
"""Below this many in-plane pixels along the longest diameter, the region is flagged as small."""


class MeasureRegionInput(ToolModel):
    """Input of measure_region."""

    image: ImageRef
    """The 2D image or 3D volume the mask was drawn on; gives the spacing in mm."""
    mask: ArtifactRef
    """Boolean mask of the region, the same shape as the image ((y, x) or (z, y, x))."""
    region_label: str = "region"
    """What the region is, such as ``nodule`` or ``left_ventricle``."""


class RegionMeasurements(ToolModel):
    """Physical size, position and RECIST diameters of one masked region."""

    region_label: str
    """What the region is."""
    voxel_count: int
    """Number of mask pixels (2D) or voxels (3D)."""
    area_mm2: float | None
    """Area in mm^2 (2D masks; None for 3D)."""
    volume_ml: float | None
    """Volume in ml, 1 ml = 1000 mm^3 (3D masks; None for 2D)."""
    longest_diameter_mm: float
    """Longest in-plane diameter (edge to edge), on the axial slice where it is largest for 3D."""
    perpendicular_diameter_mm: float
    """Longest chord perpendicular to the longest diameter, in the same plane."""
    mean_diameter_mm: float
    """Mean of the longest and perpendicular diameters (as Fleischner and Lung-RADS size nodules)."""
    equivalent_diameter_mm: float
    """Diameter of the sphere (3D) or circle (2D) with the region's volume or area."""
    slice_index: int | None
    """For 3D: the axial slice (z index) of the diameter measurement; None for 2D."""
    bbox_min_index: tuple[int, ...]
    """Bounding box start in array indices ((y, x) or (z, y, x)), inclusive."""
    bbox_max_index: tuple[int, ...]
    """Bounding box end in array indices, exclusive."""
    bbox_size_mm: tuple[float, ...]
    """Bounding box size per axis in mm (voxels times spacing)."""
    centroid_index: tuple[float, ...]
    """Centroid in array indices per axis."""
    centroid_mm: tuple[float, ...]
    """Centroid in mm per axis, from the centre of voxel 0 (the image origin is not applied)."""
    quality_flags: list[str]
    """Caveats: ``multiple_components``, ``touches_image_border``, ``few_pixels_across``."""


def _spacing(image: ImageRef, ndim: int) -> tuple[float, ...]:
    if image.spacing_mm is None:
        raise ToolError(
            f"image {image.image_id} has no pixel spacing; sizes in mm cannot be measured",
            flags=("no_spacing",),
        )
    try:
        return geo.check_spacing(image.spacing_mm, ndim)
    except ValueError as e:
        raise ToolError(f"image {image.image_id}: {e}", flags=("bad_spacing",)) from None


def _spatial_ndim(image: ImageRef) -> int:
    if image.dims not in ("2d", "3d"):
        raise ToolError(
            f"measure_region takes 2D or 3D images, not {image.dims}", flags=("unsupported_dims",)
        )
    return 2 if image.dims == "2d" else 3


def _load_mask(inp: MeasureRegionInput, ndim: int) -> np.ndarray:
    image_shape = tuple(inp.image.pixels.shape[:ndim])
    mask = load_artifact(inp.mask)
    if mask.dtype != bool:
        mask = mask != 0
    if tuple(mask.shape) != image_shape:
        raise ToolError(
            f"mask shape {mask.shape} differs from the image's {image_shape}", flags=("mask_shape_mismatch",)
        )
    if not mask.any():
        raise ToolError(f"the {inp.region_label} mask is empty: nothing to measure", flags=("empty_mask",))
    return mask


def measure_mask(
    mask: np.ndarray, spacing: tuple[float, ...], region_label: str = "region"
) -> RegionMeasurements:
    """Measure a non-empty 2D or 3D boolean mask with spacing in mm per axis (no tool context needed)."""
    spacing = geo.check_spacing(spacing, mask.ndim)
    if mask.ndim == 2:
        d: geo.PlanarDiameters = geo.planar_diameters(mask, spacing)
        area, volume, slice_index = geo.area_mm2(mask, spacing), None, None
        equivalent = 2.0 * float(np.sqrt(area / np.pi))
    else:
        d = rd = geo.recist_diameters(mask, spacing)
        area, volume, slice_index = None, geo.volume_ml(mask, spacing), rd.slice_index
        equivalent = float(np.cbrt(6.0 * volume * 1000.0 / np.pi))
    lo, hi = geo.bounding_box(mask)
    flags = []
    if geo.component_count(mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]) > 1:
        flags.append("multiple_components")
    if geo.touches_border(mask):
        flags.append("touches_image_border")
    if d.longest_mm < MIN_PIXELS_ACROSS * max(spacing[-2:]):
        flags.append("few_pixels_across")
    return RegionMeasurements(
        region_label=region_label,
        voxel_count=geo.voxel_count(mask),
        area_mm2=area,
        volume_ml=volume,
        longest_diameter_mm=d.longest_mm,
        perpendicular_diameter_mm=d.perpendicular_mm,
        mean_diameter_mm=(d.longest_mm + d.perpendicular_mm) / 2.0,
        equivalent_diameter_mm=equivalent,
        slice_index=slice_index,
        bbox_min_index=lo,
        bbox_max_index=hi,
        bbox_size_mm=geo.bbox_size_mm(lo, hi, spacing),
        centroid_index=geo.centroid_index(mask),
        centroid_mm=geo.centroid_mm(mask, spacing),
        quality_flags=flags,
    )


@tool(
    name="measure_region",
    method="geometry",
    version="0.1.0",
    modalities=("fundus", "cxr", "ct", "mr", "us"),
    dims=("2d", "3d"),
    requires_spacing=True,
)
def measure_region(inp: MeasureRegionInput) -> RegionMeasurements:
    """Measure a masked region in physical units: area (2D) or volume (3D), RECIST diameters, box, centroid.

    The longest diameter is the maximal edge-to-edge Feret diameter of the mask's sub-pixel outline;
    for 3D it is taken on the axial slice where it is largest (``slice_index``). The perpendicular
    diameter is the longest chord at right angles to it in the same plane. Needs the image's spacing.
    """
    ndim = _spatial_ndim(inp.image)
    spacing = _spacing(inp.image, ndim)
    mask = _load_mask(inp, ndim)
    return measure_mask(mask, spacing, inp.region_label)
