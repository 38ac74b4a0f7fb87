"""Held-out accuracy: a clip dataset the model did not train on, answered before and after training.

The quick check a user wants at the end of ``vidtune train`` ("did it learn the task?"), not a
benchmark: each clip's question is answered greedily and counts as right when the answer matches the
reference after case, punctuation and spacing are normalized. Benchmarks live in ``vidtune eval``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vidtune.storage import Storage


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


@dataclass
class HeldOut:
    dataset: str
    right: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.right / len(self.rows) if self.rows else 0.0

    def line(self) -> str:
        return f"{self.right}/{len(self.rows)} right ({self.accuracy:.0%})"


def clips(storage: Storage, dataset: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` clips of a committed dataset, by id (the same ones on every call)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidtune.data.shards import load_info, shard_paths

    tables = []
    for path in shard_paths(storage, load_info(storage, dataset)):
        with storage.fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=["id", "frames", "messages"]))
    return pa.concat_tables(tables).sort_by("id").slice(0, limit).to_pylist()


def heldout_accuracy(
    model_path: str, family: str, rows: list[dict[str, Any]], dataset: str, max_new_tokens: int = 16
) -> HeldOut:
    """Answer each clip's last question with the model at ``model_path``; compare with its answer."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vidtune.data.schema import decode_frames
    from vidtune.models.family import get_family, load_kwargs

    adapter = get_family(family)
    use_gpu = torch.cuda.is_available()
    model = AutoModelForImageTextToText.from_pretrained(model_path, **load_kwargs(use_gpu))
    model.to("cuda" if use_gpu else "cpu").eval()
    processor = AutoProcessor.from_pretrained(model_path)
    out = HeldOut(dataset)
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        answer = adapter.generate(
            model, processor, decode_frames(row["frames"]), messages[:last], max_new_tokens
        )
        right = normalize(answer) == normalize(messages[last]["content"])
        out.right += right
        out.rows.append(
            {"id": row["id"], "reference": messages[last]["content"], "output": answer, "right": right}
        )
    return out
