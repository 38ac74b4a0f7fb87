"""The family adapter interface: how one Hugging Face video-LLM family takes frames and messages.

An adapter turns a clip (frames + the record's messages) into processor inputs and labels, names the
modules that freezing and LoRA address (vision tower, projector, language model), generates an answer,
and builds a tiny offline instance. Everything downstream (preprocessing, training, eval, serving) talks
to this interface only; ``FAMILIES`` maps names to adapters (one file per family).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidtune.data.schema import PLACEHOLDER

IGNORE = -100  # the label PyTorch's cross-entropy skips

LabelMode = str  # "assistant": loss on assistant turns only (default); "all": every non-pad, non-visual token


def to_chat(messages: list[dict[str, str]], visual: list[dict[str, str]]) -> list[dict[str, Any]]:
    """vidtune messages as a processor's content parts: the ``<video>`` placeholder (first user turn)
    becomes ``visual`` (one video part, or one image part a frame), the text around it text parts."""
    out = []
    for m in messages:
        text = m["content"]
        if PLACEHOLDER in text:
            before, after = text.split(PLACEHOLDER, 1)
            parts = ([{"type": "text", "text": before}] if before else []) + list(visual)
            parts += [{"type": "text", "text": after.lstrip("\n")}] if after.strip() else []
        else:
            parts = [{"type": "text", "text": text}]
        out.append({"role": m["role"], "content": parts})
    return out


# Per-token tensors: one sample's lose the batch dimension in ``encode``; ``collate`` pads and stacks them.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids")


class VideoLLMFamily(ABC):
    name: str
    # Module-name prefixes (as in model.named_parameters()) for freezing and LoRA target selection.
    vision_prefixes: tuple[str, ...]
    projector_prefixes: tuple[str, ...]
    language_prefixes: tuple[str, ...]
    # The chat format, for label masking: the text that opens an assistant turn, the token that ends a
    # turn, and the visual tokens that the "all" mode leaves out.
    assistant_start: str
    turn_end: str
    visual_tokens: tuple[str, ...]

    @abstractmethod
    def encode(
        self,
        processor: Any,
        frames: Sequence[np.ndarray],
        messages: list[dict[str, str]],
        *,
        labels: LabelMode | None = "assistant",
        add_generation_prompt: bool = False,
    ) -> dict[str, Any]:
        """Processor inputs for one sample (unbatched tensors), with ``labels`` unless ``labels=None``."""

    def sample(self, processor: Any, batch: Any, labels: LabelMode | None) -> dict[str, Any]:
        """One sample from the processor's batch of one: sequences lose the batch dimension (collate
        pads and stacks them), pixel tensors keep theirs; labels unless ``labels`` is None."""
        out = {k: v[0] if k in SEQUENCE_KEYS else v for k, v in batch.items()}
        if labels is not None:
            out["labels"] = self.labels(processor, out["input_ids"], labels)
        return out

    def labels(self, processor: Any, input_ids: Any, mode: LabelMode) -> Any:
        """Labels for one sample's ``input_ids``: ``assistant``: every assistant turn from after
        :attr:`assistant_start` through its :attr:`turn_end` token (so the model learns to stop);
        ``all``: every token but padding and :attr:`visual_tokens`."""
        import torch

        tok = processor.tokenizer
        ids = input_ids.tolist()
        labels = torch.full_like(input_ids, IGNORE)
        if mode == "all":
            skip = {tok.pad_token_id, *(tok.convert_tokens_to_ids(t) for t in self.visual_tokens)}
            keep = torch.tensor([i not in skip for i in ids])
            labels[keep] = input_ids[keep]
            return labels
        start = tok.encode(self.assistant_start, add_special_tokens=False)
        for a, b in find_spans(ids, start, tok.convert_tokens_to_ids(self.turn_end)):
            labels[a:b] = input_ids[a:b]
        return labels

    def generate(
        self,
        model: Any,
        processor: Any,
        frames: Sequence[np.ndarray],
        question: list[dict[str, str]],
        max_new_tokens: int = 32,
    ) -> str:
        """The model's answer to ``question`` (messages up to the user turn), greedy."""
        import torch

        inputs = self.encode(processor, frames, question, labels=None, add_generation_prompt=True)
        batch = {k: (v.unsqueeze(0) if k in SEQUENCE_KEYS else v).to(model.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.tokenizer.decode(
            out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True
        ).strip()

    @abstractmethod
    def build_tiny(self, out_dir: str | Path, corpus: Iterable[str]) -> Path:
        """Save a tiny instance of this family (model + processor) trained on nothing but ``corpus``."""

    def module_group(self, parameter_name: str) -> str:
        """``vision``, ``projector`` or ``language`` for a parameter name (``other`` when none match)."""
        for group, prefixes in (
            ("projector", self.projector_prefixes),
            ("vision", self.vision_prefixes),
            ("language", self.language_prefixes),
        ):
            if any(parameter_name.startswith(p) for p in prefixes):
                return group
        return "other"


def find_spans(ids: Sequence[int], start: Sequence[int], end: int) -> list[tuple[int, int]]:
    """[from, to) spans that begin right after each occurrence of ``start`` and run through ``end``."""
    ids = list(ids)
    spans, n, i = [], len(start), 0
    while i <= len(ids) - n:
        if ids[i : i + n] == list(start):
            j = i + n
            while j < len(ids) and ids[j] != end:
                j += 1
            spans.append((i + n, min(j + 1, len(ids))))
            i = j
        i += 1
    return spans


FAMILIES: dict[str, VideoLLMFamily] = {}


def register(family: VideoLLMFamily) -> VideoLLMFamily:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> VideoLLMFamily:
    import vidtune.models.idefics3  # noqa: F401 — each family module registers itself
    import vidtune.models.llava_onevision  # noqa: F401
    import vidtune.models.qwen2_vl  # noqa: F401

    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}', choose from {sorted(FAMILIES)}")
    return FAMILIES[name]


def load_kwargs(use_gpu: bool, bf16: bool | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments every vidtune process uses: bf16 on GPU (fp32 on CPU, where bf16
    matmuls are slow), FlashAttention-2 when it is installed and a GPU is there, else PyTorch SDPA."""
    import importlib.util

    import torch

    bf16 = use_gpu if bf16 is None else bf16
    flash = use_gpu and importlib.util.find_spec("flash_attn") is not None
    return {
        "dtype": torch.bfloat16 if bf16 else torch.float32,
        "attn_implementation": "flash_attention_2" if flash else "sdpa",
    }


# Pixel tensors shaped (1, images, ...) per sample (Idefics3), where an all-zero image is skipped.
IMAGE_AXIS_KEYS = ("pixel_values", "pixel_attention_mask")


def collate(samples: list[dict[str, Any]], pad_id: int, side: str = "right") -> dict[str, Any]:
    """Pad and stack encoded samples into a batch: what a training worker does per step.

    Sequence tensors are padded (``input_ids`` with ``pad_id``, ``labels`` with ``IGNORE``, masks with 0),
    on the right for training and on the left for batched ``generate`` (new tokens append to every row);
    visual tensors (``pixel_values_videos``, ``video_grid_thw``, ...) are concatenated in sample order.
    """
    import torch

    longest = max(s["input_ids"].shape[0] for s in samples)
    fill = {"input_ids": pad_id, "labels": IGNORE, "attention_mask": 0, "mm_token_type_ids": 0}
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in fill:
            pads = [
                (0, longest - v.shape[0]) if side == "right" else (longest - v.shape[0], 0) for v in values
            ]
            batch[key] = torch.stack(
                [torch.nn.functional.pad(v, p, value=fill[key]) for v, p in zip(values, pads, strict=True)]
            )
        elif values[0].dim() >= 3 and key in IMAGE_AXIS_KEYS:
            # (1, images, ...) per sample: clips with fewer frames get all-zero images, which the
            # models skip (the processors' own batching convention), then samples stack on dim 0.
            most = max(v.shape[1] for v in values)
            pad = [(0, 0) * (v.dim() - 2) + (0, most - v.shape[1]) for v in values]
            batch[key] = torch.cat([torch.nn.functional.pad(v, p) for v, p in zip(values, pad, strict=True)])
        elif key == "pixel_values_videos" and values[0].dim() >= 3 and len({v.shape[:2] for v in values}) > 1:
            # LLaVA-OneVision: (1, frames, ...) per sample, and the model reshapes the batch by one frame
            # count, so a padded frame would be read as a real one.
            raise ValueError(
                f"clips with {sorted({v.shape[1] for v in values})} frames in one batch: this family "
                "needs one frame count per batch (sample every clip to the same frames, or micro_batch: 1)"
            )
        else:
            batch[key] = torch.cat(values)
    return batch
