"""Disc-centred fundus crops: the optic nerve head fills the frame and there is no dark surround.

Many glaucoma collections and devices supply this format. ``disc_centred_crop`` cuts one from a full
photograph around a known disc mask (the experts' or a phantom's), at a zoom given as the crop side over
the disc diameter, and cuts the masks with it, so the crop keeps its ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_ZOOMS = (1.5, 2.5, 4.0)
"""Crop side over disc diameter of the three zooms the tests and the bench cut: tight, medium, wide."""


@dataclass(frozen=True)
class DiscCrop:
    """A disc-centred crop and the masks cut with it."""

    rgb: np.ndarray
    """The crop, uint8 (S, S, 3)."""
    masks: tuple[np.ndarray, ...]
    """The masks given, cut (and resized) with the crop, bool (S, S)."""
    box_xywh: tuple[int, int, int, int]
    """Where the crop lies in the photograph: left, top, width and height, px."""
    zoom: float
    """Crop side over disc diameter."""


def disc_centred_crop(
    rgb: np.ndarray,
    disc_mask: np.ndarray,
    zoom: float,
    *,
    masks: tuple[np.ndarray, ...] = (),
    out_side_px: int | None = None,
) -> DiscCrop:
    """A square crop of side ``zoom`` x the disc diameter, centred on the disc and kept inside the photo.

    The disc diameter is the larger side of the disc mask's bounding box. Where the square would leave
    the photograph it is shifted back inside (the disc is then a little off centre), and shrunk to the
    photograph's shorter side when it is larger. ``masks`` are cut with the crop; ``out_side_px``
    resizes the crop (and the masks, by nearest neighbour) to that side.
    """
    disc = np.asarray(disc_mask, bool)
    if not disc.any():
        raise ValueError("the disc mask is empty")
    if zoom <= 1.0:
        raise ValueError(f"zoom {zoom} would cut the disc: give the crop side over the disc diameter, > 1")
    ys, xs = np.nonzero(disc)
    diameter = max(int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1))
    h, w = disc.shape
    side = min(round(zoom * diameter), h, w)
    cx, cy = float(xs.mean()), float(ys.mean())
    x0 = int(min(max(round(cx - side / 2), 0), w - side))
    y0 = int(min(max(round(cy - side / 2), 0), h - side))
    crop = np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side])
    cut = tuple(np.asarray(m, bool)[y0 : y0 + side, x0 : x0 + side] for m in masks)
    if out_side_px is not None and out_side_px != side:
        interp = cv2.INTER_AREA if out_side_px < side else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (out_side_px, out_side_px), interpolation=interp)
        cut = tuple(
            cv2.resize(m.astype(np.uint8), (out_side_px, out_side_px), interpolation=cv2.INTER_NEAREST) > 0
            for m in cut
        )
    return DiscCrop(rgb=crop, masks=cut, box_xywh=(x0, y0, side, side), zoom=float(zoom))
