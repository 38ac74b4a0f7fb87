"""Qwen2-VL and Qwen2.5-VL: frames go in as one video (``<|video_pad|>`` expanded by the processor).

The two share the tokens, chat template, image and video processors and parameter names (``model.visual``
with its ``merger`` as the projector, ``model.language_model``, ``lm_head``). ``qwen2.5-vl`` differs from
``qwen2-vl`` in its tiny model and in one processor argument: Qwen2.5-VL spaces a video's temporal M-RoPE
positions by time, so it is told the frame rate (2 fps, see :meth:`Qwen25VLFamily.video_kwargs`); its
processor then returns ``second_per_grid_ts`` per video, which ``collate`` concatenates like
``video_grid_thw``. Use ``qwen2.5-vl`` for Qwen2.5-VL checkpoints: under ``qwen2-vl`` their frames' order
is lost.

Loss on assistant turns covers the answer and its ``<|im_end|>`` (so the model learns to stop); the
``all`` mode, the paper's Idefics3 choice, covers every token but padding and visual tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidtune.models.family import LabelMode, VideoLLMFamily, register, to_chat

VIDEO = [{"type": "video"}]  # the clip's frames go in as one video content part


class Qwen2VLFamily(VideoLLMFamily):
    name = "qwen2-vl"
    vision_prefixes = ("model.visual.", "visual.")
    projector_prefixes = ("model.visual.merger.", "visual.merger.")
    language_prefixes = ("model.language_model.", "model.embed_tokens.", "lm_head.", "language_model.")
    assistant_start = "<|im_start|>assistant\n"
    turn_end = "<|im_end|>"
    visual_tokens = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")

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
            to_chat(messages, VIDEO), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        batch = processor(
            text=[text],
            videos=[list(frames)] if len(frames) else None,
            return_tensors="pt",
            **(self.video_kwargs(frames) if len(frames) else {}),
        )
        return self.sample(processor, batch, labels)

    def video_kwargs(self, frames: Sequence[np.ndarray]) -> dict[str, Any]:
        """Extra processor arguments for a clip's video: none (Qwen2-VL numbers temporal patches 0, 1, ...)"""
        return {}

    def build_tiny(self, out_dir: str | Path, corpus: Iterable[str]) -> Path:
        from vidtune.models.tiny import build_tiny_qwen2vl

        return build_tiny_qwen2vl(out_dir, corpus)


QWEN2_VL = register(Qwen2VLFamily())


class Qwen25VLFamily(Qwen2VLFamily):
    name = "qwen2.5-vl"
    # The rate frames are taken as sampled at: Qwen2.5-VL's own (qwen-vl-utils' default of 2 fps). The
    # record's frame_times do not reach encode, so a clip sampled at another rate is read as 2 fps.
    frames_per_second = 2.0

    def video_kwargs(self, frames: Sequence[np.ndarray]) -> dict[str, Any]:
        """The clip's frame rate, from which the processor computes ``second_per_grid_ts``.

        Qwen2.5-VL spaces temporal patch ``i`` at ``int(i * tokens_per_second * second_per_grid_ts)`` in
        its M-RoPE. Given bare frames the processor assumes 24 fps (2 frames a patch: 1/12 s), which with
        the released ``tokens_per_second`` of 2 puts the first 6 temporal patches at one position, and
        the language model can no longer tell the frames' order. At 2 fps a patch is one second apart.
        """
        return {"video_metadata": [{"fps": self.frames_per_second, "total_num_frames": len(frames)}]}

    def build_tiny(self, out_dir: str | Path, corpus: Iterable[str]) -> Path:
        from vidtune.models.tiny import build_tiny_qwen25vl

        return build_tiny_qwen25vl(out_dir, corpus)


QWEN25_VL = register(Qwen25VLFamily())
