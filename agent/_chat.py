"""The chat-model interface every language-model backend implements, and its request/reply types.

A backend (``openai`` over httpx, ``transformers`` on a local checkpoint, or a scripted fake in the
tests) turns a :class:`ChatRequest` into a :class:`ChatReply`. It never parses the reply: checking it
against a schema and repairing it is the caller's job. Every reply carries the raw request and raw
response exactly as exchanged, with images replaced by their sha256 reference, so the trace can hold
them without inline pixels.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from dxgraph.errors import DxgraphError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatImage:
    """An image sent to a model: PNG bytes, referenced by sha256 in the trace."""

    png: bytes
    """PNG-encoded bytes."""
    label: str = ""
    """What the image shows, such as ``zoomed view of s1.disc_roi``."""

    @property
    def sha256(self) -> str:
        """sha256 of the PNG bytes (the artifact id the trace records)."""
        return hashlib.sha256(self.png).hexdigest()

    def reference(self) -> dict[str, str]:
        """What the trace records in place of the bytes."""
        return {"artifact_sha256": self.sha256, "media_type": "image/png"}


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation."""

    role: Role
    """``system``, ``user`` or ``assistant``."""
    text: str
    """The text."""
    images: tuple[ChatImage, ...] = ()
    """Images attached to the message (sent only to models that accept images)."""


@dataclass(frozen=True)
class ChatRequest:
    """What a backend is asked."""

    messages: tuple[ChatMessage, ...]
    """The conversation, system prompt first."""
    json_schema: dict[str, Any] | None = None
    """JSON schema the reply must follow; backends constrain decoding to it where they can."""
    schema_name: str = "reply"
    """Name of the schema (OpenAI's ``json_schema.name``)."""
    max_tokens: int = 512
    """Upper bound on generated tokens."""
    purpose: str = "aggregate"
    """Why the model is called: ``aggregate``, ``plan``, or either with ``-repair``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific options, recorded with the request."""

    def images(self) -> tuple[ChatImage, ...]:
        """Every image of the conversation, in order."""
        return tuple(im for m in self.messages for im in m.images)


class ChatReply(BaseModel):
    """What a backend answered, with everything the trace needs."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    text: str
    """The generated text, unparsed."""
    model: str
    """Model id as the backend reports it."""
    latency_ms: float = Field(ge=0)
    """Wall time of the exchange, retries included."""
    prompt_tokens: int | None = None
    """Tokens in the prompt, when the backend counts them."""
    completion_tokens: int | None = None
    """Tokens generated, when the backend counts them."""
    structured_output: str = "none"
    """How the schema was enforced: ``json_schema``, ``json_object``, ``prompt`` (asked in text) or ``none``."""
    raw_request: dict[str, Any]
    """The request exactly as sent, images replaced by ``{"artifact_sha256": ...}`` references."""
    raw_response: Any
    """The response exactly as received (parsed JSON, or text when it was not JSON)."""
    attempts: int = Field(default=1, ge=1)
    """HTTP attempts made (retries on 429/5xx included)."""


class ModelError(DxgraphError):
    """A model backend could not answer (server down, timeout, HTTP error after retries).

    Callers record it in the trace and fall back to the deterministic path; it is never a crash.
    """

    def __init__(self, message: str, *, raw_request: dict[str, Any] | None = None, latency_ms: float = 0.0):
        super().__init__(message)
        self.raw_request = raw_request or {}
        """The request that failed, images by reference."""
        self.latency_ms = latency_ms
        """Time spent before giving up."""


class ChatBackend(Protocol):
    """A language model that answers chat requests; see ``dxgraph.agent._openai`` and ``_transformers``."""

    name: str
    """Backend kind: ``openai``, ``transformers`` or ``scripted``."""
    model_id: str
    """Which model, as recorded in the run header."""
    model_sha256: str | None
    """Hash of the weights when the backend can know it (local checkpoints), else None."""
    accepts_images: bool
    """Whether image parts can be sent."""

    def complete(self, request: ChatRequest) -> ChatReply:
        """Answer the request; ModelError when the model cannot be reached or fails."""
        ...


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model's text: the whole text, a fenced block, or the first balanced object.

    Raw control characters inside strings (a line break in a rationale, which some grammar-constrained
    servers let through) are accepted. Raises ValueError saying why when there is none.
    """
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start = text.find("{")
    if start >= 0:
        depth, in_str, esc = 0, False, False
        for i, ch in enumerate(text[start:], start):
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidates.append(text[start : i + 1])
                    break
    for c in candidates:
        try:
            return json.loads(c, strict=False)
        except json.JSONDecodeError:
            continue
    raise ValueError("the reply holds no JSON object" + (f": {text[:120]!r}" if text else " (it is empty)"))
