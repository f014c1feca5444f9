"""Image types shared by every layer: dimensionality, file format, the tool-facing image reference, regions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from dxgraph.core._artifacts import ArtifactRef

ImageFormat = Literal["png", "jpeg", "dicom", "nifti"]
"""File formats dxgraph reads."""
Dims = Literal["2d", "3d", "3d+t"]
"""Spatial-temporal dimensionality of an image."""


class ToolModel(BaseModel):
    """Base for tool inputs and outputs: field docstrings become schema descriptions an LLM reads."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class ImageRef(BaseModel):
    """A case image as a tool receives it: pixels by reference, with modality and spacing."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    image_id: str
    """Identifier of the image in its case."""
    pixels: ArtifactRef
    """The decoded pixel array."""
    modality: str | None
    """Modality, or None when nobody said."""
    dims: Dims
    """Dimensionality."""
    spacing_mm: tuple[float, ...] | None = None
    """Physical spacing in mm per spatial axis, when known."""
    sequence: str | None = None
    """MR sequence (``t1``, ``t1ce``, ``t2``, ``flair``), when the case says."""
    timepoint: str = "current"
    """``current``, or ``prior`` for an image of an earlier study of the same patient."""
    view: str | None = None
    """Projection of a radiograph (``PA``, ``AP``, ``LL``), when known."""


SELECT_SEQUENCE = "image_sequence"
"""Key, in an image input field's ``json_schema_extra``, of the MR sequence the field wants."""
SELECT_TIMEPOINT = "image_timepoint"
"""Key, in an image input field's ``json_schema_extra``, of the study timepoint the field wants."""


def select_image(*, sequence: str | None = None, timepoint: str = "current") -> JsonDict:
    """``json_schema_extra`` for an image input field that wants one sequence and/or timepoint.

    ``Field(json_schema_extra=select_image(sequence="flair"))`` makes the planner bind the field to the
    case's FLAIR image; ``select_image(timepoint="prior")`` to the image of the earlier study.
    """
    out: JsonDict = {SELECT_TIMEPOINT: timepoint}
    if sequence is not None:
        out[SELECT_SEQUENCE] = sequence
    return out


def image_selection(field_info: object) -> tuple[str | None, str]:
    """The (sequence, timepoint) an image input field asks for (None, ``current`` when it says nothing)."""
    extra = getattr(field_info, "json_schema_extra", None)
    if not isinstance(extra, dict):
        return None, "current"
    seq = extra.get(SELECT_SEQUENCE)
    return (str(seq) if seq is not None else None), str(extra.get(SELECT_TIMEPOINT, "current"))


class RegionOfInterest(BaseModel):
    """A circular region found in a 2D image, such as the optic disc."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    label: str
    """What the region is, such as ``optic_disc``."""
    center_xy: tuple[float, float]
    """Centre in pixel coordinates (x = column, y = row)."""
    radius_px: float = Field(gt=0)
    """Radius in pixels."""
