"""How samples reach the training loop, in an order that a resumed run reproduces exactly.

A seeded permutation of the dataset's ids assigns every row to one rank; each rank's rows come out of
its own streaming Ray Data pipeline (read, keep this rank's ids, encode on CPU actors) in a fixed
order, and a seeded shuffle buffer mixes them per epoch. So a worker never holds its shard in memory,
and the micro-batch at (epoch, position) is the same on every run with the same seed, which is what
lets a resumed run skip exactly the micro-batches it already trained on.

Ray Train's default ingest (``streaming_split``) hands blocks to whichever worker asks first, which is
fast but not reproducible; :class:`RankedDataConfig` replaces it and workers still receive their shard
through ``ray.train.get_dataset_shard``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

try:  # Ray is optional here: the plain-process loop uses only the shuffling helpers below.
    from ray.train import DataConfig
except ImportError:  # pragma: no cover - the GPU benchmark machine has no Ray
    DataConfig = object  # type: ignore[assignment,misc]


def rank_of_ids(ids: Iterable[str], world_size: int, seed: int) -> dict[str, int]:
    """Each id's rank: a seeded permutation of the sorted ids dealt round-robin, so ranks differ in
    size by at most one row."""
    order = sorted(ids)
    if len(set(order)) != len(order):
        raise ValueError("the training dataset has repeated ids; `vidtune mix` writes unique ones")
    random.Random(seed).shuffle(order)
    return {sample_id: k % world_size for k, sample_id in enumerate(order)}


def keep_ids(batch: pa.Table, ids: list[str]) -> pa.Table:
    """The rows of ``batch`` whose id is in ``ids`` (a Ray Data ``map_batches`` function)."""
    return batch.filter(pc.is_in(batch["id"], value_set=pa.array(ids, pa.string())))


class RankedDataConfig(DataConfig):
    """Gives rank r the rows :func:`rank_of_ids` assigns to it, each rank through its own pipeline.

    ``encode`` turns a clip dataset into encoded samples (the preprocessing stage); it runs after the
    id filter, so each row is decoded and tokenized once, by the pipeline of the rank that trains on it.
    """

    def __init__(self, encode: Callable[[Any], Any], seed: int = 0, ids: list[str] | None = None):
        super().__init__()
        self.encode = encode
        self.seed = seed
        # The driver can read the id column straight from the shards' footers and pages in
        # milliseconds; without it, a Ray Data pass over the column finds them.
        self.ids = ids

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # noqa: ANN001
        out: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ids = (
                self.ids if self.ids is not None else [r["id"] for r in ds.select_columns(["id"]).iter_rows()]
            )
            ranks = rank_of_ids(ids, world_size, self.seed)
            if len(ids) < world_size:
                raise ValueError(f"dataset '{name}' has {len(ids)} rows for {world_size} training workers")
            for rank in range(world_size):
                mine = [i for i, r in ranks.items() if r == rank]
                part = self.encode(
                    ds.map_batches(keep_ids, fn_kwargs={"ids": mine}, batch_format="pyarrow", batch_size=None)
                )
                options = self._resolve_execution_options(name)
                options.preserve_order = True  # a fixed order per rank: resumable to the micro-batch
                part.context.execution_options = options
                out[rank][name] = part.iterator()
        return out


def shuffled(rows: Iterable[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """A seeded shuffle through a buffer of ``buffer`` rows (a full shuffle when it holds them all)."""
    pool: list[Any] = []
    for row in rows:
        pool.append(row)
        if len(pool) >= buffer:
            k = rng.randrange(len(pool))
            pool[k], pool[-1] = pool[-1], pool[k]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def micro_batches(rows: Iterable[Any], size: int, buffer: int, seed: int, epoch: int) -> Iterator[list[Any]]:
    """One epoch of micro-batches of ``size`` samples, shuffled by (``seed``, ``epoch``); the last one
    may be smaller (no sample is dropped)."""
    group: list[Any] = []
    for row in shuffled(rows, buffer, random.Random(seed * 100_003 + epoch)):
        group.append(row)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
