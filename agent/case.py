"""The Case: one patient study, identified pseudonymously, with its images held by reference."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.agent.images import Dims, ImageFormat, read_image
from dxgraph.errors import CaseError
from dxgraph.traces._artifacts import ArtifactRef, ArtifactStore, save_array

ModalitySource = Literal["declared", "file", "unspecified"]

KNOWN_MODALITIES = ("fundus", "cxr", "ct", "mr", "us")
"""Modality names dxgraph understands."""
KNOWN_SEQUENCES = ("t1", "t1ce", "t2", "flair")
"""MR sequence names dxgraph understands."""
TIMEPOINTS = ("current", "prior")
"""Study timepoints: the study asked about, and an earlier study of the same patient."""
KNOWN_VIEWS = ("PA", "AP", "LL", "RL")
"""Radiograph projections dxgraph records."""


class ImageSpec(BaseModel):
    """One image file to read into a case and what the caller declares about it."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    path: Path
    """Image file, or a folder holding one DICOM series."""
    modality: str | None = None
    """Declared modality; None to take the file's own or the case-wide one."""
    sequence: str | None = None
    """MR sequence: ``t1``, ``t1ce``, ``t2`` or ``flair``."""
    timepoint: Literal["current", "prior"] = "current"
    """``current``, or ``prior`` for an earlier study of the same patient."""
    study_date: str | None = None
    """Date of the study the image belongs to (ISO ``YYYY-MM-DD``), when known."""
    view: str | None = None
    """Declared radiograph projection (``PA``, ``AP``...); None to take the DICOM ViewPosition."""

    @classmethod
    def parse(cls, text: str) -> ImageSpec:
        """``PATH`` or ``KEY=PATH``: KEY is a sequence (``flair=b.nii.gz``), ``prior``, or both (``prior.t1ce=``)."""
        key, sep, rest = text.partition("=")
        if not sep or Path(text).exists():
            return cls(path=Path(text))
        words = key.strip().lower().split(".")
        timepoint: Literal["current", "prior"] = "prior" if words[0] == "prior" else "current"
        if timepoint == "prior":
            words = words[1:]
        if len(words) > 1 or (words and words[0] not in KNOWN_SEQUENCES):
            raise CaseError(
                f"{text!r}: before '=' give a sequence ({', '.join(KNOWN_SEQUENCES)}), 'prior', or"
                " 'prior.<sequence>'"
            )
        return cls(path=Path(rest), sequence=words[0] if words else None, timepoint=timepoint)


class CaseImage(BaseModel):
    """One image of a case, held by reference to its decoded pixels."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    image_id: str
    """Identifier of the image inside its case (``img0``, ``img1``...)."""
    file_name: str
    """Base name of the file it was read from (never the full path)."""
    file_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the file's bytes."""
    format: ImageFormat
    """File format."""
    modality: str | None
    """Modality (``fundus``, ``cxr``, ``ct``, ``mr``...), or None when nobody said."""
    modality_source: ModalitySource
    """Who said what the modality is: the user, the file's own header, or nobody."""
    role: str = "primary"
    """Role of the image in the study, such as ``primary`` or ``prior``."""
    sequence: str | None = None
    """MR sequence (``t1``, ``t1ce``, ``t2``, ``flair``), when declared."""
    timepoint: Literal["current", "prior"] = "current"
    """``current``, or ``prior`` for an image of an earlier study of the same patient."""
    study_date: str | None = None
    """Date of the image's study (ISO), when known."""
    view: str | None = None
    """Projection of a radiograph (``PA``, ``AP``...), declared or from the DICOM ViewPosition."""
    dims: Dims
    """Dimensionality: ``2d``, ``3d`` or ``3d+t``."""
    shape: tuple[int, ...]
    """Shape of the decoded pixel array."""
    spacing_mm: tuple[float, ...] | None
    """Physical pixel/voxel spacing in mm per spatial axis, when known."""
    pixels: ArtifactRef
    """The decoded pixel array, stored content-addressed."""
    implausible: dict[str, str] = {}
    """Modalities the pixels do not look like (cheap image statistics), each with the reason: the
    planner measures nothing of those modalities on this image."""


class Case(BaseModel):
    """One patient study and the question asked about it."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    case_id: str
    """Pseudonymous identifier; by default derived from the image hashes."""
    question: str
    """The diagnostic question or task, such as ``glaucoma``."""
    images: tuple[CaseImage, ...]
    """The study's images."""
    clinical_text: str | None = None
    """Optional free-text clinical information."""
    laterality: Literal["OD", "OS"] | None = None
    """Which eye, for ophthalmic images, when known."""

    @property
    def priors(self) -> tuple[CaseImage, ...]:
        """The images of earlier studies of the same patient."""
        return tuple(im for im in self.images if im.timepoint == "prior")

    @property
    def content_sha256(self) -> str:
        """sha256 over the sorted image file hashes: identifies the study's pixels."""
        return _content_sha256(self.images)


