"""Idefics3 and SmolVLM: frames go in as several images, one ``<image>`` per frame (the T2Vid paper's choice).

The record's single ``<video>`` placeholder becomes one image part per frame in the first user turn. Image
splitting is off, so the processor squares every frame to ``max_image_size`` and expands each ``<image>``
to ``<fake_token_around_image><global-img>`` + ``image_seq_len`` ``<image>`` + ``<fake_token_around_image>``;
``image_seq_len = (image_size / patch_size) ** 2 / scale_factor ** 2`` (the connector's pixel shuffle).
The chat format is Idefics3's (``User:<image>...question<end_of_utterance>\\nAssistant: answer
<end_of_utterance>\\n``): loss on assistant turns covers the answer (with its leading space, as the
template writes it) and its ``<end_of_utterance>``; the ``all`` mode covers every token but padding and
the visual tokens.

``pixel_values`` ``(1, frames, 3, H, W)`` and ``pixel_attention_mask`` ``(1, frames, H, W)`` keep the
processor's leading batch dimension, so ``collate``'s concatenation gives the ``(batch, images, ...)`` the
model takes: every clip of a batch must then have the same number of frames (frames all have one size).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vidtune.models.family import LabelMode, VideoLLMFamily, register, to_chat

IMAGE, FAKE, GLOBAL, END = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
BOS, PAD = "<|begin_of_text|>", "<|endoftext|>"
SPECIAL = [PAD, BOS, END, FAKE, IMAGE, GLOBAL]  # train_tokenizer takes the first one as padding

# The Idefics3 / SmolVLM chat template: the role capitalised, then ":" (": " when the turn opens with
# text), then the parts in order (images as <image>), then <end_of_utterance> and a newline.
CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_utterance>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class Idefics3Family(VideoLLMFamily):
    name = "idefics3"
    vision_prefixes = ("model.vision_model.", "vision_model.")
    projector_prefixes = ("model.connector.", "connector.")
    language_prefixes = ("model.text_model.", "lm_head.", "text_model.")
    assistant_start = "Assistant:"
    turn_end = END
    visual_tokens = (IMAGE, FAKE, GLOBAL)

    def encode(
        self,
        processor,
        frames,
        messages,
        *,
        labels: LabelMode | None = "assistant",
        add_generation_prompt: bool = False,
    ) -> dict[str, Any]:
        frames = list(frames)
        text = processor.apply_chat_template(
            to_chat(messages, [{"type": "image"}] * len(frames)),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        batch = processor(
            text=[text], images=[frames] if frames else None, do_image_splitting=False, return_tensors="pt"
        )
        return self.sample(processor, batch, labels)

    def build_tiny(self, out_dir: str | Path, corpus: Iterable[str]) -> Path:
        return build_tiny_idefics3(out_dir, corpus)


def build_tiny_idefics3(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    image_size: int = 64,
    patch_size: int = 16,
    scale_factor: int = 2,
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
) -> Path:
    """Save a ~0.2M-parameter ``Idefics3ForConditionalGeneration`` and its processor under ``out_dir``.

    A tiny Llama (``hidden`` wide, ``layers`` deep, 4 heads, 2 KV heads) reads a tiny SigLIP-style tower's
    frames of ``image_size`` pixels: ``(image_size / patch_size) ** 2`` patches, pixel-shuffled by
    ``scale_factor`` (64 px, 16 px patches, factor 2: 4 ``<image>`` tokens a frame). ``text`` and
    ``vision`` override config entries.
    """
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    from vidtune.models.tiny import train_tokenizer

    out = Path(out_dir)
    tokenizer = train_tokenizer(corpus, SPECIAL)
    # train_tokenizer names Qwen's <|im_end|> as the end of sequence (adding it, unused); Idefics3 ends a turn
    # with <end_of_utterance>.
    tokenizer.eos_token = END
    tokenizer.bos_token = BOS
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        **(vision or {}),
    }
    size, patch = vision_config["image_size"], vision_config["patch_size"]
    if (size // patch) % scale_factor:
        raise ValueError(f"{size // patch} patches a side do not pixel-shuffle by {scale_factor}")
    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "bos_token_id": ids[BOS],
            "eos_token_id": ids[END],
            "pad_token_id": ids[PAD],
            "tie_word_embeddings": False,
            **(text or {}),
        },
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=ids[IMAGE],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = ids[END]
    model.generation_config.pad_token_id = ids[PAD]
    edge = {"longest_edge": size}
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(size=edge, max_image_size=edge, do_image_splitting=False),
        tokenizer=tokenizer,
        image_seq_len=image_tokens(config),
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def image_tokens(config: Any) -> int:
    """``<image>`` tokens a frame takes: the tower's patches over ``scale_factor ** 2`` (pixel shuffle)."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


IDEFICS3 = register(Idefics3Family())
