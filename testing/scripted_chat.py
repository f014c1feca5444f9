"""A scripted language model for tests: replies come from a list, requests are kept for inspection."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dxgraph.agent import ChatReply, ChatRequest, ModelError

ScriptStep = str | ModelError | Callable[[ChatRequest], str]
"""A reply text, an error to raise, or a function of the request giving the reply text."""


class ScriptedChat:
    """A ``ChatBackend`` that answers from a script; the last step repeats when the script runs out."""

    name = "scripted"

    def __init__(self, script: list[ScriptStep], *, accepts_images: bool = True, model_id: str = "scripted"):
        if not script:
            raise ValueError("a script needs at least one step")
        self.script = list(script)
        """Replies, in order."""
        self.accepts_images = accepts_images
        """Whether image parts are accepted."""
        self.model_id = model_id
        """Model id recorded in the trace."""
        self.model_sha256: str | None = None
        """No weights to hash."""
        self.requests: list[ChatRequest] = []
        """Every request received, in order."""

    def complete(self, request: ChatRequest) -> ChatReply:
        """The next scripted reply."""
        t0 = time.perf_counter()
        step = self.script[min(len(self.requests), len(self.script) - 1)]
        self.requests.append(request)
        raw: dict[str, Any] = {
            "messages": [
                {"role": m.role, "text": m.text, "images": [im.reference() for im in m.images]}
                for m in request.messages
            ],
            "json_schema": request.json_schema,
            "max_tokens": request.max_tokens,
        }
        if isinstance(step, ModelError):
            raise ModelError(str(step), raw_request=raw)
        text = step(request) if callable(step) else step
        return ChatReply(
            text=text,
            model=self.model_id,
            latency_ms=(time.perf_counter() - t0) * 1000,
            prompt_tokens=sum(len(m.text.split()) for m in request.messages),
            completion_tokens=len(text.split()),
            structured_output="prompt",
            raw_request=raw,
            raw_response={"text": text},
        )
