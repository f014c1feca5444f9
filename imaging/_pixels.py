"""Pixel conversions shared by tools and reports."""

from __future__ import annotations

import numpy as np

from dxgraph.errors import ToolError


def as_rgb8(pixels: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of a 2D image: grey is replicated, 16-bit and float are rescaled.

    Raises ToolError for arrays that are not a 2D grey or RGB image.
    """
    a = pixels
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ToolError(
            f"expected a 2D grey or RGB image, got an array of shape {a.shape}", flags=("not_2d_image",)
        )
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return a
