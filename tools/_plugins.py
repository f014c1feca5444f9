"""Loading tools: the built-in modules and the ``dxgraph.tools`` entry points, through the same door.

Importing a tool module registers nothing: its ``@tool`` functions carry their specs. ``load_plugins``
imports the modules of ``DEFAULT_PLUGINS`` (dxgraph's own tools) and every entry point of the
``dxgraph.tools`` group, and registers the tools they define. A plugin distribution declares, in its
pyproject.toml::

    [project.entry-points."dxgraph.tools"]
    my_tools = "my_package.tools"            # a module defining @tool functions

An entry point may also name one ``@tool`` function or a ``ToolSpec``. Set ``DXGRAPH_NO_PLUGINS=1``
to load the built-in tools only.
"""

from __future__ import annotations

import importlib
import os
import threading
import types
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from dxgraph.errors import RegistrationError
from dxgraph.tools._registry import ToolRegistry, ToolSpec, default_registry

ENTRY_POINT_GROUP = "dxgraph.tools"
"""The entry-point group plugins register their tools under."""
DEFAULT_PLUGINS: tuple[str, ...] = (
    "dxgraph.tools.brain_tumour",
    "dxgraph.tools.cardiac_cine",
    "dxgraph.tools.clinical_risk",
    "dxgraph.tools.crop",
    "dxgraph.tools.ct_nodule",
    "dxgraph.tools.ct_nodule_size",
    "dxgraph.tools.ct_nodule_unet",
    "dxgraph.tools.cxr",
    "dxgraph.tools.fundus",
    "dxgraph.tools.fundus_unet",
    "dxgraph.tools.geometry",
    "dxgraph.tools.recist",
)
"""The modules of dxgraph's own tools, loaded like plugins."""
NO_PLUGINS_ENV = "DXGRAPH_NO_PLUGINS"
"""Setting this environment variable to ``1`` loads the built-in tools only."""


@dataclass(frozen=True)
class LoadedPlugin:
    """One plugin module or entry point and the tools it brought."""

    name: str
    """Entry point name, or the built-in module's name."""
    value: str
    """What it points at, ``module`` or ``module:attr``."""
    distribution: str | None
    """The installed distribution that declares it (``dxgraph`` for the built-in tools)."""
    tools: tuple[str, ...]
    """Names of the tools it registered."""


_loaded: list[LoadedPlugin] | None = None
_lock = threading.Lock()


def _specs_in(obj: Any) -> list[ToolSpec]:
    if isinstance(obj, ToolSpec):
        return [obj]
    spec = getattr(obj, "__dxgraph_tool__", None)
    if isinstance(spec, ToolSpec):
        return [spec]
    if isinstance(obj, types.ModuleType):
        found = [getattr(v, "__dxgraph_tool__", None) for v in vars(obj).values()]
        return [s for s in found if isinstance(s, ToolSpec) and s.fn.__module__ == obj.__name__]
    return []


def _register(registry: ToolRegistry, where: str, specs: list[ToolSpec]) -> None:
    if not specs:
        raise RegistrationError(f"{where} provides no @tool function")
    for spec in specs:
        try:
            registry.register(spec)
        except RegistrationError as e:
            raise RegistrationError(f"{where}: {e}") from None


def _load_builtins(registry: ToolRegistry) -> list[LoadedPlugin]:
    loaded = []
    for module_name in DEFAULT_PLUGINS:
        specs = _specs_in(importlib.import_module(module_name))
        _register(registry, f"built-in module {module_name}", specs)
        loaded.append(
            LoadedPlugin(module_name.rpartition(".")[2], module_name, "dxgraph", tuple(s.name for s in specs))
        )
    return loaded


def _load_entry_points(registry: ToolRegistry) -> list[LoadedPlugin]:
    if os.environ.get(NO_PLUGINS_ENV, "").strip() not in ("", "0"):
        return []
    loaded = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else None
        where = f"plugin {ep.name!r} ({ep.value}" + (f", from {dist})" if dist else ")")
        try:
            obj = ep.load()
        except RegistrationError as e:
            raise RegistrationError(f"{where}: {e}") from None
        except Exception as e:  # noqa: BLE001 -- a broken plugin must name itself, not crash dxgraph
            raise RegistrationError(
                f"{where} failed to import: {type(e).__name__}: {e} (set {NO_PLUGINS_ENV}=1 to skip plugins)"
            ) from None
        specs = _specs_in(obj)
        _register(registry, where, specs)
        loaded.append(LoadedPlugin(ep.name, ep.value, dist, tuple(s.name for s in specs)))
    return loaded


def load_plugins(registry: ToolRegistry | None = None) -> list[LoadedPlugin]:
    """Register the built-in tools and every installed plugin's tools; RegistrationError names a bad plugin.

    Into the default registry (no ``registry``) this happens once per process: later calls return what
    the first loaded. Into another registry it happens on every call.
    """
    global _loaded
    if registry is not None and registry is not default_registry:
        return _load_builtins(registry) + _load_entry_points(registry)
    with _lock:
        if _loaded is None:
            _loaded = _load_builtins(default_registry) + _load_entry_points(default_registry)
        return list(_loaded)


def default_tools() -> ToolRegistry:
    """The default registry, with the built-in tools and the installed plugins loaded (once)."""
    load_plugins()
    return default_registry
