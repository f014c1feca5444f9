"""Crop-and-zoom: a square view of a region of interest, for reports and vision-language models."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from dxgraph.tools._context import as_rgb8, load_image, save_artifact
from dxgraph.tools._registry import tool
from dxgraph.tools._types import ImageRef, RegionOfInterest, ToolModel
from dxgraph.traces._artifacts import ArtifactRef


class CropZoomInput(ToolModel):
    """Input of crop_zoom."""

    image: ImageRef
    """A 2D image."""
    roi: RegionOfInterest
    """The region to centre the crop on."""
    window_factor: float = Field(default=2.0, ge=1.0, le=20.0)
    """Side of the crop window over the region's diameter (2 shows the region plus a margin)."""
    output_size_px: int = Field(default=384, ge=32, le=2048)
    """Side of the returned square crop in pixels."""


class Crop(ToolModel):
    """A square, resampled crop of an image around a region."""

    crop: ArtifactRef
    """The crop, 8-bit RGB."""
    box_xyxy: tuple[int, int, int, int]
    """Crop window in source pixels: x0, y0, x1, y1 (exclusive); may extend past the image."""
    magnification: float = Field(gt=0)
    """Output pixels per source pixel."""
    label: str
    """The region's label."""


@tool(
    name="crop_zoom",
    version="0.1.0",
    modalities=("fundus", "cxr", "ct", "mr", "us"),
    dims=("2d",),
)
def crop_zoom(inp: CropZoomInput) -> Crop:
    """Crop a square window around a region of interest and resample it to a fixed size.

    The window is the region's diameter times ``window_factor``; parts outside the image are black.
    """
    import cv2

    rgb = as_rgb8(load_image(inp.image))
    h, w = rgb.shape[:2]
    cx, cy = inp.roi.center_xy
    half = max(round(inp.roi.radius_px * inp.window_factor), 1)
    x0, y0 = round(cx) - half, round(cy) - half
    x1, y1 = x0 + 2 * half, y0 + 2 * half
    window = np.zeros((2 * half, 2 * half, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    size = inp.output_size_px
    interp = cv2.INTER_AREA if 2 * half > size else cv2.INTER_CUBIC
    crop = cv2.resize(window, (size, size), interpolation=interp)
    return Crop(
        crop=save_artifact(crop, "crop"),
        box_xyxy=(x0, y0, x1, y1),
        magnification=size / (2 * half),
        label=inp.roi.label,
    )
