"""Crop-and-zoom: a resampled view of a region, for reports, vision-language models and 3D follow-up tools."""

from __future__ import annotations

from typing import Self

import numpy as np
from pydantic import Field, model_validator

from dxgraph.core import ArtifactRef, ImageRef, RegionOfInterest, ToolModel
from dxgraph.errors import ToolError
from dxgraph.imaging import as_rgb8
from dxgraph.tools._context import load_artifact, load_image, save_artifact
from dxgraph.tools._registry import tool

MAX_CROP_VOXELS = 64_000_000
"""Largest resampled 3D crop a call may produce."""


class BoundingBox(ToolModel):
    """An axis-aligned box in array index order ((y, x) for 2D, (z, y, x) for 3D)."""

    min_index: tuple[int, ...]
    """First index of the box on each axis (inclusive)."""
    max_index: tuple[int, ...]
    """End index of the box on each axis (exclusive)."""

    @model_validator(mode="after")
    def _check_extent(self) -> Self:
        """Both corners have 2 or 3 axes and the box is not empty."""
        if len(self.min_index) != len(self.max_index) or len(self.min_index) not in (2, 3):
            raise ValueError("min_index and max_index must both have 2 or 3 axes")
        if any(hi <= lo for lo, hi in zip(self.min_index, self.max_index, strict=True)):
            raise ValueError("max_index must exceed min_index on every axis (max is exclusive)")
        return self


class CropZoomInput(ToolModel):
    """Input of crop_zoom: an image and exactly one of roi, box or region_mask."""

    image: ImageRef
    """A 2D image, or a 3D volume (box or region_mask only)."""
    roi: RegionOfInterest | None = None
    """A circular 2D region to centre a square crop on."""
    box: BoundingBox | None = None
    """A box to crop, in array index order (exclusive max)."""
    region_mask: ArtifactRef | None = None
    """A mask of the image's shape; its bounding box is cropped."""
    window_factor: float = Field(default=2.0, ge=1.0, le=20.0)
    """For roi: side of the crop window over the region's diameter (2 shows the region plus a margin)."""
    output_size_px: int = Field(default=384, ge=32, le=2048)
    """For roi: side of the square crop; for 2D box/mask without zoom_factor: its longer side."""
    margin_voxels: int = Field(default=0, ge=0, le=1024)
    """For box/region_mask: voxels added to the window on every side of every axis."""
    zoom_factor: float | None = Field(default=None, gt=0.0, le=64.0)
    """For box/region_mask: output voxels per source voxel on every axis; None: 2D fits output_size_px,
    3D keeps the source grid (1.0)."""
    view_label: str | None = None
    """For box/region_mask: the label of the crop (default ``box`` or ``region``)."""

    @model_validator(mode="after")
    def _exactly_one_region(self) -> Self:
        """Exactly one of roi, box and region_mask is given."""
        given = [n for n in ("roi", "box", "region_mask") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of roi, box or region_mask (got {', '.join(given) or 'none'})"
            )
        return self


class Crop(ToolModel):
    """A resampled crop of an image around a region."""

    crop: ArtifactRef
    """The crop as an 8-bit RGB image; for a 3D volume, the axial slice at the middle of the crop."""
    box_xyxy: tuple[int, int, int, int]
    """Crop window in source pixels: x0, y0, x1, y1 (exclusive); may extend past the image."""
    magnification: float = Field(gt=0, json_schema_extra={"unit": "1"})
    """Output pixels per source pixel (along x)."""
    label: str
    """The region's label."""
    window_min_index: tuple[int, ...] | None = None
    """Crop window start in source array indices ((y, x) or (z, y, x)), inclusive; may be negative."""
    window_max_index: tuple[int, ...] | None = None
    """Crop window end in source array indices, exclusive; may lie past the image."""
    crop_spacing_mm: tuple[float, ...] | None = None
    """Spacing in mm per axis of the crop (2D) or crop_volume (3D): source spacing over the zoom."""
    crop_volume: ArtifactRef | None = None
    """For a 3D volume: the resampled crop (z, y, x) in source intensities, float32 unless zoom is 1."""


