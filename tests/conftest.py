"""Shared fixtures: temporary stores, images written to disk, and the real data sets when present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dxgraph.testing.postgres import PG_ENV, pg_base_url, pg_schema_url

from _helpers import SHARED_DATA


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A fresh SQLite trace store path."""
    return str(tmp_path / "traces.db")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL store: a schema of its own, dropped afterwards (skipped without
    ``$DXGRAPH_TEST_PG_URL``, a failure under ``CI=true``)."""
    base = pg_base_url()
    if base is None:
        reason = f"PostgreSQL tests need ${PG_ENV} (run: bash .ci/postgres.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with pg_schema_url(base) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, db: str) -> str:
    """A fresh, empty store on each backend: a SQLite file, or a PostgreSQL schema (``pg_url``)."""
    return db if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


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
