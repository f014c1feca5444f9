"""Types that tools exchange: images and masks by reference, regions of interest."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.agent.images import Dims
from dxgraph.traces._artifacts import ArtifactRef


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


class RegionOfInterest(BaseModel):
    """A circular region found in a 2D image, such as the optic disc."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    label: str
    """What the region is, such as ``optic_disc``."""
    center_xy: tuple[float, float]
    """Centre in pixel coordinates (x = column, y = row)."""
    radius_px: float = Field(gt=0)
    """Radius in pixels."""
