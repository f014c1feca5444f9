"""The ``openai`` chat backend: any OpenAI-compatible server (llama.cpp, vLLM, Ollama, OpenAI) over httpx.

Structured output is asked in the strongest form the server takes, tried in turn and remembered on the
instance: ``json_schema`` (OpenAI, vLLM), then ``json_object`` with a ``schema`` (llama.cpp), then none
(the caller already describes the schema in the prompt). A form is dropped when the server answers
400/422/500 naming ``response_format``, ``json_schema`` or ``json_object`` (llama_cpp.server answers 500
to ``json_schema``), or 400/422 naming ``schema`` or ``grammar``; any other 400/422 (a context overflow,
say) is a real error and raises ModelError without downgrading the instance.

Images are sent as data URLs. While it is unknown whether the model takes them, a 400/422/500 that is not
about the format is taken as a refusal of the images (llama_cpp.server with a text-only model answers 500
``can only concatenate str (not "list") to str``): the request is sent again text-only, and when that
succeeds ``accepts_images`` becomes False for good. 429, 5xx, timeouts and connection errors are retried
with exponential backoff (``Retry-After`` honoured, capped). The API key goes in the ``Authorization``
header only: ``raw_request`` is the JSON body as sent, each image replaced by its sha256 reference.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import httpx

from dxgraph.agent._chat import ChatReply, ChatRequest, ModelError
from dxgraph.errors import UserError

FORMS = ("json_schema", "json_object", "prompt")
"""Structured-output forms, strongest first."""
MAX_RETRY_AFTER_S = 30.0
"""Longest wait a ``Retry-After`` header can impose."""
_FORM_NAMES = ("response_format", "json_schema", "json_object")
_FORM_WORDS = ("schema", "grammar")


def api_key_from_env() -> str | None:
    """The API key from ``DXGRAPH_API_KEY``, else ``OPENAI_API_KEY``, else None."""
    return os.environ.get("DXGRAPH_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    """The start of a response body, on one line."""
    return " ".join(response.text.split())[:limit]


def _cause(exc: httpx.HTTPError) -> str:
    """A short human reason for a transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


