"""Image sharpness (focus) of a 2D image: the variance of its Laplacian, a classic blur measure.

A blurred fundus photograph (cataract, defocus, motion) has a low Laplacian variance; criteria can
use it as an image-quality indicator. This module is the whole plugin: one input model, one output
model, one decorated function.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from dxgraph.errors import ToolError
from dxgraph.tools import ImageRef, ToolModel, load_image, tool


class SharpnessInput(ToolModel):
    """Input of measure_image_sharpness."""

    image: ImageRef
    """A 2D grey or colour image."""
    downsample_to_px: int = Field(default=512, ge=64, le=4096)
    """Longest side the image is reduced to first, so the figure does not depend on resolution."""


class Sharpness(ToolModel):
    """How sharp an image is."""

    laplacian_variance: float = Field(ge=0, json_schema_extra={"unit": "grey_level^2"})
    """Variance of the 4-neighbour Laplacian of the grey image on the 8-bit scale."""
    blur_probability: float = Field(ge=0, le=1)
    """A logistic map of the variance: near 1 for a blurred image, near 0 for a sharp one."""
    quality_flags: list[str]
    """``very_blurred`` when blur_probability is above 0.9."""


@tool(
    name="measure_image_sharpness",
    version="0.1.0",
    modalities=("fundus", "cxr"),
    dims=("2d",),
)
def measure_image_sharpness(inp: SharpnessInput) -> Sharpness:
    """Measure how sharp a 2D image is: the variance of its Laplacian at a fixed resolution."""
    pixels = load_image(inp.image)
    if inp.image.dims != "2d" or pixels.ndim not in (2, 3):
        raise ToolError(
            f"expected a 2D image, got {inp.image.dims} of shape {pixels.shape}", flags=("not_2d",)
        )
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels.astype(np.float64)
    if pixels.dtype != np.uint8:  # 16-bit or float: bring to the 8-bit scale the thresholds assume
        lo, hi = float(grey.min()), float(grey.max())
        grey = np.zeros_like(grey) if hi <= lo else (grey - lo) * (255.0 / (hi - lo))
    step = max(1, int(np.ceil(max(grey.shape) / inp.downsample_to_px)))
    g = grey[::step, ::step]
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    variance = float(lap.var())
    blur = float(1.0 / (1.0 + np.exp((np.log10(variance + 1e-9) - 1.5) * 6.0)))
    return Sharpness(
        laplacian_variance=variance,
        blur_probability=blur,
        quality_flags=["very_blurred"] if blur > 0.9 else [],
    )
