"""Traced, validated exchanges with a language model: every call becomes a ``ModelCalled`` event.

``TracedChat`` wraps a backend for one run. ``ask_with_repair`` asks for a structured reply, checks it
with the caller's parser, and when the parser rejects it sends the error back once. Images sent to the
model are stored as artifacts of the run so the trace can reference them by sha256.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dxgraph.agent._chat import ChatBackend, ChatMessage, ChatReply, ChatRequest, ModelError, extract_json
from dxgraph.traces import LanguageModelRef, ModelCalled, TraceRecorder

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

REPAIR_ROUNDS = 1
"""How many times an invalid reply is sent back with its validation error."""


REPAIR_ECHO_CHARS = 2000
"""At most this much of the rejected reply is echoed back in the repair round (context is finite)."""


class ReplyInvalid(Exception):
    """A reply that does not follow its schema or cites what does not exist; the message says why."""


def parse_model(model: type[M], text: str) -> M:
    """The reply text as ``model``; ReplyInvalid with a short, model-readable reason otherwise."""
    try:
        data = extract_json(text)
    except ValueError as e:
        raise ReplyInvalid(str(e)) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()[:6]
        )
        raise ReplyInvalid(f"the JSON does not follow the schema: {problems}") from None


def compact_schema(schema: Any) -> Any:
    """A JSON schema without titles and descriptions: what a model needs, in far fewer tokens."""
    if isinstance(schema, dict):
        return {
            k: compact_schema(v)
            for k, v in schema.items()
            if k not in ("title", "description") or not isinstance(v, str)
        }
    if isinstance(schema, list):
        return [compact_schema(v) for v in schema]
    return schema


def language_model_ref(backend: ChatBackend) -> LanguageModelRef:
    """What the run header records about a backend."""
    return LanguageModelRef(
        backend=backend.name,
        model=backend.model_id,
        sha256=backend.model_sha256,
        endpoint=getattr(backend, "base_url", None),
    )


class TracedChat:
    """A backend bound to one run's recorder: every exchange is recorded, accepted or not."""

    def __init__(self, backend: ChatBackend, recorder: TraceRecorder) -> None:
        self.backend = backend
        """The model backend."""
        self.recorder = recorder
        """The run's recorder (events and artifacts)."""

    @property
    def name(self) -> str:
        """Backend kind."""
        return self.backend.name

    def ask(self, request: ChatRequest, parse: Callable[[str], T]) -> tuple[T, ChatReply]:
        """One exchange; records it and returns the parsed reply. Raises ModelError or ReplyInvalid."""
        images = request.images() if self.backend.accepts_images else ()
        for im in images:
            self.recorder.artifacts.put_bytes(im.png, "image/png")
        common: dict[str, Any] = dict(
            purpose=request.purpose,
            backend=self.backend.name,
            model=self.backend.model_id,
            image_sha256=tuple(im.sha256 for im in images),
        )
        try:
            reply = self.backend.complete(request)
        except ModelError as e:
            self.recorder.emit(
                ModelCalled,
                status="error",
                request=_jsonable(e.raw_request),
                error=str(e),
                latency_ms=e.latency_ms,
                **common,
            )
            raise
        outcome: dict[str, Any] = dict(
            request=_jsonable(reply.raw_request),
            response=_jsonable(reply.raw_response),
            latency_ms=reply.latency_ms,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            structured_output=reply.structured_output,
            attempts=reply.attempts,
            **{**common, "model": reply.model or self.backend.model_id},
        )
        try:
            value = parse(reply.text)
        except ReplyInvalid as e:
            self.recorder.emit(ModelCalled, status="invalid", error=str(e), **outcome)
            raise ReplyInvalidWithText(str(e), reply.text) from None
        self.recorder.emit(ModelCalled, status="ok", **outcome)
        return value, reply


class ReplyInvalidWithText(ReplyInvalid):
    """ReplyInvalid carrying the offending text, for the repair round."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text
        """The reply that was rejected."""


def ask_with_repair(chat: TracedChat, request: ChatRequest, parse: Callable[[str], T]) -> T:
    """Ask; on an invalid reply send the reason back (``REPAIR_ROUNDS`` times). Raises the last failure."""
    try:
        return chat.ask(request, parse)[0]
    except ReplyInvalidWithText as first:
        last: ReplyInvalidWithText = first
    for _ in range(REPAIR_ROUNDS):
        repair = replace(
            request,
            messages=(
                *request.messages,
                ChatMessage("assistant", last.text[:REPAIR_ECHO_CHARS]),
                ChatMessage(
                    "user",
                    f"That reply is invalid: {last}. Answer again with only the corrected JSON object, "
                    "following the schema exactly.",
                ),
            ),
            purpose=f"{request.purpose}-repair",
        )
        try:
            return chat.ask(repair, parse)[0]
        except ReplyInvalidWithText as e:
            last = e
    raise last


def _jsonable(value: Any) -> Any:
    """Value made JSON-safe for the trace: non-finite floats and unknown types become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
