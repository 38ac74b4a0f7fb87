"""Preprocessing on Ray Data: clip shards in, model-ready samples out (CPU workers, not trainers).

A map stage decodes the stored frames (JPEG or PNG) and runs the family's processor: chat template,
tokens, placeholder expansion, label masking and pixel tensors. Training workers then only pad, stack
and step. Samples longer than ``max_length`` are dropped and counted, never cut through their visual
tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class EncodeClips:
    """One processor per Ray actor: clip rows in, encoded samples out (as numpy arrays)."""

    def __init__(
        self,
        model_path: str,
        family: str,
        labels: str = "assistant",
        max_length: int = 4096,
        endpoint_url: str | None = None,
    ):
        from transformers import AutoProcessor

        from vidtune.models.family import get_family
        from vidtune.storage import local_folder

        self.processor = AutoProcessor.from_pretrained(local_folder(model_path, endpoint_url))
        self.family = get_family(family)
        self.labels = labels
        self.max_length = max_length

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        from vidtune.data.schema import decode_frames

        out: dict[str, list] = {"id": [], "too_long": [], "length": []}
        encoded = []
        for row in batch.select(["id", "frames", "messages"]).to_pylist():
            frames = decode_frames(row["frames"])
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


_PROCESSORS: dict[tuple, EncodeClips] = {}


def encode_batch(batch: pa.Table, **kwargs: Any) -> dict[str, Any]:
    """:class:`EncodeClips` as a Ray Data task function; the processor loads once per worker process
    (Ray reuses task processes), so tasks cost no more than an actor's calls."""
    key = tuple(sorted(kwargs.items()))
    if key not in _PROCESSORS:
        _PROCESSORS[key] = EncodeClips(**kwargs)
    return _PROCESSORS[key](batch)


class Encoder:
    """The preprocessing stage as a function of a clip dataset (picklable: Ray Train's ingest runs it
    once per rank, see :class:`vidtune.train.ingest.RankedDataConfig`).

    Tasks, not an actor pool: every rank runs its own pipeline at the same time, and Ray Data gives
    each a share of the CPUs left beside the trainers; an actor would hold its CPU for good, and with
    one CPU a share the pipeline's reads could never be scheduled. As tasks, the read, the id filter
    and the encoding fuse into one task per block."""

    def __init__(
        self,
        model_path: str,
        family: str,
        labels: str = "assistant",
        max_length: int = 4096,
        concurrency: int | None = None,
        num_cpus: float = 1.0,
        batch_size: int = 8,
        resources: dict[str, float] | None = None,
        endpoint_url: str | None = None,
    ):
        self.kwargs = {
            "model_path": model_path,
            "family": family,
            "labels": labels,
            "max_length": max_length,
            "endpoint_url": endpoint_url,
        }
        self.concurrency, self.num_cpus, self.batch_size = concurrency, num_cpus, batch_size
        # Held here, not read from vidtune.cluster: this object runs in Ray Train's controller process.
        self.resources = resources or None

    def __call__(self, clips: Any) -> Any:
        return clips.map_batches(
            encode_batch,
            fn_kwargs=self.kwargs,
            batch_size=self.batch_size,
            batch_format="pyarrow",
            num_cpus=self.num_cpus,
            concurrency=self.concurrency,
            resources=self.resources,
        )


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
