"""The tool listing, cached: ``dxgraph tools list`` without importing every tool module each time.

Building the registry imports every tool module, which defines dozens of pydantic models (about 0.1 s);
the listing itself is a few hundred bytes. It is cached in ``$DXGRAPH_CACHE_DIR`` (default
``$XDG_CACHE_HOME/dxgraph``, else ``~/.cache/dxgraph``) under a fingerprint of everything the registry is
built from: dxgraph's version and the bytes of every module of the installed ``dxgraph`` package, the
plugin switch (``$DXGRAPH_NO_PLUGINS``) and every ``dxgraph.tools`` entry point with its distribution's
name and version. An editable plugin distribution (its code can change under the same version) makes the
fingerprint unknowable: then, as when the cache cannot be written, the registry is built every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import dxgraph
from dxgraph._version import __version__

CACHE_DIR_ENV = "DXGRAPH_CACHE_DIR"
"""Environment variable naming the folder of dxgraph's caches."""
ENTRY_POINT_GROUP = "dxgraph.tools"
"""The plugins' entry-point group (as ``dxgraph.tools.ENTRY_POINT_GROUP``, read without importing tools)."""
LISTING_FORMAT = 1
"""Version of the cached listing's layout."""


def cache_dir() -> Path:
    """``$DXGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/dxgraph``, else ``~/.cache/dxgraph``."""
    given = os.environ.get(CACHE_DIR_ENV, "").strip()
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dxgraph"


def _package_sources() -> Iterator[Path]:
    """Every module of the dxgraph package: the root's and those of its subpackages (folders with an
    ``__init__.py``; a source checkout's tests, benchmarks and virtual environment are not packages)."""
    root = Path(dxgraph.__file__).parent
    todo = [root]
    while todo:
        folder = todo.pop()
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and not entry.name.startswith(".") and (entry / "__init__.py").exists():
                todo.append(entry)
            elif entry.suffix in (".py", ".pyi"):
                yield entry


def _editable(dist: metadata.Distribution) -> bool:
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    return bool(direct.get("dir_info", {}).get("editable"))


def registry_fingerprint() -> str | None:
    """sha256 of everything the default registry is built from; None when that cannot be known."""
    h = hashlib.sha256(f"{LISTING_FORMAT} {__version__} {os.environ.get('DXGRAPH_NO_PLUGINS', '')}".encode())
    root = Path(dxgraph.__file__).parent
    for path in _package_sources():
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = ep.dist
        if dist is None or _editable(dist):
            return None
        h.update(f"{ep.name}={ep.value} {dist.name} {dist.version}\0".encode())
    return h.hexdigest()


def cached_listing(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The listing ``build()`` gives, read from the cache when the fingerprint matches, else built and stored."""
    key = registry_fingerprint()
    path = cache_dir() / f"tools-{key}.json"
    if key is not None:
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    listing = build()
    if key is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
                json.dump(listing, f)
            os.replace(f.name, path)  # whole or not at all: a concurrent reader never sees half a file
            for stale in path.parent.glob("tools-*.json"):
                if stale != path:
                    stale.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only home: the listing is built every time
    return listing
