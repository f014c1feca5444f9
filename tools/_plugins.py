"""Third-party tools: discovered through the ``dxgraph.tools`` entry-point group.

A plugin distribution declares, in its pyproject.toml::

    [project.entry-points."dxgraph.tools"]
    my_tools = "my_package.tools"            # a module whose @tool functions register on import

An entry point may also name one ``@tool`` function or a ``ToolSpec``. Set ``DXGRAPH_NO_PLUGINS=1``
to start without any plugin.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from dxgraph.errors import RegistrationError
from dxgraph.tools._registry import ToolRegistry, ToolSpec

ENTRY_POINT_GROUP = "dxgraph.tools"
"""The entry-point group plugins register their tools under."""


@dataclass(frozen=True)
class LoadedPlugin:
    """One entry point and the tools it brought."""

    name: str
    """Entry point name."""
    value: str
    """What it points at, ``module`` or ``module:attr``."""
    distribution: str | None
    """The installed distribution that declares it."""
    tools: tuple[str, ...]
    """Names of the tools it registered."""


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


def load_plugins(registry: ToolRegistry) -> list[LoadedPlugin]:
    """Import every ``dxgraph.tools`` entry point and register its tools; RegistrationError names the plugin."""
    if os.environ.get("DXGRAPH_NO_PLUGINS", "").strip() not in ("", "0"):
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
                f"{where} failed to import: {type(e).__name__}: {e} (set DXGRAPH_NO_PLUGINS=1 to skip plugins)"
            ) from None
        if isinstance(obj, types.ModuleType) and getattr(obj.__spec__, "_initializing", False):
            continue  # the plugin module is importing dxgraph.tools itself: its @tool calls will register it
        specs = _specs_in(obj)
        if not specs:
            raise RegistrationError(f"{where} provides no @tool function")
        for spec in specs:
            try:
                registry.register(spec)
            except RegistrationError as e:
                raise RegistrationError(f"{where}: {e}") from None
        loaded.append(LoadedPlugin(ep.name, ep.value, dist, tuple(s.name for s in specs)))
    return loaded
