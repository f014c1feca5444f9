"""No-reference image quality of 2D photographs and radiographs: noise, blur, contrast, JPEG blocks.

Four cheap measures, each graded ``mild`` / ``moderate`` / ``severe`` against fixed thresholds, become
quality flags such as ``blur_moderate`` that tools report with their evidence. The thresholds were set
on phantoms degraded along a fixed ladder (``dxgraph.testing.degradations``) and checked against the
clean real sets: no clean Drishti-GS1 photograph or Wingspan radiograph is graded at all
(``bench/degradation_calibration.py`` prints both). The rules aggregator widens an indicator's
uncertainty for mild and moderate flags and finds it not assessable for a severe one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast, get_args

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

from dxgraph.core import GRADES, QualityGrade, QualityProblem

NOISE_SIGMA_8BIT_AT = (2.5, 5.0, 9.0)
"""Estimated noise SD (8-bit grey levels) from which noise is mild, moderate, severe."""
BLUR_SIGMA_FRACTION_AT = (0.0045, 0.008, 0.014)
"""Estimated edge blur (Gaussian sigma over the short side) from which blur is mild, moderate, severe."""
DYNAMIC_RANGE_8BIT_BELOW = (36.0, 30.0, 24.0)
"""Grey-level range (1st to 99th percentile of the lit field) below which contrast is mildly,
moderately, severely low."""
LIT_LEVEL = 0.1
"""Pixels darker than this share of the 99th-percentile brightness are unlit surround (a fundus
camera's black border), left out of the contrast measure."""
BLOCKINESS_AT = (2.0, 4.0, 9.0)
"""8x8 block-edge to in-block gradient ratio from which JPEG artefacts are mild, moderate, severe."""

TOLERATED_SUFFIX = "_tolerated"
"""Ends the flag of a problem the reporting tool's measurement tolerates at that grade."""

ANALYSIS_SHORT_SIDE_PX = 512
"""Images are shrunk to this short side before noise and blur are estimated."""
_REBLUR_SIGMA_PX = 2.0
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


class ImageQuality(BaseModel):
    """The four quality measures of one image, with the grade of each problem found."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    noise_sigma_8bit: float
    """Estimated SD of noise in flat regions at the analysis scale, in 8-bit grey levels."""
    blur_sigma_fraction: float
    """Estimated Gaussian blur of the strongest edges, as a fraction of the image's short side."""
    dynamic_range_8bit: float
    """Grey levels between the 1st and 99th percentile of the lit field."""
    blockiness_ratio: float
    """Mean grey step across 8x8 block edges over the mean step inside blocks (1 without JPEG blocks)."""
    grades: dict[QualityProblem, QualityGrade]
    """Each problem found, with its grade; empty for a clean image."""

    @property
    def flags(self) -> list[str]:
        """The problems as quality flags, such as ``blur_moderate``."""
        return self.flags_for({})

    def flags_for(self, tolerates: Mapping[QualityProblem, QualityGrade]) -> list[str]:
        """The problems as quality flags of a tool that ``tolerates`` each problem up to a grade (its
        measurement was shown unchanged there): those end in ``_tolerated`` (``blur_moderate_tolerated``),
        which reports the image's state without widening any uncertainty."""
        out = []
        for problem, grade in self.grades.items():
            limit = tolerates.get(problem)
            tolerated = limit is not None and GRADES.index(grade) <= GRADES.index(limit)
            out.append(f"{problem}_{grade}{TOLERATED_SUFFIX if tolerated else ''}")
        return out

    @property
    def measures(self) -> dict[str, float]:
        """The four measures by name, prefixed ``image_``, for a tool's quality record."""
        return {f"image_{k}": float(v) for k, v in self.model_dump(exclude={"grades"}).items()}


def _grey(pixels: np.ndarray) -> np.ndarray:
    """8-bit-scaled float grey image of a grey or RGB array of any dtype."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[-1] >= 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3:
        a = a.astype(np.float32).mean(axis=-1)
    a = a.astype(np.float32)
    if np.asarray(pixels).dtype != np.uint8:
        finite = np.isfinite(a)
        if not finite.all():
            a = np.where(finite, a, float(a[finite].min()) if finite.any() else 0.0)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return a


def _at_analysis_scale(grey: np.ndarray) -> np.ndarray:
    """The image area-averaged down to ``ANALYSIS_SHORT_SIDE_PX`` on its short side (never enlarged)."""
    h, w = grey.shape
    scale = ANALYSIS_SHORT_SIDE_PX / min(h, w)
    if scale >= 1:
        return grey
    return cv2.resize(
        grey, (max(round(w * scale), 1), max(round(h * scale), 1)), interpolation=cv2.INTER_AREA
    )


def noise_sigma_8bit(grey: np.ndarray) -> float:
    """Noise SD from Immerkaer's Laplacian-difference operator over the flatter half of the
    unclipped pixels (edges and texture would read as noise), at the analysis scale: the pixel noise
    of a large radiograph averages out at the scale its structures are measured."""
    grey = _at_analysis_scale(grey)
    response = np.abs(cv2.filter2D(grey, -1, _IMMERKAER, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))[1:-1, 1:-1]
    inner = grey[1:-1, 1:-1]
    usable = (inner > 8) & (inner < 247)
    if usable.sum() < 100:
        return 0.0
    flat = gradient[usable] <= np.percentile(gradient[usable], 50)
    return float(np.sqrt(np.pi / 2) / 6 * response[usable][flat].mean())


def blur_sigma_fraction(grey: np.ndarray) -> float:
    """Edge blur from the re-blur gradient ratio at the strongest edges: a step blurred by sigma loses
    gradient as sigma / sqrt(sigma^2 + s^2) when blurred again by s."""
    x = cv2.GaussianBlur(_at_analysis_scale(grey), (0, 0), 0.7)

    def gradient(a: np.ndarray) -> np.ndarray:
        return np.hypot(cv2.Sobel(a, cv2.CV_32F, 1, 0), cv2.Sobel(a, cv2.CV_32F, 0, 1))

    g = gradient(x)
    g_again = gradient(cv2.GaussianBlur(x, (0, 0), _REBLUR_SIGMA_PX))
    strongest = g >= np.percentile(g, 99)
    if not (g[strongest] > 0).any():
        return 1.0
    ratio = float(np.median(g[strongest] / np.maximum(g_again[strongest], 1e-6)))
    sigma_px = _REBLUR_SIGMA_PX / np.sqrt(max(ratio * ratio - 1.0, 1e-6))
    return float(sigma_px / min(x.shape))


def dynamic_range_8bit(grey: np.ndarray) -> float:
    """Grey levels between the 1st and 99th percentile of the lit field (the unlit surround left out),
    read at the analysis scale."""
    grey = _at_analysis_scale(grey)
    lit = grey[grey > LIT_LEVEL * np.percentile(grey, 99)]
    lo, hi = np.percentile(lit if lit.size >= 100 else grey, [1, 99])
    return float(hi - lo)


def blockiness_ratio(grey: np.ndarray) -> float:
    """Mean absolute step across 8-pixel block boundaries over the mean step elsewhere, both axes."""
    ratios = []
    for axis in (0, 1):
        if grey.shape[axis] < 17:
            continue
        steps = np.abs(np.diff(grey, axis=axis))
        at_edge = (np.arange(steps.shape[axis]) % 8) == 7
        inside = float(steps.compress(~at_edge, axis=axis).mean())
        ratios.append(float(steps.compress(at_edge, axis=axis).mean()) / max(inside, 1e-3))
    return float(np.mean(ratios)) if ratios else 1.0


def _grade_at_least(value: float, thresholds: tuple[float, float, float]) -> QualityGrade | None:
    found = [g for g, t in zip(GRADES, thresholds, strict=True) if value >= t]
    return found[-1] if found else None


def _grade_below(value: float, thresholds: tuple[float, float, float]) -> QualityGrade | None:
    found = [g for g, t in zip(GRADES, thresholds, strict=True) if value < t]
    return found[-1] if found else None


def assess_image_quality(pixels: np.ndarray) -> ImageQuality:
    """Measure and grade noise, blur, contrast and JPEG blocking of a 2D grey or RGB image."""
    grey = _grey(pixels)
    small = _at_analysis_scale(grey)
    noise = noise_sigma_8bit(small)
    blur = blur_sigma_fraction(small)
    dynamic_range = dynamic_range_8bit(small)
    blocks = blockiness_ratio(grey)
    found: dict[QualityProblem, QualityGrade | None] = {
        "noise": _grade_at_least(noise, NOISE_SIGMA_8BIT_AT),
        "blur": _grade_at_least(blur, BLUR_SIGMA_FRACTION_AT),
        "low_contrast": _grade_below(dynamic_range, DYNAMIC_RANGE_8BIT_BELOW),
        "jpeg_artefacts": _grade_at_least(blocks, BLOCKINESS_AT),
    }
    return ImageQuality(
        noise_sigma_8bit=round(noise, 3),
        blur_sigma_fraction=round(blur, 5),
        dynamic_range_8bit=round(dynamic_range, 1),
        blockiness_ratio=round(blocks, 3),
        grades={k: v for k, v in found.items() if v is not None},
    )


def flagged_quality(flags: tuple[str, ...] | list[str]) -> dict[QualityProblem, QualityGrade]:
    """The image-quality problems among quality flags, each with its worst grade (other flags and those a
    tool tolerates ignored)."""
    found: dict[QualityProblem, QualityGrade] = {}
    for flag in flags:
        name, _, level = flag.rpartition("_")
        if name in _PROBLEMS and level in GRADES:
            problem, grade = cast(QualityProblem, name), cast(QualityGrade, level)
            old = found.get(problem)
            if old is None or GRADES.index(grade) > GRADES.index(old):
                found[problem] = grade
    return found


def worst_grade(quality: dict[QualityProblem, QualityGrade]) -> QualityGrade | None:
    """The most severe grade among flagged problems; None when none is flagged."""
    return max(quality.values(), key=GRADES.index) if quality else None


_PROBLEMS: frozenset[str] = frozenset(get_args(QualityProblem))
