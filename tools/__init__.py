"""Tools: typed functions that turn images into quantitative evidence, and the registry that holds them.

Importing this package, or any tool module, registers nothing and loads no weights. ``@tool`` declares a
tool; ``load_plugins()`` registers dxgraph's own tool modules (``DEFAULT_PLUGINS``) and the installed
plugins' (entry-point group ``dxgraph.tools``) into the default registry, once; ``default_tools()``
returns that registry loaded. Also here: the context a tool runs in (artifacts, seed, device), batching
across concurrent runs, locked weights files and their loading, and the measurement geometry the tools
share (also used to compute phantoms' truth).
"""

from dxgraph.core import ArtifactRef, ImageRef, RegionOfInterest, ToolModel, select_image
from dxgraph.tools._batching import BatchingDispatcher, BatchStats, ToolCaller
from dxgraph.tools._context import (
    ToolContext,
    current_context,
    load_artifact,
    load_image,
    load_volume,
    save_artifact,
    tool_context,
)
from dxgraph.tools._cup_disc_geometry import (
    bbox_height_px,
    narrowest_rim_to_disc_ratio,
    nasal_temporal,
    rim_profile,
    sector_rim_widths_px,
)
from dxgraph.tools._lesion_geometry import (
    NORMAL_NODE_SHORT_AXIS_MM,
    LesionGeometry,
    is_unequivocal_new,
    recist_category,
    recist_diameter_mm,
    select_targets,
)
from dxgraph.tools._mask_geometry import (
    cardiothoracic_ratio,
    centroid_mm,
    column_range,
    recist_diameters,
    volume_ml,
)
from dxgraph.tools._nodule_segmentation import average_diameter_mm, segment_nodules, size_category
from dxgraph.tools._plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    NO_PLUGINS_ENV,
    LoadedPlugin,
    default_tools,
    load_plugins,
)
from dxgraph.tools._registry import (
    DEFAULT_TOOL_TIMEOUT_S,
    METHODS,
    OUT_OF_DOMAIN_FLAG,
    PLAUSIBLE_SPACING_MM,
    TIMEOUT_ENV,
    ErrorModel,
    Method,
    ToolRegistry,
    ToolSpec,
    default_timeout_s,
    make_spec,
    spec_of,
    tool,
)
from dxgraph.tools._torch_runtime import (
    cached_model,
    clear_model_cache,
    load_model_file,
    load_packaged_model,
    pick_device,
    save_model_file,
)
from dxgraph.tools._weights import (
    PACKAGED_LOCK,
    PACKAGED_WEIGHTS_DIR,
    WeightsEntry,
    WeightsError,
    WeightsLock,
    read_lock,
    record_weights,
    sha256_of_path,
    verify_weights,
)

__all__ = [
    "DEFAULT_PLUGINS",
    "DEFAULT_TOOL_TIMEOUT_S",
    "ENTRY_POINT_GROUP",
    "METHODS",
    "NORMAL_NODE_SHORT_AXIS_MM",
    "NO_PLUGINS_ENV",
    "OUT_OF_DOMAIN_FLAG",
    "PACKAGED_LOCK",
    "PACKAGED_WEIGHTS_DIR",
    "PLAUSIBLE_SPACING_MM",
    "TIMEOUT_ENV",
    "ArtifactRef",
    "BatchStats",
    "BatchingDispatcher",
    "ErrorModel",
    "ImageRef",
    "LesionGeometry",
    "LoadedPlugin",
    "Method",
    "RegionOfInterest",
    "ToolCaller",
    "ToolContext",
    "ToolModel",
    "ToolRegistry",
    "ToolSpec",
    "WeightsEntry",
    "WeightsError",
    "WeightsLock",
    "average_diameter_mm",
    "bbox_height_px",
    "cached_model",
    "cardiothoracic_ratio",
    "centroid_mm",
    "clear_model_cache",
    "column_range",
    "current_context",
    "default_timeout_s",
    "default_tools",
    "is_unequivocal_new",
    "load_artifact",
    "load_image",
    "load_model_file",
    "load_packaged_model",
    "load_plugins",
    "load_volume",
    "make_spec",
    "narrowest_rim_to_disc_ratio",
    "nasal_temporal",
    "pick_device",
    "read_lock",
    "recist_category",
    "recist_diameter_mm",
    "recist_diameters",
    "record_weights",
    "rim_profile",
    "save_artifact",
    "save_model_file",
    "sector_rim_widths_px",
    "segment_nodules",
    "select_image",
    "select_targets",
    "sha256_of_path",
    "size_category",
    "spec_of",
    "tool",
    "tool_context",
    "verify_weights",
    "volume_ml",
]
