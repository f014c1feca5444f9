"""The Case: one patient study, identified pseudonymously, with its images held by reference."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.agent.images import Dims, ImageFormat, read_image
from dxgraph.errors import CaseError
from dxgraph.traces._artifacts import ArtifactRef, ArtifactStore, save_array

ModalitySource = Literal["declared", "file", "unspecified"]

KNOWN_MODALITIES = ("fundus", "cxr", "ct", "mr", "us")
"""Modality names dxgraph understands."""


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
    dims: Dims
    """Dimensionality: ``2d``, ``3d`` or ``3d+t``."""
    shape: tuple[int, ...]
    """Shape of the decoded pixel array."""
    spacing_mm: tuple[float, ...] | None
    """Physical pixel/voxel spacing in mm per spatial axis, when known."""
    pixels: ArtifactRef
    """The decoded pixel array, stored content-addressed."""


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
    def content_sha256(self) -> str:
        """sha256 over the sorted image file hashes: identifies the study's pixels."""
        return _content_sha256(self.images)


def _content_sha256(images: tuple[CaseImage, ...] | list[CaseImage]) -> str:
    joined = "".join(sorted(im.file_sha256 for im in images))
    return hashlib.sha256(joined.encode()).hexdigest()


def load_case(
    question: str,
    image_paths: list[str | Path],
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
    images = []
    for i, path in enumerate(image_paths):
        decoded = read_image(path)
        if modality is not None:
            mod, source = modality, "declared"
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
                role=role,
                dims=decoded.dims,
                shape=tuple(int(s) for s in decoded.array.shape),
                spacing_mm=decoded.spacing_mm,
                pixels=save_array(artifacts, decoded.array, "image"),
            )
        )
    return Case(
        case_id=case_id or f"case-{_content_sha256(images)[:12]}",
        question=question,
        images=tuple(images),
        clinical_text=clinical_text,
        laterality=laterality,
    )
