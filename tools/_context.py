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
