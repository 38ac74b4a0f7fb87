"""Tiny offline video LLMs: the real Hugging Face classes with small configs, built on the spot.

Nothing is downloaded. A byte-level BPE tokenizer is trained with the ``tokenizers`` library on text the
caller gives (it must hold the answer words) plus the family's special tokens and chat template; the
model is the family's own class with a few-layer config. Both are saved with ``save_pretrained`` and
users, tests and the demo load them back through ``from_pretrained``, the path a real checkpoint takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template, reduced to what vidtune sends: text, image and video content parts.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], special: list[str], vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
    )


def _qwen_text_config(vocab: int, ids: dict[str, int], hidden: int, layers: int, text: dict | None) -> dict:
    """The tiny Qwen2 text model both Qwen-VL builders use: 4 heads (2 key-value heads), so the head
    dimension is ``hidden / 4``, and M-RoPE sections (temporal, height, width) adding up to half of it."""
    heads = 4
    half = hidden // heads // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **(text or {}),
    }


def _save_qwen(
    model: Any,
    processor_cls: Any,
    tokenizer: Any,
    ids: dict[str, int],
    out: Path,
    min_pixels: int,
    max_pixels: int,
) -> Path:
    """Save a Qwen-style tiny model with its processor (Qwen2-VL's image and video processors, which
    Qwen2.5-VL reuses), generation stopping at ``<|im_end|>``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    sizes = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessor(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_qwen2vl(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
) -> Path:
    """Save a ~0.2M-parameter ``Qwen2VLForConditionalGeneration`` and its processor under ``out_dir``.

    The text model's head dimension is ``hidden / 4``; M-RoPE's sections (temporal, height, width) must
    add up to half of it. ``text`` and ``vision`` override config entries: the benchmark builds a
    Qwen2-VL-2B-sized model (random weights) this way.
    """
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )

    out = Path(out_dir)
    tokenizer = train_tokenizer(corpus, QWEN_SPECIAL)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(len(tokenizer), ids, hidden, layers, text),
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **(vision or {}),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return _save_qwen(
        Qwen2VLForConditionalGeneration(config), Qwen2VLProcessor, tokenizer, ids, out, min_pixels, max_pixels
    )


def build_tiny_qwen25vl(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
) -> Path:
    """Save a ~0.2M-parameter ``Qwen2_5_VLForConditionalGeneration`` and its processor under ``out_dir``.

    The text side and the tokenizer are Qwen2-VL's (see :func:`build_tiny_qwen2vl`). The vision tower is
    Qwen2.5-VL's: RMSNorm and SwiGLU blocks, window attention in every block but those listed in
    ``fullatt_block_indexes``, and a merger projecting to ``out_hidden_size`` (the text hidden size). A
    ``window_size`` of 56 pixels is a window of 2x2 merged tokens, so a 112x112 frame spans four windows
    and block 0 really attends within windows. ``tokens_per_second`` is the released checkpoints' 2.
    Qwen2.5-VL reuses Qwen2-VL's image and video processors.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    out = Path(out_dir)
    tokenizer = train_tokenizer(corpus, QWEN_SPECIAL)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text_config = _qwen_text_config(len(tokenizer), ids, hidden, layers, text)
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text_config["hidden_size"],
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            **(vision or {}),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    return _save_qwen(model, Qwen2_5_VLProcessor, tokenizer, ids, out, min_pixels, max_pixels)
