"""Tools: typed functions that turn images into quantitative evidence, and their registry.

Importing this package registers the built-in tools into ``default_registry``.
"""

# built-in tools register themselves on import
from dxgraph.tools import crop as _crop  # noqa: F401
from dxgraph.tools import fundus as _fundus  # noqa: F401
from dxgraph.tools._context import (
    ToolContext,
    current_context,
    load_artifact,
    load_image,
    save_artifact,
    tool_context,
)
from dxgraph.tools._registry import ToolRegistry, ToolSpec, default_registry, make_spec, tool
from dxgraph.tools._types import ImageRef, RegionOfInterest, ToolModel

__all__ = [
    "ImageRef",
    "RegionOfInterest",
    "ToolContext",
    "ToolModel",
    "ToolRegistry",
    "ToolSpec",
    "current_context",
    "default_registry",
    "load_artifact",
    "load_image",
    "make_spec",
    "save_artifact",
    "tool",
    "tool_context",
]
