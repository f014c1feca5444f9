"""A PostgreSQL trace store of its own for a test or a benchmark: a fresh schema, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

PG_ENV = "DXGRAPH_TEST_PG_URL"
"""Environment variable holding a PostgreSQL SQLAlchemy URL (``bash .ci/postgres.sh`` prints one)."""


def pg_base_url() -> str | None:
    """The PostgreSQL URL for tests and benchmarks, or None when ``$DXGRAPH_TEST_PG_URL`` is not set."""
    return os.environ.get(PG_ENV) or None


@contextmanager
def pg_schema_url(base_url: str) -> Iterator[str]:
    """A store URL on ``base_url`` whose tables live in a new, empty schema, dropped on exit."""
    import sqlalchemy as sa

    schema = f"dxgraph_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
