"""Tiny, randomly initialised transformers checkpoints built offline, for testing the chat backend.

Nothing is downloaded: the tokenizer is a word-level vocabulary built here with the ``tokenizers``
library, the image processor and the configs are constructed from code, the weights are random
(seeded, so a build is reproducible). Each checkpoint is well under a megabyte and builds in about a
second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = (
    "the a an is of and to in it on with for this that image shows disc cup optic ratio "
    "large small normal glaucoma yes no answer json reply describe what see please , . : ; ! ? { } [ ] \" ' "
    "0 1 2 3 4 5 6 7 8 9 red green blue bright dark round"
).split()
"""The tiny vocabulary (anything else is ``<unk>``)."""
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
"""Special tokens every tiny model has; the VLM adds ``<image>``."""
IMAGE_TOKEN = "<image>"
"""The LLaVA image placeholder."""
IMAGE_SIZE, PATCH = 32, 8
"""Vision tower input size and patch size: (32 / 8)^2 = 16 image tokens per image."""
IMAGE_TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
"""How many prompt tokens one image expands to."""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> "
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
"""A chat template that accepts plain-string content and ``{"type": "image"|"text"}`` content parts."""


def _tokenizer(extra_special: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over WORDS with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL + extra_special
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in dict.fromkeys(WORDS)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=[t for t in specials if t not in ("<s>", "<|end|>", "<unk>", "<pad>")],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _llama_config(vocab_size: int, tok: Any) -> Any:
    """A two-layer, 32-wide Llama text config."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_vlm(folder: Path, *, seed: int = 0) -> Path:
    """A random LLaVA (tiny CLIP vision tower + tiny Llama) saved in ``folder`` with its processor."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    tok = _tokenizer([IMAGE_TOKEN])
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=16,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(len(tok), tok),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_causal_lm(folder: Path, *, seed: int = 0) -> Path:
    """A random text-only Llama saved in ``folder`` with a tokenizer that has a chat template."""
    import torch
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    tok = _tokenizer([])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(len(tok), tok)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
