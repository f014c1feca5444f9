"""Image degradations at graded severities (noise, blur, low contrast, JPEG), for robustness tests.

The four kinds and three severities follow the MedQ-Deg idea of a quality ladder: each severity is a
fixed, documented transform scaled to the image size where it matters (blur), so one ladder serves
every image. Everything random is drawn from ``seed``; the same call gives the same image.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

DegradationKind = Literal["noise", "blur", "low_contrast", "jpeg"]
"""Kinds of degradation."""

DEGRADATION_KINDS: tuple[DegradationKind, ...] = ("noise", "blur", "low_contrast", "jpeg")
"""Every kind, in report order."""

SEVERITIES = (1, 2, 3)
"""Severity levels: 1 mild, 2 moderate, 3 severe (0 is the clean image)."""

NOISE_SIGMA_8BIT = {1: 5.0, 2: 10.0, 3: 20.0}
"""Standard deviation of additive Gaussian noise, in 8-bit grey levels, per severity."""
BLUR_SIGMA_FRACTION = {1: 0.004, 2: 0.008, 3: 0.016}
"""Gaussian blur sigma as a fraction of the image's short side, per severity."""
CONTRAST_FACTOR = {1: 0.5, 2: 0.25, 3: 0.1}
"""Factor the deviation from the lit field's mean is multiplied by, per severity."""
LIT_LEVEL = 0.1
"""Pixels darker than this share of the 99th-percentile brightness are unlit surround (a fundus
camera's black border), which a loss of contrast inside the field leaves dark."""
JPEG_QUALITY = {1: 30, 2: 12, 3: 4}
"""JPEG quality setting (libjpeg scale, 1-100), per severity."""


def degrade(image: np.ndarray, kind: DegradationKind, severity: int, *, seed: int = 0) -> np.ndarray:
    """The 8-bit image (grey or RGB) degraded by ``kind`` at ``severity`` (0 returns a copy)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an 8-bit grey or RGB image, got {image.dtype} with {image.ndim} dims")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0-3, got {severity}")
    if kind not in DEGRADATION_KINDS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {', '.join(DEGRADATION_KINDS)}")
    if severity == 0:
        return image.copy()
    x = image.astype(np.float32)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        x = x + rng.normal(0.0, NOISE_SIGMA_8BIT[severity], x.shape).astype(np.float32)
    elif kind == "blur":
        sigma = BLUR_SIGMA_FRACTION[severity] * min(image.shape[:2])
        x = np.asarray(cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT))
    elif kind == "low_contrast":
        x = _compress_contrast(x, CONTRAST_FACTOR[severity])
    else:
        return _jpeg(image, JPEG_QUALITY[severity])
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _compress_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Contrast inside the lit field compressed toward its mean (haze, veiling glare, underexposure
    of the scene); the unlit surround is scaled, so it stays dark."""
    grey = x if x.ndim == 2 else x.mean(axis=2)
    lit = (grey > LIT_LEVEL * np.percentile(grey, 99)).astype(np.float32)
    if x.ndim == 3:
        lit = lit[..., None]
    mean = (x * lit).sum(axis=(0, 1)) / max(float(lit.sum()), 1.0)
    return factor * x + (1.0 - factor) * mean * lit


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip at ``quality`` (RGB order kept)."""
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the JPEG")
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if out is None:
        raise RuntimeError("OpenCV could not decode its own JPEG")
    return np.asarray(out if image.ndim == 2 else cv2.cvtColor(out, cv2.COLOR_BGR2RGB))
