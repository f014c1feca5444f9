"""The ``transformers`` chat backend: a local checkpoint folder (or a ``.gguf`` file), never the hub.

A vision-language checkpoint (its config has a ``vision_config``, or its model type is an
image-text-to-text model) is loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText`` and gets
the request's images; any other checkpoint is loaded with ``AutoTokenizer`` + ``AutoModelForCausalLM``
and images sent to it are dropped (counted in ``raw_request["images_dropped"]``). A ``.gguf`` file is a text-only
causal LM loaded with ``gguf_file=`` (needs the ``gguf`` package). Decoding is greedy. The prompt is
the checkpoint's chat template; a checkpoint without one gets the plain format ``role: text`` per
line followed by ``assistant:``. There is no constrained decoding: the caller's schema travels in
the prompt text (``structured_output="prompt"``).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dxgraph.agent._chat import ChatImage, ChatMessage, ChatReply, ChatRequest, ModelError
from dxgraph.errors import UserError
from dxgraph.tools import cached_model, pick_device, sha256_of_path


@dataclass(frozen=True)
class _Loaded:
    """A loaded checkpoint: its processor (VLM) or tokenizer, the model, and which kind it is."""

    processor: Any
    model: Any
    is_vlm: bool


def _is_vlm(folder: Path) -> bool:
    """Whether the checkpoint's config is a vision-language model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    has_vision = getattr(config, "vision_config", None) is not None
    return has_vision or config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _load(path: Path, device: str) -> _Loaded:
    """Load the processor/tokenizer and model from local files only, in eval mode on ``device``."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    if path.suffix == ".gguf":
        folder, kw = path.parent, {"gguf_file": path.name, "local_files_only": True}
        tok, model = (
            AutoTokenizer.from_pretrained(folder, **kw),
            AutoModelForCausalLM.from_pretrained(folder, **kw),
        )
        return _Loaded(tok, model.eval().to(device), False)
    if _is_vlm(path):
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        return _Loaded(processor, model.eval().to(device), True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return _Loaded(tok, model.eval().to(device), False)


def _pil(image: ChatImage) -> Any:
    """The image as an RGB PIL image; ValueError when its bytes cannot be decoded."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(image.png)).convert("RGB")
    except OSError as e:
        raise ValueError(
            f"image {image.sha256[:12]} ({image.label or 'unlabelled'}) cannot be decoded: {e}"
        ) from e


def _parts(message: ChatMessage) -> list[dict[str, str]]:
    """A message as chat-template content parts: one ``{"type": "image"}`` per image, then the text."""
    return [{"type": "image"} for _ in message.images] + [{"type": "text", "text": message.text}]


class TransformersChat:
    """A chat model run in-process with transformers from a local checkpoint (greedy decoding)."""

    name = "transformers"

    def __init__(self, model_path: str | Path, *, device: str = "auto") -> None:
        path = Path(model_path).expanduser().resolve()
        if not path.exists():
            raise UserError(f"transformers checkpoint not found: {path}")
        if not (path.suffix == ".gguf" and path.is_file()) and not (path / "config.json").is_file():
            raise UserError(f"{path} is not a transformers checkpoint (no config.json, not a .gguf file)")
        self.path = path
        """The checkpoint folder or .gguf file."""
        self.device = pick_device(device)
        """Where the model runs: ``cpu`` or ``cuda``."""
        try:
            self._loaded = cached_model(
                ("transformers-chat", str(path), self.device), lambda: _load(path, self.device)
            )
        except Exception as e:
            raise UserError(
                f"could not load the transformers checkpoint {path}: {type(e).__name__}: {e}"
            ) from e
        self.model_id: str = path.name
        """The folder or file name."""
        self.model_sha256: str | None = sha256_of_path(path)[0]
        """sha256 of the .gguf file, or of every file of the folder (relative paths included)."""
        self.accepts_images: bool = self._loaded.is_vlm
        """True for vision-language checkpoints."""

    def _prompt(self, request: ChatRequest) -> tuple[str, list[Any]]:
        """The rendered prompt text and the PIL images it refers to (none for a text-only model)."""
        proc, vlm = self._loaded.processor, self._loaded.is_vlm
        images = [_pil(im) for im in request.images()] if vlm else []
        if getattr(proc, "chat_template", None):
            conv: list[dict[str, Any]] = [
                {"role": m.role, "content": _parts(m) if vlm else m.text} for m in request.messages
            ]
            return str(proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)), images
        placeholder = str(getattr(proc, "image_token", "")) if vlm else ""
        lines = [f"{m.role}: {placeholder * len(m.images)}{m.text}" for m in request.messages]
        return "\n".join([*lines, "assistant:"]), images

    def complete(self, request: ChatRequest) -> ChatReply:
        """Answer the request with greedy decoding; ModelError when generation fails."""
        import torch

        n_images = len(request.images())
        raw_request: dict[str, Any] = {
            "model_path": str(self.path),
            "model_sha256": self.model_sha256,
            "messages": [
                {"role": m.role, "text": m.text, "images": [im.reference() for im in m.images]}
                for m in request.messages
            ],
            "generation": {"do_sample": False, "max_new_tokens": request.max_tokens},
        }
        if not self.accepts_images and n_images:
            raw_request["images_dropped"] = n_images
        if request.extra:
            raw_request["extra"] = request.extra
        proc, model = self._loaded.processor, self._loaded.model
        t0 = time.perf_counter()
        try:
            prompt, images = self._prompt(request)
            raw_request["prompt"] = prompt
            if self._loaded.is_vlm:  # pixel values in the model's dtype (bf16 checkpoints on GPU)
                inputs = proc(text=prompt, images=images or None, return_tensors="pt")
                inputs = inputs.to(self.device, dtype=model.dtype)
            else:  # the template already holds the special tokens
                inputs = proc(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            tokenizer = getattr(proc, "tokenizer", proc)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            with torch.inference_mode():
                torch.manual_seed(0)
                out = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=request.max_tokens,
                    pad_token_id=pad,
                )
        except Exception as e:
            raise ModelError(
                f"transformers model {self.model_id} failed to generate: {type(e).__name__}: {e}",
                raw_request=raw_request,
                latency_ms=(time.perf_counter() - t0) * 1000,
            ) from e
        n_prompt = int(inputs["input_ids"].shape[1])
        new = out[0, n_prompt:].tolist()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        finish = "stop" if (len(new) < request.max_tokens or (new and new[-1] in eos_ids)) else "length"
        decoded = tokenizer.decode(new, skip_special_tokens=True)
        return ChatReply(
            text=decoded.strip(),
            model=self.model_id,
            latency_ms=(time.perf_counter() - t0) * 1000,
            prompt_tokens=n_prompt,
            completion_tokens=len(new),
            structured_output="prompt",
            raw_request=raw_request,
            raw_response={"text": decoded, "finish_reason": finish},
        )
