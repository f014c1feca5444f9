"""Choosing and building the language model a run consults, from the aggregator and planner options.

``rules`` + ``deterministic`` consult no model. ``--aggregator openai`` needs a server URL (``--base-url``
or ``$DXGRAPH_BASE_URL``); ``--aggregator transformers`` needs a local checkpoint (``--model-path``).
``--planner llm`` uses the aggregator's model, or the one the options name. Backends are built once per
process and options, so a cohort checks the server and loads the checkpoint once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from dxgraph.agent._chat import ChatBackend
from dxgraph.errors import UserError

AGGREGATORS = ("rules", "openai", "transformers")
"""Aggregator backends available by name."""
PLANNERS = ("deterministic", "llm")
"""Planners available by name."""
MODEL_BACKENDS = ("openai", "transformers")
"""Kinds of language-model backend."""
BASE_URL_ENV = "DXGRAPH_BASE_URL"
"""Environment variable read when no ``--base-url`` is given."""

_cache: dict[tuple[object, ...], ChatBackend] = {}
_lock = threading.Lock()


def check_names(aggregator: str, planner: str, language_model: ChatBackend | None = None) -> None:
    """UserError for an unknown aggregator or planner (a given backend's own name is accepted)."""
    known = AGGREGATORS + ((language_model.name,) if language_model is not None else ())
    if aggregator not in known:
        raise UserError(f"unknown aggregator {aggregator!r}; available: {', '.join(known)}")
    if planner not in PLANNERS:
        raise UserError(f"unknown planner {planner!r}; available: {', '.join(PLANNERS)}")


def backend_kind(
    aggregator: str, planner: str, base_url: str | None, model_path: str | Path | None
) -> str | None:
    """Which backend the options call for (None: no model); UserError on unknown or contradictory options."""
    check_names(aggregator, planner)
    if aggregator in MODEL_BACKENDS:
        return aggregator
    if planner == "llm":
        if model_path is not None and base_url is None:
            return "transformers"
        if base_url is not None or os.environ.get(BASE_URL_ENV):
            return "openai"
        raise UserError(
            "--planner llm needs a language model: pass --base-url URL (an OpenAI-compatible server) "
            "or --model-path DIR (a local checkpoint)"
        )
    if base_url is not None or model_path is not None:
        raise UserError(
            "a model was given but nothing uses it: add --aggregator openai|transformers or --planner llm"
        )
    return None


def make_language_model(
    kind: str,
    *,
    base_url: str | None = None,
    model: str | None = None,
    model_path: str | Path | None = None,
    device: str = "auto",
    timeout_s: float = 120.0,
) -> ChatBackend:
    """The backend of this kind, built (and for a server, checked) once per process and options."""
    if kind == "openai":
        url = base_url or os.environ.get(BASE_URL_ENV)
        if not url:
            raise UserError(
                f"--aggregator openai needs --base-url (or ${BASE_URL_ENV}), such as http://127.0.0.1:8080/v1"
            )
        key: tuple[object, ...] = ("openai", url.rstrip("/"), model, timeout_s)
    elif kind == "transformers":
        if model_path is None:
            raise UserError(
                "--aggregator transformers needs --model-path, a local checkpoint folder or .gguf file"
            )
        key = ("transformers", str(Path(model_path).resolve()), device)
    else:
        raise UserError(f"unknown language-model backend {kind!r}; available: {', '.join(MODEL_BACKENDS)}")
    with _lock:
        if key not in _cache:
            _cache[key] = _build(
                kind, url if kind == "openai" else None, model, model_path, device, timeout_s
            )
        return _cache[key]


def _build(
    kind: str,
    url: str | None,
    model: str | None,
    model_path: str | Path | None,
    device: str,
    timeout_s: float,
) -> ChatBackend:
    if kind == "openai":
        from dxgraph.agent._openai import OpenAIChat

        assert url is not None
        chat = OpenAIChat(url, model, timeout_s=timeout_s)
        chat.check()
        return chat
    from dxgraph.agent._transformers import TransformersChat

    assert model_path is not None
    return TransformersChat(model_path, device=device)


def clear_language_models() -> None:
    """Forget built backends (tests, or after a server restart)."""
    with _lock:
        _cache.clear()
