"""The ambient context a tool runs in: where artifacts go, the seed and the device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from dxgraph.errors import ToolError
from dxgraph.tools._types import ImageRef
from dxgraph.traces._artifacts import ArtifactRef, ArtifactStore, MemoryArtifacts, load_array, save_array


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


def as_rgb8(pixels: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of a 2D image: grey is replicated, 16-bit and float are rescaled.

    Raises ToolError for arrays that are not a 2D grey or RGB image.
    """
    a = pixels
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ToolError(
            f"expected a 2D grey or RGB image, got an array of shape {a.shape}", flags=("not_2d_image",)
        )
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return a
