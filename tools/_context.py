"""The ambient context a tool runs in: where artifacts go, the seed and the device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from dxgraph.core import ArtifactRef, ArtifactStore, ImageRef, MemoryArtifacts, load_array, save_array
from dxgraph.errors import ToolError


@dataclass(frozen=True)
class ToolContext:
    """What the dispatcher gives every tool call."""

    artifacts: ArtifactStore
    """Where tools read input pixels and write masks and crops."""
    seed: int = 0
    """Seed for any randomness a tool uses."""
    device: str = "cpu"
    """Device for model-backed tools: ``cpu`` or ``cuda``."""


_CURRENT: ContextVar[ToolContext | None] = ContextVar("dxgraph_tool_context", default=None)


@contextlib.contextmanager
def tool_context(ctx: ToolContext) -> Iterator[ToolContext]:
    """Make ctx the context of every tool called inside the block."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def current_context() -> ToolContext:
    """The context of the running tool call; a throwaway in-memory one outside any run."""
    ctx = _CURRENT.get()
    if ctx is None:
        ctx = ToolContext(artifacts=MemoryArtifacts())
        _CURRENT.set(ctx)
    return ctx


def load_image(ref: ImageRef) -> np.ndarray:
    """The pixel array of a case image."""
    return load_array(current_context().artifacts, ref.pixels)


def load_volume(ref: ImageRef, what: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 3D (z, y, x) image as float32 with its voxel spacing in mm; ToolError (``not_3d_image``,
    ``no_spacing``) naming ``what`` when it is not a volume or has no usable spacing."""
    arr = load_image(ref)
    if arr.ndim != 3:
        raise ToolError(
            f"{what} must be a 3D (z, y, x) volume, got shape {arr.shape}", flags=("not_3d_image",)
        )
    sp = ref.spacing_mm
    if sp is None or len(sp) != 3 or min(sp) <= 0:
        raise ToolError(
            f"{what} has no usable voxel spacing; measuring in mm needs it", flags=("no_spacing",)
        )
    return arr.astype(np.float32, copy=False), (float(sp[0]), float(sp[1]), float(sp[2]))


def load_artifact(ref: ArtifactRef) -> np.ndarray:
    """The array behind an artifact reference (masks come back as bool)."""
    return load_array(current_context().artifacts, ref)


def save_artifact(arr: np.ndarray, kind: str) -> ArtifactRef:
    """Store an array produced by a tool (``mask``, ``crop``...) and return its reference."""
    return save_array(current_context().artifacts, arr, kind)
