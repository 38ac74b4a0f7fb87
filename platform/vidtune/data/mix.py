"""``vidtune mix``: named clip datasets combined by counts or ratios into a new, shuffled dataset.

The choice of rows is made on the driver from the ``id`` columns alone (Parquet reads just that column),
with a seeded generator, so the same job file always picks the same rows in the same order. Ray Data
then streams the chosen rows, orders them and writes the new shards; frames never pass through the
driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidtune.config import JobConfig, MixConfig
from vidtune.data.shards import ClipDatasink, DatasetInfo, commit, load_info, shard_paths, staging_dir
from vidtune.storage import Storage

STAGE = "mix"
ORDER = "__mix_order"


class MixError(ValueError):
    pass


@dataclass
class MixPart:
    dataset: str
    available: int
    requested: int
    taken: int
    duplicates: int


@dataclass
class MixResult:
    info: DatasetInfo
    parts: list[MixPart]
    seconds: float


def _ids(storage: Storage, info: DatasetInfo) -> list[str]:
    ids: list[str] = []
    for path in shard_paths(storage, info):
        with storage.fs.open(path, "rb") as f:
            ids += pq.read_table(f, columns=["id"])["id"].to_pylist()
    return ids


def plan_mix(
    cfg: MixConfig, ids_by_dataset: dict[str, list[str]]
) -> tuple[dict[str, dict[str, int]], list[MixPart]]:
    """Which ids to take from each dataset and their place in the mix: ``{dataset: {id: order}}``.

    Sources are taken in the order the job lists them; an id already taken (from an earlier source, or
    repeated) is a duplicate and is not offered again. Asking for more rows than a dataset has left is
    an error, not a silent shortfall.
    """
    rng = np.random.default_rng(cfg.seed)
    taken: set[str] = set()
    picks: dict[str, list[str]] = {}
    parts = []
    for src in cfg.sources:
        ids = ids_by_dataset[src.dataset]
        pool, dupes = [], 0
        for i in ids:
            if i in taken:
                dupes += 1
            else:
                taken.add(i)
                pool.append(i)
        if src.count is not None:
            want = src.count
        elif src.ratio is not None:
            want = int(round(src.ratio * (cfg.total or 0)))
        else:
            want = len(pool)
        if want > len(pool):
            raise MixError(
                f"mix.sources: dataset '{src.dataset}' has {len(pool)} clips left after de-duplication, "
                f"the mix asks for {want}"
            )
        chosen = [pool[k] for k in sorted(rng.choice(len(pool), size=want, replace=False))]
        # Ids not chosen go back: a later source may not reuse them either way, since ids identify samples.
        taken.difference_update(set(pool) - set(chosen))
        picks[src.dataset] = chosen
        parts.append(MixPart(src.dataset, len(ids), want, len(chosen), dupes))
    everything = [(d, i) for d, ids in picks.items() for i in ids]
    order = rng.permutation(len(everything))
    plan: dict[str, dict[str, int]] = {d: {} for d in picks}
    for rank, (d, i) in zip(order, everything, strict=True):
        plan[d][i] = int(rank)
    return plan, parts


def _select(batch: pa.Table, *, chosen: dict[str, tuple[pa.Array, pa.Array]]) -> pa.Table:
    """Keep the chosen rows and tag each with its place in the mix.

    ``chosen`` maps each shard path to the (ids, ranks) of its dataset; the path comes from the reader
    (``include_paths``), so one read serves every source and the datasets need no union.
    """
    out = []
    paths = batch["path"]
    for path in pc.unique(paths).to_pylist():
        part = batch.filter(pc.equal(paths, path))
        ids, ranks = chosen[path]
        where = pc.index_in(part["id"], value_set=ids)
        keep = pc.is_valid(where)
        out.append(part.filter(keep).append_column(ORDER, ranks.take(where.filter(keep))))
    return pa.concat_tables(out).drop_columns(["path"])


def mix(job: JobConfig, tracker: Any) -> MixResult:
    """``vidtune mix``: build the mixed dataset the job's ``mix`` section describes."""
    import ray.data

    from vidtune.cluster import ensure_ray

    cfg: MixConfig = job.section(STAGE)
    storage = Storage(job.storage)
    started = time.perf_counter()
    infos = {s.dataset: load_info(storage, s.dataset) for s in cfg.sources}
    plan, parts = plan_mix(cfg, {name: _ids(storage, info) for name, info in infos.items()})
    ensure_ray(job.ray)
    chosen, paths = {}, []
    for name, order in plan.items():
        arrays = (pa.array(list(order), pa.string()), pa.array(list(order.values()), pa.int64()))
        for path in shard_paths(storage, infos[name]):
            chosen[path] = arrays
            paths.append(path)
    staging = staging_dir(storage, cfg.name)
    sink = ClipDatasink(storage.cfg, staging, cfg.rows_per_shard)
    total = sum(len(v) for v in plan.values())
    if total:
        ds = ray.data.read_parquet(paths, filesystem=storage.arrow_fs(), include_paths=True)
        ds = ds.map_batches(_select, batch_format="pyarrow", fn_kwargs={"chosen": chosen})
        # Ranks are 0..total-1, so boundaries at the shard size make each sort partition one shard and
        # spare Ray Data a sampling pass.
        bounds = list(range(cfg.rows_per_shard, total, cfg.rows_per_shard)) or [total]
        ds.sort(ORDER, boundaries=bounds).drop_columns([ORDER]).write_datasink(sink)
    seconds = time.perf_counter() - started
    composition = [vars(p) for p in parts]
    info = commit(
        storage,
        cfg.name,
        sink.returns,
        stage=STAGE,
        staging=staging,
        stats={"seconds": round(seconds, 3), "composition": composition},
        config=cfg.model_dump(),
    )
    tracker.metrics({"rows": info.rows, "duplicates_dropped": sum(p.duplicates for p in parts)})
    tracker.metrics({f"{p.dataset}.taken": p.taken for p in parts})
    tracker.table(composition, "composition.json")
    tracker.image(composition_chart(parts, cfg.name), "composition.png")
    return MixResult(info, parts, seconds)


def composition_chart(parts: list[MixPart], name: str) -> Any:
    """A bar per source dataset: rows taken out of rows available."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(6, 0.6 * len(parts) + 1.2), dpi=100)
    names = [p.dataset for p in parts]
    ax.barh(names, [p.available for p in parts], color="#dddddd", label="available")
    ax.barh(names, [p.taken for p in parts], color="#3b75af", label="taken")
    for y, p in enumerate(parts):
        ax.text(p.taken, y, f" {p.taken}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("clips")
    ax.set_title(f"mix '{name}': {sum(p.taken for p in parts)} clips")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    plt.close(fig)
    return image
