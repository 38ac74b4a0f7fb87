"""LLaVA-OneVision: frames go in as one video (``<video>``, expanded by the processor to the video's tokens).

The vision tower (SigLIP) encodes every frame; the projector maps its patches to the language model's
width; the model then pools each frame's patch grid 2x2 (bilinear) and appends one ``image_newline``
embedding per video, so a clip of ``F`` frames takes ``F * ceil(p / 2) ** 2 + 1`` ``<video>`` tokens, with
``p = image_size / patch_size``. The chat format is Qwen2's (``<|im_start|>assistant\\n ... <|im_end|>``):
loss on assistant turns covers the answer and its ``<|im_end|>``; the ``all`` mode covers every token but
padding and visual tokens.

``pixel_values_videos`` keeps the processor's leading batch dimension, ``(1, frames, 3, H, W)``, so
``collate``'s concatenation gives the ``(batch, frames, 3, H, W)`` the model takes: every clip of a batch
must then have the same number of frames (the processor resizes frames to one size).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vidtune.models.family import LabelMode, VideoLLMFamily, register, to_chat

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# The llava-hf LLaVA-OneVision (Qwen2) chat template: per message, images, then videos (each followed by a
# newline), then text; plain-string contents are rendered as text.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}"
    "{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}"
    "{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class LlavaOnevisionFamily(VideoLLMFamily):
    name = "llava-onevision"
    vision_prefixes = ("model.vision_tower.", "vision_tower.")
    # image_newline is the learned separator the model appends after a video's (or image row's) features.
    projector_prefixes = (
        "model.multi_modal_projector.",
        "multi_modal_projector.",
        "model.image_newline",
        "image_newline",
    )
    language_prefixes = ("model.language_model.", "lm_head.", "language_model.")
    assistant_start = "<|im_start|>assistant\n"
    turn_end = "<|im_end|>"
    visual_tokens = ("<video>", "<image>")

    def encode(
        self,
        processor,
        frames,
        messages,
        *,
        labels: LabelMode | None = "assistant",
        add_generation_prompt: bool = False,
    ) -> dict[str, Any]:
        text = processor.apply_chat_template(
            to_chat(messages, [{"type": "video"}]),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        batch = processor(text=[text], videos=[list(frames)] if len(frames) else None, return_tensors="pt")
        return self.sample(processor, batch, labels)

    def build_tiny(self, out_dir: str | Path, corpus: Iterable[str]) -> Path:
        return build_tiny_llava_onevision(out_dir, corpus)


def build_tiny_llava_onevision(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    image_size: int = 56,
    patch_size: int = 14,
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
) -> Path:
    """Save a ~0.15M-parameter ``LlavaOnevisionForConditionalGeneration`` and its processor under ``out_dir``.

    A tiny Qwen2 (``hidden`` wide, ``layers`` deep, 4 heads, 2 KV heads) reads a tiny SigLIP's frames of
    ``image_size`` pixels: ``(image_size / patch_size) ** 2`` patches a frame, pooled to a quarter (56 px:
    4 tokens a frame). ``text`` and ``vision`` override config entries.
    """
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    from vidtune.models.tiny import train_tokenizer

    out = Path(out_dir)
    tokenizer = train_tokenizer(corpus, SPECIAL)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
        **(vision or {}),
    }
    size, patch = vision_config["image_size"], vision_config["patch_size"]
    # Any-resolution grids for single images, in multiples of the tower's input size (videos never tile).
    pinpoints = [[size * h, size * w] for h in (1, 2) for w in (1, 2)]
    config = LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
            **(text or {}),
        },
        vision_config=vision_config,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    frame = {"height": size, "width": size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=frame, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=frame),
        tokenizer=tokenizer,
        num_image_tokens=(size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        video_token="<video>",
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def video_tokens(config: Any, frames: int) -> int:
    """``<video>`` tokens a clip of ``frames`` frames takes: pooled patches per frame, plus one newline."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return frames * (-(-side // 2)) ** 2 + 1


LLAVA_ONEVISION = register(LlavaOnevisionFamily())