def padded_window(arr: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...], fill: float) -> np.ndarray:
    """arr[lo:hi] on the leading axes, with parts outside the array filled with ``fill``."""
    shape = tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True)) + arr.shape[len(lo) :]
    out = np.full(shape, fill, dtype=arr.dtype)
    src = tuple(slice(max(lo_, 0), min(h, n)) for lo_, h, n in zip(lo, hi, arr.shape, strict=False))
    dst = tuple(slice(s.start - lo_, s.stop - lo_) for s, lo_ in zip(src, lo, strict=True))
    if all(s.stop > s.start for s in src):
        out[dst] = arr[src]
    return out


def _spatial_ndim(image: ImageRef) -> int:
    if image.dims == "2d":
        return 2
    if image.dims == "3d":
        return 3
    raise ToolError(f"crop_zoom takes 2D images or 3D volumes, not {image.dims}", flags=("unsupported_dims",))


def _crop_spacing(image: ImageRef, zooms: tuple[float, ...]) -> tuple[float, ...] | None:
    sp = image.spacing_mm
    if sp is None or len(sp) != len(zooms):
        return None
    return tuple(float(s) / z for s, z in zip(sp, zooms, strict=True))


def _window(inp: CropZoomInput, spatial_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ndim = len(spatial_shape)
    if inp.box is not None:
        lo, hi = inp.box.min_index, inp.box.max_index
        if len(lo) != ndim:
            raise ToolError(f"the box has {len(lo)} axes; the image has {ndim}", flags=("box_dims_mismatch",))
    else:
        assert inp.region_mask is not None
        mask = load_artifact(inp.region_mask)
        if tuple(mask.shape) != spatial_shape:
            raise ToolError(
                f"region_mask shape {mask.shape} differs from the image's {spatial_shape}",
                flags=("mask_shape_mismatch",),
            )
        idx = np.nonzero(mask)
        if idx[0].size == 0:
            raise ToolError("region_mask is empty: nothing to crop", flags=("empty_mask",))
        lo, hi = tuple(int(i.min()) for i in idx), tuple(int(i.max()) + 1 for i in idx)
    if any(h <= 0 or lo_ >= n for lo_, h, n in zip(lo, hi, spatial_shape, strict=True)):
        raise ToolError(
            f"the box {lo}..{hi} lies outside the image {spatial_shape}", flags=("box_outside_image",)
        )
    m = inp.margin_voxels
    return tuple(v - m for v in lo), tuple(v + m for v in hi)


def _crop_roi(inp: CropZoomInput, pixels: np.ndarray, roi: RegionOfInterest) -> Crop:
    import cv2

    rgb = as_rgb8(pixels)
    cx, cy = roi.center_xy
    half = max(round(roi.radius_px * inp.window_factor), 1)
    x0, y0 = round(cx) - half, round(cy) - half
    x1, y1 = x0 + 2 * half, y0 + 2 * half
    window = padded_window(rgb, (y0, x0), (y1, x1), 0)
    size = inp.output_size_px
    interp = cv2.INTER_AREA if 2 * half > size else cv2.INTER_CUBIC
    crop = cv2.resize(window, (size, size), interpolation=interp)
    mag = size / (2 * half)
    return Crop(
        crop=save_artifact(crop, "crop"),
        box_xyxy=(x0, y0, x1, y1),
        magnification=mag,
        label=roi.label,
        window_min_index=(y0, x0),
        window_max_index=(y1, x1),
        crop_spacing_mm=_crop_spacing(inp.image, (mag, mag)),
    )


def _crop_box_2d(inp: CropZoomInput, pixels: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...]) -> Crop:
    import cv2

    (y0, x0), (y1, x1) = lo, hi
    window = padded_window(as_rgb8(pixels), lo, hi, 0)
    h, w = y1 - y0, x1 - x0
    zoom = inp.zoom_factor if inp.zoom_factor is not None else inp.output_size_px / max(h, w)
    out_h, out_w = max(round(h * zoom), 1), max(round(w * zoom), 1)
    if (out_h, out_w) == (h, w):
        crop = window
    else:
        interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_CUBIC
        crop = cv2.resize(window, (out_w, out_h), interpolation=interp)
    return Crop(
        crop=save_artifact(crop, "crop"),
        box_xyxy=(x0, y0, x1, y1),
        magnification=out_w / w,
        label=inp.view_label or _default_label(inp),
        window_min_index=lo,
        window_max_index=hi,
        crop_spacing_mm=_crop_spacing(inp.image, (out_h / h, out_w / w)),
    )