def _content_sha256(images: tuple[CaseImage, ...] | list[CaseImage]) -> str:
    joined = "".join(sorted(im.file_sha256 for im in images))
    return hashlib.sha256(joined.encode()).hexdigest()


def load_case(
    question: str,
    image_paths: Sequence[str | Path | ImageSpec],
    artifacts: ArtifactStore,
    *,
    modality: str | None = None,
    role: str = "primary",
    clinical_text: str | None = None,
    laterality: Literal["OD", "OS"] | None = None,
    case_id: str | None = None,
) -> Case:
    """Read the images of a study, store their pixels in ``artifacts`` and return the Case."""
    if not image_paths:
        raise CaseError("a case needs at least one image")
    if modality is not None and modality not in KNOWN_MODALITIES:
        raise CaseError(f"unknown modality {modality!r}; known: {', '.join(KNOWN_MODALITIES)}")
    specs = [p if isinstance(p, ImageSpec) else ImageSpec(path=Path(p)) for p in image_paths]
    _check_specs(specs)
    images = []
    for i, spec in enumerate(specs):
        path = spec.path
        decoded = read_image(path)
        declared = spec.modality or modality
        if declared is not None:
            mod, source = declared, "declared"
        elif decoded.modality is not None:
            mod, source = decoded.modality, "file"
        else:
            mod, source = None, "unspecified"
        images.append(
            CaseImage(
                image_id=f"img{i}",
                file_name=Path(path).name,
                file_sha256=decoded.file_sha256,
                format=decoded.format,
                modality=mod,
                modality_source=source,
                role="prior" if spec.timepoint == "prior" else role,
                sequence=spec.sequence,
                timepoint=spec.timepoint,
                study_date=spec.study_date,
                view=spec.view or decoded.view,
                dims=decoded.dims,
                shape=tuple(int(s) for s in decoded.array.shape),
                spacing_mm=decoded.spacing_mm,
                pixels=save_array(artifacts, decoded.array, "image"),
                implausible=implausible_modalities(decoded.array, decoded.dims, mod),
            )
        )
    return Case(
        case_id=case_id or f"case-{_content_sha256(images)[:12]}",
        question=question,
        images=tuple(images),
        clinical_text=clinical_text,
        laterality=laterality,
    )


MODALITIES_BY_DIMS: dict[str, tuple[str, ...]] = {
    "2d": ("fundus", "cxr"),
    "3d": ("ct", "mr"),
    "3d+t": ("mr",),
}
"""The modalities an image of each dimensionality could be taken for, when nobody says which it is."""


def implausible_modalities(pixels: Any, dims: str, modality: str | None) -> dict[str, str]:
    """The modalities the pixels do not look like, with reasons: the declared one, or each candidate."""
    from dxgraph.agent.modality_check import content_mismatch

    candidates = (modality,) if modality is not None else MODALITIES_BY_DIMS.get(dims, ())
    reasons = {m: content_mismatch(pixels, dims, m) for m in candidates}
    return {m: r for m, r in reasons.items() if r is not None}


def _check_specs(specs: list[ImageSpec]) -> None:
    """CaseError for declarations dxgraph does not understand, or two images claiming one slot."""
    seen: dict[tuple[str | None, str], Path] = {}
    for spec in specs:
        if spec.modality is not None and spec.modality not in KNOWN_MODALITIES:
            raise CaseError(
                f"{spec.path}: unknown modality {spec.modality!r}; known: {', '.join(KNOWN_MODALITIES)}"
            )
        if spec.sequence is not None and spec.sequence not in KNOWN_SEQUENCES:
            raise CaseError(
                f"{spec.path}: unknown sequence {spec.sequence!r}; known: {', '.join(KNOWN_SEQUENCES)}"
            )
        if spec.view is not None and spec.view not in KNOWN_VIEWS:
            raise CaseError(f"{spec.path}: unknown view {spec.view!r}; known: {', '.join(KNOWN_VIEWS)}")
        if spec.sequence is not None:
            slot = (spec.sequence, spec.timepoint)
            if slot in seen:
                raise CaseError(
                    f"two {spec.timepoint} {spec.sequence} images ({seen[slot].name}, {spec.path.name}); give one"
                )
            seen[slot] = spec.path
