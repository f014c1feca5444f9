"""Image-quality grades and problems: the vocabulary tools report and the aggregators read."""

from __future__ import annotations

from typing import Literal

QualityGrade = Literal["mild", "moderate", "severe"]
"""How much a quality problem is expected to disturb a measurement."""

GRADES: tuple[QualityGrade, ...] = ("mild", "moderate", "severe")
"""Grades from least to most severe."""

QualityProblem = Literal["noise", "blur", "low_contrast", "jpeg_artefacts"]
"""The problems assessed."""
