"""The ``openai`` chat backend over real HTTP on 127.0.0.1: a scripted server, then llama.cpp with SmolLM2."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Literal

import cv2
import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from dxgraph.agent import ChatImage, ChatMessage, ChatRequest, ModelError
from dxgraph.agent._openai import OpenAIChat, api_key_from_env
from dxgraph.errors import UserError

from _llm_servers import ScriptedServer, Step, chat_body, free_port

PNG = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))[1].tobytes()
IMAGE = ChatImage(PNG, label="zoomed view of s1.disc_roi")


def ask(text: str = "Is this glaucoma?", images: tuple[ChatImage, ...] = (), **kw: Any) -> ChatRequest:
    """A two-message request."""
    messages = (ChatMessage("system", "You are careful."), ChatMessage("user", text, images))
    return ChatRequest(messages=messages, **kw)


def backend(url: str, **kw: Any) -> OpenAIChat:
    """A client with short waits, for scripted servers."""
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIChat(url, "scripted", **kw)


def test_text_and_image_parts_are_sent_and_the_trace_holds_only_the_reference():
    with ScriptedServer([Step(200, chat_body("ok", prompt_tokens=123, completion_tokens=7))]) as server:
        reply = backend(server.url).complete(ask(images=(IMAGE,)))
    sent = server.chat_requests[0].json
    assert sent["model"] == "scripted" and sent["temperature"] == 0 and sent["seed"] == 0
    assert sent["max_tokens"] == 512 and "response_format" not in sent
    assert sent["messages"][0] == {"role": "system", "content": "You are careful."}
    text_part, image_part = sent["messages"][1]["content"]
    assert text_part == {"type": "text", "text": "Is this glaucoma?"}
    prefix, b64 = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64" and base64.b64decode(b64) == PNG
    recorded = reply.raw_request["messages"][1]["content"][1]
    assert recorded == {
        "type": "image_url",
        "image_url": {"artifact_sha256": IMAGE.sha256, "media_type": "image/png"},
    }
    assert b64 not in json.dumps(reply.raw_request) and "base64" not in json.dumps(reply.raw_request)
    assert (reply.text, reply.model, reply.attempts, reply.structured_output) == ("ok", "scripted", 1, "none")
    assert (reply.prompt_tokens, reply.completion_tokens) == (123, 7)
    assert 0 < reply.latency_ms < 5000
    assert reply.raw_response["choices"][0]["message"]["content"] == "ok"


def test_a_backend_told_the_model_takes_no_images_sends_text_only():
    with ScriptedServer([Step(200, chat_body("ok"))]) as server:
        reply = backend(server.url, accepts_images=False).complete(ask(images=(IMAGE,)))
    assert server.chat_requests[0].json["messages"][1] == {"role": "user", "content": "Is this glaucoma?"}
    assert reply.raw_request["messages"][1]["content"] == "Is this glaucoma?"


def test_the_api_key_from_the_environment_reaches_the_header_and_nothing_else(monkeypatch):
    monkeypatch.delenv("DXGRAPH_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback")
    assert api_key_from_env() == "sk-openai-fallback"
    monkeypatch.setenv("DXGRAPH_API_KEY", "sk-dx-secret-123")
    assert api_key_from_env() == "sk-dx-secret-123"
    with ScriptedServer([Step(200, chat_body("ok"))]) as server:
        chat = backend(server.url)
        reply = chat.complete(ask(images=(IMAGE,)))
    assert server.chat_requests[0].headers["authorization"] == "Bearer sk-dx-secret-123"
    for blob in (json.dumps(reply.raw_request), json.dumps(reply.raw_response), reply.model_dump_json()):
        assert "sk-dx-secret-123" not in blob
    monkeypatch.delenv("DXGRAPH_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    with ScriptedServer([Step(200, chat_body("ok"))]) as server:
        backend(server.url).complete(ask())
    assert "authorization" not in server.chat_requests[0].headers


def test_a_500_then_a_200_succeeds_on_the_second_attempt():
    with ScriptedServer([Step(500, {"error": "busy"}), Step(200, chat_body("second"))]) as server:
        reply = backend(server.url).complete(ask())
    assert (reply.text, reply.attempts, len(server.chat_requests)) == ("second", 2, 2)


def test_a_429_waits_as_long_as_retry_after_says():
    script = [Step(429, {"error": "slow down"}, headers={"Retry-After": "1"}), Step(200, chat_body("ok"))]
    with ScriptedServer(script) as server:
        t0 = time.perf_counter()
        reply = backend(server.url, backoff_s=0.01).complete(ask())
        elapsed = time.perf_counter() - t0
    assert reply.attempts == 2 and 1.0 <= elapsed < 3.0
    assert reply.latency_ms >= 1000


def test_a_server_that_always_fails_gives_a_model_error_after_every_retry():
    with ScriptedServer([Step(500, {"error": "model crashed"})]) as server:
        with pytest.raises(ModelError, match="HTTP 500") as err:
            backend(server.url, retries=2, accepts_images=True).complete(ask(images=(IMAGE,)))
    assert len(server.chat_requests) == 3
    assert "model crashed" in str(err.value) and "3 attempts" in str(err.value)
    assert err.value.raw_request["messages"][1]["content"][1]["image_url"]["artifact_sha256"] == IMAGE.sha256
    assert "base64" not in json.dumps(err.value.raw_request) and err.value.latency_ms > 0


def test_a_server_slower_than_the_timeout_gives_a_model_error():
    with ScriptedServer([Step(200, chat_body("late"), delay_s=1.5)]) as server:
        with pytest.raises(ModelError, match="no answer in time") as err:
            backend(server.url, timeout_s=0.3, retries=1).complete(ask())
        assert len(server.chat_requests) == 2
    assert 600 <= err.value.latency_ms < 3000


@pytest.mark.parametrize(
    "body", ["<html>Bad gateway</html>", {"choices": []}, {"choices": [{"message": {"content": None}}]}]
)
def test_a_2xx_garbage_reply_is_a_model_error(body):
    with ScriptedServer([Step(200, body)]) as server:
        with pytest.raises(ModelError, match="garbage reply"):
            backend(server.url).complete(ask())
        assert len(server.chat_requests) == 1


SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["glaucoma", "normal"]}, "confidence": {"type": "number"}},
    "required": ["label", "confidence"],
}
# What llama_cpp.server 0.3.36 answers to the json_schema form: HTTP 500 with its validation error.
LLAMA_500 = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}
# ... and to image parts sent to a text-only model.
LLAMA_IMAGE_500 = {
    "error": {
        "message": 'can only concatenate str (not "list") to str',
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


def llama_like(request: Any) -> Step:
    """Refuses the json_schema form as llama.cpp does; answers anything else."""
    if request.get("response_format", {}).get("type") == "json_schema":
        return Step(500, LLAMA_500)
    return Step(200, chat_body('{"label": "normal", "confidence": 0.9}'))


def test_a_refused_json_schema_form_falls_back_to_json_object_and_is_remembered():
    with ScriptedServer(llama_like) as server:
        chat = backend(server.url)
        first = chat.complete(ask(json_schema=SCHEMA, schema_name="verdict"))
        second = chat.complete(ask(json_schema=SCHEMA))
    forms = [r.json["response_format"] for r in server.chat_requests]
    assert forms[0] == {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True},
    }
    assert forms[1] == forms[2] == {"type": "json_object", "schema": SCHEMA}
    assert len(forms) == 3  # the second request went straight to json_object
    assert (first.structured_output, first.attempts) == ("json_object", 2)
    assert (second.structured_output, second.attempts) == ("json_object", 1)
    assert first.raw_request["response_format"]["type"] == "json_object"


def test_a_server_refusing_every_format_is_asked_in_the_prompt_only():
    def strict(request: Any) -> Step:
        if "response_format" in request:
            return Step(400, {"error": {"message": "Unrecognized request argument: response_format"}})
        return Step(200, chat_body("{}"))

    with ScriptedServer(strict) as server:
        reply = backend(server.url).complete(ask(json_schema=SCHEMA))
    assert reply.structured_output == "prompt" and reply.attempts == 3
    assert "response_format" not in server.chat_requests[-1].json


def test_a_400_that_is_not_about_the_format_is_an_error_and_keeps_the_form():
    body = {"error": {"message": "Requested tokens (4000) exceed context window of 2048"}}
    with ScriptedServer([Step(400, body)]) as server:
        chat = backend(server.url)
        with pytest.raises(ModelError, match=r"HTTP 400.*context window"):
            chat.complete(ask(json_schema=SCHEMA))
    assert len(server.chat_requests) == 1 and chat.form == "json_schema"


def test_images_refused_by_a_text_only_server_are_dropped_and_remembered():
    def text_only(request: Any) -> Step:
        if any(isinstance(m["content"], list) for m in request["messages"]):
            return Step(500, LLAMA_IMAGE_500)
        return Step(200, chat_body("text only"))

    with ScriptedServer(text_only) as server:
        chat = backend(server.url)
        assert chat.accepts_images
        reply = chat.complete(ask(images=(IMAGE,)))
        again = chat.complete(ask(images=(IMAGE,)))
    assert (reply.text, reply.attempts, again.attempts) == ("text only", 2, 1)
    assert chat.accepts_images is False and len(server.chat_requests) == 3
    assert reply.raw_request["messages"][1]["content"] == "Is this glaucoma?"


def test_a_failure_that_persists_text_only_does_not_mark_the_model_as_blind():
    with ScriptedServer(
        [Step(400, {"error": {"message": "maximum context length is 2048 tokens"}})]
    ) as server:
        chat = backend(server.url)
        with pytest.raises(ModelError, match=r"HTTP 400.*context length"):
            chat.complete(ask(images=(IMAGE,)))
    sent = [r.json["messages"][1]["content"] for r in server.chat_requests]
    assert isinstance(sent[0], list) and sent[1] == "Is this glaucoma?" and len(sent) == 2
    assert chat.accepts_images  # still unknown: the next request tries the images again


def test_check_lists_the_models_and_picks_the_first_when_none_was_named():
    with ScriptedServer([Step(200, chat_body("ok"))]) as server:
        chat = OpenAIChat(server.url + "/")
        assert chat.check() == ["scripted"]
        assert chat.model_id == "scripted" and chat.model_sha256 is None and chat.name == "openai"
        assert chat.complete(ask()).model == "scripted"
    assert server.requests[0].path == "/v1/models"


def test_check_against_a_closed_port_is_a_user_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError) as err:
        OpenAIChat(url, timeout_s=2).check()
    assert (
        str(err.value)
        == f"cannot reach the model server at {url}: connection refused; start it or pass --base-url"
    )
    with pytest.raises(ModelError, match="cannot reach"):
        OpenAIChat(url, timeout_s=2, retries=0).complete(ask())


# ---- a real llama.cpp server running SmolLM2-135M-Instruct ----------------------------------------------

LABELS = ["glaucoma", "normal", "indeterminate"]
EVIDENCE_IDS = ["e1", "e2", "e3"]
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": LABELS},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string", "maxLength": 80},
        "evidence_ids": {"type": "array", "items": {"type": "string", "enum": EVIDENCE_IDS}, "maxItems": 3},
    },
    "required": ["label", "confidence", "rationale", "evidence_ids"],
    "additionalProperties": False,
}


class Verdict(BaseModel):
    """The schema above, as a validator."""

    model_config = ConfigDict(extra="forbid")

    label: Literal["glaucoma", "normal", "indeterminate"]
    """The verdict."""
    confidence: float = Field(ge=0, le=1)
    """How sure."""
    rationale: str = Field(max_length=80)
    """Why."""
    evidence_ids: list[Literal["e1", "e2", "e3"]] = Field(max_length=3)
    """Evidence cited."""


VERDICT_PROMPT = (
    "Evidence: e1: cup-to-disc ratio 0.72 (large). e2: rim thinnest inferiorly. e3: image quality good.\n"
    "Answer with a JSON object: label (glaucoma, normal or indeterminate), confidence (0 to 1), "
    "rationale (one short sentence), evidence_ids (ids of the evidence you used)."
)


@pytest.mark.slow
def test_llama_cpp_lists_its_model(llama_base_url):
    chat = OpenAIChat(llama_base_url)
    ids = chat.check()
    assert len(ids) == 1 and ids[0].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert chat.model_id == ids[0]


@pytest.mark.slow
def test_llama_cpp_answers_schema_constrained_json_through_the_json_object_form(llama_base_url):
    chat = OpenAIChat(llama_base_url, timeout_s=60, retries=1)
    chat.check()
    latencies = []
    for i in range(3):
        request = ask(VERDICT_PROMPT, json_schema=VERDICT_SCHEMA, schema_name="verdict", max_tokens=160)
        reply = chat.complete(request)
        latencies.append(reply.latency_ms)
        verdict = Verdict.model_validate(json.loads(reply.text))
        print(
            f"\nllama.cpp structured reply {i}: {reply.latency_ms:.0f} ms, attempts {reply.attempts}, "
            f"{reply.prompt_tokens} prompt + {reply.completion_tokens} completion tokens: {reply.text}"
        )
        assert reply.structured_output == "json_object"
        assert reply.attempts == (2 if i == 0 else 1)  # json_schema refused once, then remembered
        assert reply.prompt_tokens and reply.prompt_tokens > 50 and reply.completion_tokens
        assert verdict.label in LABELS
    assert chat.form == "json_object"
    assert all(0 < ms < 30_000 for ms in latencies)


@pytest.mark.slow
def test_llama_cpp_given_an_image_part_ends_up_answering_text_only(llama_base_url):
    chat = OpenAIChat(llama_base_url, timeout_s=60, retries=1)
    chat.check()
    reply = chat.complete(ask("Say hello.", images=(IMAGE,), max_tokens=16))
    print(
        f"\nllama.cpp with an image part: attempts {reply.attempts}, {reply.latency_ms:.0f} ms: {reply.text!r}"
    )
    assert chat.accepts_images is False and reply.attempts == 2  # refused with HTTP 500, then text-only
    assert reply.raw_request["messages"][1]["content"] == "Say hello."
    assert reply.text.strip()