def _crop_box_3d(inp: CropZoomInput, volume: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...]) -> Crop:
    window = padded_window(volume, lo, hi, float(volume.min()))
    zoom = inp.zoom_factor if inp.zoom_factor is not None else 1.0
    in_shape = window.shape
    out_shape = tuple(max(round(n * zoom), 1) for n in in_shape)
    if int(np.prod(out_shape)) > MAX_CROP_VOXELS:
        raise ToolError(
            f"the resampled crop would have {out_shape} voxels; lower zoom_factor or the box",
            flags=("crop_too_large",),
        )
    if out_shape == in_shape:
        resampled = window
    else:
        from scipy import ndimage

        factors = tuple(o / n for o, n in zip(out_shape, in_shape, strict=True))
        # grid_mode aligns voxel edges, so output voxel i covers source (i + 0.5) / zoom - 0.5
        resampled = ndimage.zoom(window.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    (_, y0, x0), (_, y1, x1) = lo, hi
    zooms = tuple(o / n for o, n in zip(resampled.shape, in_shape, strict=True))
    view = as_rgb8(resampled[resampled.shape[0] // 2])
    return Crop(
        crop=save_artifact(view, "crop"),
        box_xyxy=(x0, y0, x1, y1),
        magnification=zooms[2],
        label=inp.view_label or _default_label(inp),
        window_min_index=lo,
        window_max_index=hi,
        crop_spacing_mm=_crop_spacing(inp.image, zooms),
        crop_volume=save_artifact(resampled, "crop"),
    )


def _default_label(inp: CropZoomInput) -> str:
    return "box" if inp.box is not None else "region"


@tool(
    name="crop_zoom",
    method="view",
    version="0.2.0",
    modalities=("fundus", "cxr", "ct", "mr", "us"),
    dims=("2d", "3d"),
)
def crop_zoom(inp: CropZoomInput) -> Crop:
    """Crop a window around a region and resample it: a zoomed view, and for 3D a resampled sub-volume.

    Give exactly one of: ``roi`` (2D: a square window of the region's diameter times ``window_factor``,
    resampled to ``output_size_px``), ``box`` (index box, exclusive max) or ``region_mask`` (its bounding
    box), each widened by ``margin_voxels`` and resampled by ``zoom_factor`` (3D: trilinear). Parts
    outside the image are filled black (2D) or with the volume's minimum (3D). Returns the window in
    source indices and, when the image has spacing, the crop's spacing in mm.
    """
    ndim = _spatial_ndim(inp.image)
    pixels = load_image(inp.image)
    if inp.roi is not None:
        if ndim != 2:
            raise ToolError(
                "a circular roi crops 2D images; give a box or region_mask", flags=("roi_needs_2d",)
            )
        return _crop_roi(inp, pixels, inp.roi)
    spatial_shape = tuple(int(n) for n in pixels.shape[:ndim])
    lo, hi = _window(inp, spatial_shape)
    if ndim == 2:
        return _crop_box_2d(inp, pixels, lo, hi)
    if pixels.ndim != 3:
        raise ToolError(f"expected a (z, y, x) volume, got shape {pixels.shape}", flags=("not_3d_volume",))
    return _crop_box_3d(inp, pixels, lo, hi)
