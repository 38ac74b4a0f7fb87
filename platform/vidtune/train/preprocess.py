"""Preprocessing on Ray Data: clip shards in, model-ready samples out (CPU workers, not trainers).

A map stage decodes the stored frames (JPEG or PNG) and runs the family's processor: chat template,
tokens, placeholder expansion, label masking and pixel tensors. Training workers then only pad, stack
and step. Samples longer than ``max_length`` are dropped and counted, never cut through their visual
tokens.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa

SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids")


class EncodeClips:
    """One processor per Ray actor: clip rows in, encoded samples out (as numpy arrays)."""

    def __init__(self, model_path: str, family: str, labels: str = "assistant", max_length: int = 4096):
        from transformers import AutoProcessor

        from vidtune.models.family import get_family

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.family = get_family(family)
        self.labels = labels
        self.max_length = max_length

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        from PIL import Image

        out: dict[str, list] = {"id": [], "too_long": [], "length": []}
        encoded = []
        for row in batch.select(["id", "frames", "messages"]).to_pylist():
            frames = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in row["frames"]]
            enc = self.family.encode(self.processor, frames, row["messages"], labels=self.labels)
            n = int(enc["input_ids"].shape[0])
            out["id"].append(row["id"])
            out["length"].append(n)
            out["too_long"].append(n > self.max_length)
            encoded.append({k: v.numpy() for k, v in enc.items()})
        keys = sorted({k for e in encoded for k in e})
        for key in keys:
            out[key] = [e[key] for e in encoded]
        return out


def to_torch(row: dict[str, Any]) -> dict[str, Any]:
    """A preprocessed row back into the tensors ``collate`` stacks."""
    import torch

    sample = {}
    for key, value in row.items():
        if key in ("id", "too_long", "length"):
            continue
        tensor = torch.as_tensor(np.asarray(value))
        sample[key] = tensor
    return sample
