"""Modality-mismatch guard: cheap, physically motivated checks that pixels plausibly are the declared modality.

``content_mismatch`` looks only at pixel values (colour, brightness layout, value range); the declared
dimensionality is checked elsewhere. It is deliberately conservative: a false alarm makes a real case not
assessable, so every threshold below sits far outside what real images of the modality show and only
catches content that physically cannot come from it (a grey image as a colour fundus photograph, a colour
photograph as a radiograph, magnitude MR values as Hounsfield units...).
"""

from __future__ import annotations

import numpy as np

SAMPLE_SIDE_PX = 256
"""2D images are strided down to about this many pixels on the longer side: the statistics are global."""
SAMPLE_VOXELS = 1_000_000
"""Volumes are strided down to about this many voxels; air and tissue classes are far more abundant."""

LIT_FLOOR_RATIO = 0.1
"""Pixels darker than this share of the 99th-percentile brightness are surround/background, not scene."""
SATURATED_PIXEL_MIN = 0.15
"""A lit pixel counts as coloured when (max - min) / max of its RGB exceeds this; grey pixels stored as
RGB (and JPEG chroma noise on them) stay well below it."""
COLOUR_FRACTION_MIN = 0.2
"""An image is colour when more than this share of its lit pixels is coloured. Grey radiographs score 0;
colour fundus photographs score about 1 (the whole field is saturated red-orange); coloured
annotations burnt into a radiograph cover far less."""

FUNDUS_RED_DOMINANCE_MIN = 1.15
"""The fundus is red-orange (choroidal blood seen through the retina): over its field the mean red
exceeds the larger of mean green and mean blue about 1.5-4 times. Below 1.15 the scene is not red."""
CORNER_PATCH_RATIO = 0.06
"""Side of the square patch judged at each image corner, as a share of the shorter image side."""
FUNDUS_DARK_CORNER_RATIO = 0.3
"""A corner is dark when its median brightness is under this share of the field's median brightness: a
fundus camera images through the pupil, so its round field of view lies on a black surround (real
photographs' corners: under 0.12)."""
FUNDUS_DARK_CORNERS_MIN = 3
"""At least this many of the four corners must be dark: one may hold a burnt-in label or flare."""

CROP_COLOUR_FRACTION_MIN = 0.9
"""A disc-centred crop (no dark surround) is retina all over: nearly every pixel is saturated (Drishti-GS1
crops at 1.5-4 disc diameters: 1.0; natural photographs with grey or white areas: 0.5-0.6)."""
CROP_ORDERED_FRACTION_MIN = 0.95
"""...and nearly every pixel has red >= green >= blue (crops: at least 0.97; a blue-sky photo: 0.1)."""
CROP_BLUR_SIGMA_RATIO = 0.02
"""Gaussian sigma of the brightness image the disc is looked for in, as a share of the shorter side."""
CROP_CENTRAL_HALF_WIDTH = 0.3
"""The disc's brightest point lies within this share of each side from the crop's centre."""
CROP_DISC_CONTRAST_MIN = 0.2
"""The disc's peak stands above the crop's median brightness by this share of the peak (crops: >= 0.26)."""
CROP_DISC_AREA_RANGE = (0.01, 0.4)
"""The bright region around the peak (above half-way from median to peak) covers this share of the crop:
a disc at 1.5 to about 6 disc diameters per side (crops at 1.5-4: 0.02-0.21)."""
CROP_DISC_SATURATION_MIN = 0.42
"""The optic disc is pale yellow-orange, not white: mean saturation of the bright region (Drishti crops:
>= 0.55; phantoms with a large pale cup: >= 0.45; a white cup on a saucer: 0.39; sky: under 0.1)."""
CROP_DISC_GREEN_BLUE_MIN = 1.35
"""Mean green over mean blue in the bright region: the disc is yellow (Drishti crops: >= 1.57; phantoms:
>= 1.38; a white cup on a saucer: 1.30; grey or white objects: about 1)."""
CROP_SURROUND_SATURATION_MIN = 0.55
"""Mean saturation outside the bright region: red-orange retina (crops: >= 0.65; a cat's fur: 0.43)."""

CXR_MIN_SIDE_PX = 192
"""A chest radiograph shows the whole thorax (35-43 cm) and stays at least about 200 px across even when
heavily downsized (2 mm pixels, 10-20 times coarser than any detector); a smaller grey image is a
crop or a single CT/MR slice, not a radiograph."""
CXR_BORDER_RING_RATIO = 0.03
"""Width of the image border ring judged for "fills the frame", as a share of each image side."""
CXR_DARK_LEVEL = 0.1
"""Border pixels under this level (0 = 1st, 1 = 99th intensity percentile of the image) count as empty."""
CXR_DARK_BORDER_FRACTION_MAX = 0.95
"""A radiograph fills the frame with the thorax (neck, shoulders and abdomen reach the edges; real sets
show at most about 70 % dark border); an object wholly on a dark background (over 95 % of the border
empty), as a CT or MR cross-section is, is not a chest radiograph."""

