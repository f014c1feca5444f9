"""Replaying a run's model calls: recorded replies answered in order, each request checked against the record."""

from __future__ import annotations

from typing import Any

from dxgraph.agent._chat import ChatReply, ChatRequest, ModelError
from dxgraph.errors import StoreError
from dxgraph.traces import Difference, LanguageModelRef, ModelCalled


def reply_text(backend: str, response: Any) -> str:
    """The reply text inside a recorded raw response: OpenAI ``choices[0].message.content``, else ``text``."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        if "choices" in response:
            content = response["choices"][0]["message"]["content"]
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
        if "text" in response:
            text = str(response["text"])
            return text.strip() if backend == "transformers" else text
    raise StoreError(f"cannot find the reply text in a recorded {backend} response")


def request_texts(raw: Any) -> list[str]:
    """The message texts of a raw request, whatever the backend's format."""
    if not isinstance(raw, dict):
        return []
    texts = [str(raw["prompt"])] if isinstance(raw.get("prompt"), str) else []
    for m in raw.get("messages") or []:
        if not isinstance(m, dict):
            continue
        if isinstance(m.get("text"), str):
            texts.append(m["text"])
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [str(p.get("text")) for p in content if isinstance(p, dict) and p.get("text")]
    return texts


class ReplayChat:
    """A chat backend answering with a run's recorded replies, in order; checks the requests it gets."""

    def __init__(self, ref: LanguageModelRef, calls: list[ModelCalled], diffs: list[Difference]) -> None:
        self.name = ref.backend
        """Backend kind, as recorded."""
        self.model_id = ref.model
        """Model id, as recorded."""
        self.model_sha256 = ref.sha256
        """Weights hash, as recorded."""
        self.accepts_images = any(c.image_sha256 for c in calls)
        """Whether the recorded run sent images."""
        self.calls = calls
        """The recorded exchanges, in order."""
        self.diffs = diffs
        """Where request mismatches go."""
        self.n_asked = 0
        """Requests answered so far."""

    def complete(self, request: ChatRequest) -> ChatReply:
        """The next recorded reply (or its recorded error)."""
        i = self.n_asked
        self.n_asked += 1
        if i >= len(self.calls):
            self.diffs.append(Difference("model", f"call {i + 1}", None, request.purpose))
            raise ModelError("replay: the recorded run made no further model call")
        call = self.calls[i]
        where = f"call {i + 1} ({call.purpose})"
        if call.purpose != request.purpose:
            self.diffs.append(Difference("model", f"{where} purpose", call.purpose, request.purpose))
        recorded_text = "\n".join(request_texts(call.request))
        for m in request.messages:
            if m.text.strip() and m.text.strip() not in recorded_text:
                self.diffs.append(Difference("model", f"{where} {m.role} message", "(recorded text)", m.text))
        if call.status == "error":
            raise ModelError(
                call.error or "model error", raw_request=call.request, latency_ms=call.latency_ms
            )
        return ChatReply(
            text=reply_text(call.backend, call.response),
            model=call.model,
            latency_ms=call.latency_ms,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            structured_output=call.structured_output,
            raw_request=call.request,
            raw_response=call.response,
            attempts=call.attempts,
        )


# -- running -----------------------------------------------------------------------------------