class OpenAIChat:
    """A chat model behind an OpenAI-compatible HTTP API (``base_url`` ends in ``/v1``)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        accepts_images: bool | None = None,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        """Server URL ending in ``/v1``."""
        self.model_id = model or ""
        """Model name sent with each request (the first listed one when not given, after ``check``)."""
        self.model_sha256: str | None = None
        """Unknown for a remote model."""
        self.accepts_images = accepts_images is not False
        """Whether image parts are sent (True while unknown; False once the server refused them)."""
        self._images_known = accepts_images is not None
        self.retries = retries
        """Retries after the first attempt on 429, 5xx, timeouts and connection errors."""
        self.backoff_s = backoff_s
        """First backoff delay; doubled on each retry."""
        self.form = FORMS[0]
        """The structured-output form tried first (the last one the server accepted)."""
        key = api_key or api_key_from_env()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def check(self) -> list[str]:
        """The model ids the server lists; picks the first when no model was given. UserError if unreachable."""
        url = f"{self.base_url}/models"
        try:
            response = self._client.get(url)
        except httpx.HTTPError as e:
            raise UserError(
                f"cannot reach the model server at {self.base_url}: {_cause(e)}; start it or pass --base-url"
            ) from e
        if not response.is_success:
            raise UserError(
                f"the model server at {self.base_url} answered HTTP {response.status_code} to GET /models: "
                f"{_excerpt(response, 160)}"
            )
        try:
            ids = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{url} did not answer like an OpenAI-compatible server: {_excerpt(response, 160)}"
            ) from e
        if not self.model_id:
            if not ids:
                raise UserError(f"the model server at {self.base_url} lists no model; pass --model")
            self.model_id = ids[0]
        return ids

    def _body(self, request: ChatRequest, form: str, images: bool, as_reference: bool) -> dict[str, Any]:
        """The JSON body; images as data URLs, or as their references for the trace."""
        messages: list[dict[str, Any]] = []
        for m in request.messages:
            if not (images and m.images):
                messages.append({"role": m.role, "content": m.text})
                continue
            parts: list[dict[str, Any]] = [{"type": "text", "text": m.text}]
            for im in m.images:
                url: Any = im.reference() if as_reference else {"url": _data_url(im.png)}
                parts.append({"type": "image_url", "image_url": url})
            messages.append({"role": m.role, "content": parts})
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": 0,
            "seed": 0,
            **request.extra,
        }
        schema = request.json_schema
        if schema is not None and form == "json_schema":
            spec = {"name": request.schema_name, "schema": schema, "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif schema is not None and form == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def _refusal(self, response: httpx.Response, form: str, images: bool) -> str | None:
        """What the server refused, to be dropped before sending again: ``form``, ``images`` or None."""
        code, text = response.status_code, response.text.lower()
        if code not in (400, 422, 500):
            return None
        if form in FORMS[:2] and (
            any(w in text for w in _FORM_NAMES) or (code < 500 and any(w in text for w in _FORM_WORDS))
        ):
            return "form"
        return "images" if images and not self._images_known else None

    def _post(
        self, body: dict[str, Any], raw: dict[str, Any], form: str, images: bool, start: float
    ) -> tuple[httpx.Response, int]:
        """POST with retries; the final response (not 429/5xx unless a refusal) and the attempts made."""
        url = f"{self.base_url}/chat/completions"
        for attempt in range(1, self.retries + 2):
            wait = self.backoff_s * 2 ** (attempt - 1)
            try:
                response = self._client.post(url, json=body)
            except httpx.HTTPError as e:  # timeouts, refused connections, dropped sockets
                failure = f"could not get an answer from {url}: {_cause(e)}"
            else:
                code = response.status_code
                if (code != 429 and code < 500) or self._refusal(response, form, images):
                    return response, attempt
                failure = f"{url} answered HTTP {code}: {_excerpt(response)}"
                retry_after = response.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), MAX_RETRY_AFTER_S)
            if attempt <= self.retries:
                time.sleep(wait)
        latency = (time.perf_counter() - start) * 1000
        raise ModelError(f"{failure} (after {attempt} attempts)", raw_request=raw, latency_ms=latency)

    def complete(self, request: ChatRequest) -> ChatReply:
        """Send the request; falls back in form and images as the server demands. ModelError on failure."""
        start = time.perf_counter()
        if not self.model_id:
            try:
                self.check()
            except UserError as e:
                raise ModelError(str(e)) from e
        attempts, dropped_images = 0, False
        while True:
            images = self.accepts_images and not dropped_images and bool(request.images())
            form = self.form if request.json_schema is not None else "none"
            body = self._body(request, form, images, as_reference=False)
            raw = self._body(request, form, images, as_reference=True)
            response, n = self._post(body, raw, form, images, start)
            attempts += n
            refused = self._refusal(response, form, images)
            if refused == "form":
                self.form = FORMS[FORMS.index(form) + 1]
            elif refused == "images":
                dropped_images = True
            else:
                break
        latency = (time.perf_counter() - start) * 1000
        if not response.is_success:
            message = f"{response.url} answered HTTP {response.status_code}: {_excerpt(response)}"
            raise ModelError(message, raw_request=raw, latency_ms=latency)
        if images or dropped_images:  # the images went through, or text-only worked where they failed
            self.accepts_images, self._images_known = bool(images), True
        try:
            reply = response.json()
            text = reply["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            message = f"garbage reply from {response.url} (HTTP {response.status_code}): {_excerpt(response)}"
            raise ModelError(message, raw_request=raw, latency_ms=latency) from e
        usage = reply.get("usage") or {}
        return ChatReply(
            text=text,
            model=reply.get("model") or self.model_id,
            latency_ms=latency,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            structured_output=form,
            raw_request=raw,
            raw_response=reply,
            attempts=attempts,
        )


def _data_url(png: bytes) -> str:
    """PNG bytes as a ``data:`` URL."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
