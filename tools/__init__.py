"""Tools: typed functions that turn images into quantitative evidence, and their registry.

Importing this package registers the built-in tools into ``default_registry``.
"""

# built-in tools register themselves on import
from dxgraph.tools import brain_tumour as _brain_tumour  # noqa: F401
from dxgraph.tools import cardiac_cine as _cardiac_cine  # noqa: F401
from dxgraph.tools import clinical_risk as _clinical_risk  # noqa: F401
from dxgraph.tools import crop as _crop  # noqa: F401
from dxgraph.tools import ct_nodule as _ct_nodule  # noqa: F401
from dxgraph.tools import ct_nodule_size as _ct_nodule_size  # noqa: F401
from dxgraph.tools import ct_nodule_unet as _ct_nodule_unet  # noqa: F401
from dxgraph.tools import cxr as _cxr  # noqa: F401
from dxgraph.tools import fundus as _fundus  # noqa: F401
from dxgraph.tools import fundus_unet as _fundus_unet  # noqa: F401
from dxgraph.tools import geometry as _geometry  # noqa: F401
from dxgraph.tools import recist as _recist  # noqa: F401
from dxgraph.tools._context import (
    ToolContext,
    current_context,
    load_artifact,
    load_image,
    save_artifact,
    tool_context,
)
from dxgraph.tools._plugins import ENTRY_POINT_GROUP, LoadedPlugin, load_plugins
from dxgraph.tools._registry import ToolRegistry, ToolSpec, default_registry, make_spec, tool
from dxgraph.tools._types import ImageRef, RegionOfInterest, ToolModel, select_image
from dxgraph.tools._weights import WeightsEntry, WeightsError, record_weights, verify_weights

__all__ = [
    "ENTRY_POINT_GROUP",
    "ImageRef",
    "LoadedPlugin",
    "RegionOfInterest",
    "ToolContext",
    "ToolModel",
    "ToolRegistry",
    "ToolSpec",
    "WeightsEntry",
    "WeightsError",
    "current_context",
    "default_registry",
    "load_artifact",
    "load_image",
    "load_plugins",
    "make_spec",
    "plugins",
    "record_weights",
    "save_artifact",
    "select_image",
    "tool",
    "tool_context",
    "verify_weights",
]

plugins: list[LoadedPlugin] = load_plugins(default_registry)
"""Entry-point plugins loaded into the default registry when this package was imported."""
