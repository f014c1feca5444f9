"""Phantom cases written to files: what the demo and the end-to-end tests diagnose, with their truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PhantomImage:
    """One image file of a phantom case and how the case declares it."""

    path: Path
    """The written file (or folder, for a DICOM series)."""
    modality: str
    """Modality to declare, such as ``cxr``, ``ct`` or ``mr``."""
    sequence: str | None = None
    """MR sequence (``t1``, ``t1ce``, ``t2``, ``flair``), when it matters."""
    timepoint: str = "current"
    """``current``, or ``prior`` for an earlier study of the same patient."""


@dataclass(frozen=True)
class PhantomCase:
    """A phantom study on disk, the question to ask of it and the known truth."""

    question: str
    """The diagnostic question, such as ``cardiomegaly``."""
    images: tuple[PhantomImage, ...]
    """The study's image files."""
    truth: dict[str, float | bool | str] = field(default_factory=dict)
    """True values by quantity (tool output field) name."""
    clinical_text: str | None = None
    """Clinical information to give with the case."""
    description: str = ""
    """One line saying what the phantom shows."""
    name: str = ""
    """Short name for file names and tables (the demo numbers unnamed cases)."""
    laterality: str | None = None
    """Eye (OD/OS), for ophthalmic cases."""
