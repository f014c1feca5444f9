"""The Case: one patient study, identified pseudonymously, with its images held by reference."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from dxgraph.core._artifacts import ArtifactRef
from dxgraph.core._images import Dims, ImageFormat
from dxgraph.errors import CaseError

ModalitySource = Literal["declared", "file", "unspecified"]

KNOWN_MODALITIES = ("fundus", "cxr", "ct", "mr", "us")
"""Modality names dxgraph understands."""
KNOWN_SEQUENCES = ("t1", "t1ce", "t2", "flair")
"""MR sequence names dxgraph understands."""
TIMEPOINTS = ("current", "prior")
"""Study timepoints: the study asked about, and an earlier study of the same patient."""
KNOWN_VIEWS = ("PA", "AP", "LL", "RL")
"""Radiograph projections dxgraph records."""


class ImageSource(BaseModel):
    """Where an image was retrieved from, when not from a local file: the PACS and the DICOM UIDs it read."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    pacs_url: str
    """DICOMweb base URL of the PACS (never with credentials)."""
    study_uid: str
    """StudyInstanceUID of the study."""
    series_uid: str
    """SeriesInstanceUID of the series."""
    sop_instance_uids: tuple[str, ...]
    """SOPInstanceUIDs of the instances read, in the order retrieved."""


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
    source: ImageSource | None = None
    """Where the file was retrieved from (a PACS), recorded with the image; None for a local file."""

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
    modality_doubt: str | None = None
    """What the modality guard doubted about an image whose modality the user stated; it is measured anyway."""
    source: ImageSource | None = None
    """Where the image was retrieved from (a PACS and the DICOM UIDs); None for a local file."""

    @model_serializer(mode="wrap")
    def _without_absent_source(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A local image serialises as before ``source`` existed (no ``"source": null``)."""
        data = handler(self)
        if self.source is None and isinstance(data, dict):
            data.pop("source", None)
        return data


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
        return content_sha256(self.images)


def content_sha256(images: tuple[CaseImage, ...] | list[CaseImage]) -> str:
    """sha256 over the sorted file hashes of the images: identifies a study's pixels."""
    joined = "".join(sorted(im.file_sha256 for im in images))
    return hashlib.sha256(joined.encode()).hexdigest()
