"""Shared fixtures: temporary stores, images written to disk, and the real data sets when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers import SHARED_DATA


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A fresh SQLite trace store path."""
    return str(tmp_path / "traces.db")


@pytest.fixture(autouse=True)
def _isolated_default_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test writes into the user's default trace store, or reads or writes the user's caches."""
    monkeypatch.setenv("DXGRAPH_DB", str(tmp_path_factory.mktemp("default-store") / "traces.db"))
    monkeypatch.setenv("DXGRAPH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def drishti() -> Path:
    """The Drishti-GS1 development set, or a skip saying where it was looked for."""
    folder = SHARED_DATA / "fundus_drishti"
    if not (folder / "cases.csv").exists():
        pytest.skip(f"real fundus set not found at {folder} (set DXGRAPH_SHARED_DATA)")
    return folder