CT_LOWEST_VALUE_MAX_HU = -100.0
"""CT is in Hounsfield units: air is -1000, lung about -850, fat about -100 HU, and any field of view of
the body holds some of them. A volume whose lowest value is above -100 holds no fat, lung or air, so it
is not in HU (magnitude MR, or CT stored without its rescale)."""
MR_HU_AIR_LEVEL = -500.0
"""Values at or below this are air or lung in Hounsfield units; MR magnitude signal is never negative."""
MR_HU_AIR_FRACTION_MAX = 0.01
"""An MR volume with more than this share of voxels at HU-air levels is a CT volume (LIDC lung crops: 13-100 %)."""


def content_mismatch(pixels: np.ndarray, dims: str, modality: str) -> str | None:
    """None when the pixels plausibly are ``modality``; else one short human reason why they are not."""
    arr = np.asarray(pixels)
    if arr.size == 0 or arr.dtype.kind not in "biuf":
        return None
    if modality in ("fundus", "cxr"):
        rgb = _as_2d_image(arr) if dims == "2d" else None
        if rgb is None:
            return None  # not a 2D image layout: the dimensionality check reports that
        return _fundus_mismatch(rgb) if modality == "fundus" else _cxr_mismatch(rgb, arr.shape[:2])
    if modality == "ct":
        return _ct_mismatch(_sample_values(arr))
    if modality == "mr":
        return _mr_mismatch(_sample_values(arr))
    return None  # ultrasound and unknown modalities: anything goes


def _as_2d_image(arr: np.ndarray) -> np.ndarray | None:
    """The image strided to about SAMPLE_SIDE_PX, as float (H, W, 3); None when it is not a 2D image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    elif not (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        return None
    step = max(1, max(arr.shape[:2]) // SAMPLE_SIDE_PX)
    small = arr[::step, ::step, :3].astype(np.float32)
    small = np.where(np.isfinite(small), small, 0.0)
    low = float(small.min())
    if low < 0:
        small -= low
    return np.broadcast_to(small, (*small.shape[:2], 3)) if small.shape[2] == 1 else small


def _lit_mask(value: np.ndarray) -> np.ndarray:
    """Pixels bright enough to belong to the scene (not the dark surround)."""
    return value > LIT_FLOOR_RATIO * float(np.percentile(value, 99))


def _colour_fraction(rgb: np.ndarray, lit: np.ndarray) -> float:
    """Share of the lit pixels whose colour is saturated (0 for grey images)."""
    if not lit.any():
        return 0.0
    value = rgb.max(axis=2)[lit]
    saturation = (value - rgb.min(axis=2)[lit]) / np.maximum(value, 1e-6)
    return float(np.mean(saturation > SATURATED_PIXEL_MIN))


def _fundus_mismatch(rgb: np.ndarray) -> str | None:
    """Why a 2D image is not a colour fundus photograph, or None."""
    value = rgb.max(axis=2)
    lit = _lit_mask(value)
    if _colour_fraction(rgb, lit) <= COLOUR_FRACTION_MIN:
        return "a fundus photograph is colour; this image is grey-scale"
    red, green, blue = (float(rgb[..., c][lit].mean()) for c in range(3))
    dominance = red / max(green, blue, 1e-6)
    if dominance < FUNDUS_RED_DOMINANCE_MIN:
        return (
            "a fundus photograph is red-orange (mean red well above green and blue); "
            f"this image's red is only {dominance:.2f} times its other colours"
        )
    k = max(2, round(CORNER_PATCH_RATIO * min(value.shape)))
    field = float(np.median(value[lit]))
    corners = (value[:k, :k], value[:k, -k:], value[-k:, :k], value[-k:, -k:])
    dark = sum(float(np.median(c)) < FUNDUS_DARK_CORNER_RATIO * field for c in corners)
    if dark < FUNDUS_DARK_CORNERS_MIN:
        not_crop = _disc_crop_mismatch(rgb, lit)
        if not_crop is None:
            return None  # a disc-centred crop: the optic nerve head fills the frame, no surround
        return (
            "a fundus photograph shows a round field of view on a dark surround, or is a disc-centred crop; "
            f"this image's corners are bright ({4 - dark} of 4) and {not_crop}"
        )
    return None


def _disc_crop_mismatch(rgb: np.ndarray, lit: np.ndarray) -> str | None:
    """Why a colour, red image with bright corners is not a disc-centred fundus crop, or None.

    A crop is retina to its edges (saturated, red >= green >= blue everywhere) with a bright, compact,
    yellow-orange optic disc near its centre that does not reach the image border.
    """
    import cv2

    if _colour_fraction(rgb, lit) < CROP_COLOUR_FRACTION_MIN:
        return "not coloured all over as retina is"
    px = rgb[lit]
    if float(np.mean((px[:, 0] >= px[:, 1]) & (px[:, 1] >= px[:, 2]))) < CROP_ORDERED_FRACTION_MIN:
        return "not red-orange all over as retina is"
    h, w = rgb.shape[:2]
    lum = 0.5 * (rgb[..., 0] + rgb[..., 1])
    blurred = cv2.GaussianBlur(np.ascontiguousarray(lum), (0, 0), CROP_BLUR_SIGMA_RATIO * min(h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    central = (np.abs(xx - w / 2) < CROP_CENTRAL_HALF_WIDTH * w) & (
        np.abs(yy - h / 2) < CROP_CENTRAL_HALF_WIDTH * h
    )
    y, x = np.unravel_index(int(np.argmax(np.where(central, blurred, -np.inf))), blurred.shape)
    peak, median = float(blurred[y, x]), float(np.median(blurred))
    if peak <= 0 or (peak - median) / peak < CROP_DISC_CONTRAST_MIN:
        return "shows no bright optic disc near its centre"
    _, labels = cv2.connectedComponents((blurred > median + 0.5 * (peak - median)).astype(np.uint8))
    disc = labels == labels[y, x]
    area = float(disc.mean())
    touches = bool(disc[0].any() or disc[-1].any() or disc[:, 0].any() or disc[:, -1].any())
    if touches or not CROP_DISC_AREA_RANGE[0] <= area <= CROP_DISC_AREA_RANGE[1]:
        return "its bright centre is not a compact disc inside the frame"
    inside, outside = rgb[disc], rgb[~disc]

    def saturation(p: np.ndarray) -> float:
        top = p.max(axis=1)
        return float(np.mean((top - p.min(axis=1)) / np.maximum(top, 1e-6)))

    green_blue = float(inside[:, 1].mean()) / max(float(inside[:, 2].mean()), 1e-6)
    if saturation(inside) < CROP_DISC_SATURATION_MIN or green_blue < CROP_DISC_GREEN_BLUE_MIN:
        return "its bright centre is white or grey, not a yellow-orange optic disc"
    if saturation(outside) < CROP_SURROUND_SATURATION_MIN:
        return "the area around its bright centre is not red-orange retina"
    return None


def _cxr_mismatch(rgb: np.ndarray, shape_px: tuple[int, ...]) -> str | None:
    """Why a 2D image (strided; ``shape_px`` its full size) is not a chest radiograph, or None."""
    lit = _lit_mask(rgb.max(axis=2))
    if _colour_fraction(rgb, lit) > COLOUR_FRACTION_MIN:
        return "a chest radiograph is grey-scale; this image is in colour"
    return _cxr_layout_mismatch(rgb.mean(axis=2), (int(shape_px[0]), int(shape_px[1])))


def _cxr_layout_mismatch(grey: np.ndarray, shape_px: tuple[int, int]) -> str | None:
    """Why a grey image is laid out unlike a chest radiograph (too small, an object on a dark field), or None."""
    if min(shape_px) < CXR_MIN_SIDE_PX:
        return (
            f"a chest radiograph shows the whole thorax at {CXR_MIN_SIDE_PX} px or more across; this image is "
            f"only {shape_px[0]}x{shape_px[1]} px (a crop or a CT/MR slice)"
        )
    low, high = (float(v) for v in np.percentile(grey, (1, 99)))
    if high <= low:
        return None  # a flat image: nothing to judge here
    level = (grey - low) / (high - low)
    ky = max(1, round(CXR_BORDER_RING_RATIO * grey.shape[0]))
    kx = max(1, round(CXR_BORDER_RING_RATIO * grey.shape[1]))
    ring = np.concatenate(
        [level[:ky].ravel(), level[-ky:].ravel(), level[ky:-ky, :kx].ravel(), level[ky:-ky, -kx:].ravel()]
    )
    empty = float(np.mean(ring < CXR_DARK_LEVEL))
    if empty > CXR_DARK_BORDER_FRACTION_MAX:
        return (
            "a chest radiograph fills the frame with the thorax; this image is an object on an empty dark "
            f"background ({empty:.0%} of its border), as a CT or MR cross-section is"
        )
    return None


def _sample_values(arr: np.ndarray) -> np.ndarray:
    """The finite values of an array, strided down to about SAMPLE_VOXELS, as float."""
    flat = arr.reshape(-1)
    step = max(1, flat.size // SAMPLE_VOXELS)
    values = flat[::step].astype(np.float32)
    return values[np.isfinite(values)]


def _ct_mismatch(values: np.ndarray) -> str | None:
    """Why sampled values are not CT in Hounsfield units, or None."""
    if values.size == 0:
        return None
    lowest = float(values.min())
    if lowest > CT_LOWEST_VALUE_MAX_HU:
        return (
            "CT voxels are in Hounsfield units (air near -1000, fat near -100); "
            f"this volume's minimum is {lowest:.0f}"
        )
    return None


def _mr_mismatch(values: np.ndarray) -> str | None:
    """Why sampled values are not MR signal, or None."""
    if values.size == 0:
        return None
    air = float(np.mean(values <= MR_HU_AIR_LEVEL))
    if air > MR_HU_AIR_FRACTION_MAX:
        return (
            "MR signal is never negative; "
            f"{air:.0%} of this volume is at or below {MR_HU_AIR_LEVEL:.0f}, as air and lung are in CT (HU)"
        )
    return None
