"""Clip datasets on storage: Parquet shards committed atomically, with their errors table beside them.

Layout under ``storage.root``::

    datasets/NAME/dataset.json         the commit record: shard list, counts, stage, config
    datasets/NAME/shards/part-*.parquet
    datasets/NAME/errors.parquet       one row per input that did not become a clip
    _staging/NAME-RUN/                 where write tasks put shards before the commit

Ray Data write tasks write to a private staging folder; only when every task has finished does the
driver move the shards into place and write ``dataset.json`` (one atomic put). A reader that follows
``dataset.json`` (``read_dataset``) sees the old dataset or the new one, never a mix or a half-written
shard; a rerun replaces the shards instead of adding to them.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from vidtune.config import StorageConfig
from vidtune.data.schema import CLIP_SCHEMA, ERRORS_SCHEMA, validate
from vidtune.storage import Storage

DECODED_SCHEMA = pa.schema(
    list(CLIP_SCHEMA)
    + [
        pa.field("error", pa.string()),
        pa.field("error_path", pa.string()),
        pa.field("error_stage", pa.string()),
    ]
)


def dataset_parts(name: str, *rest: str) -> tuple[str, ...]:
    return ("datasets", name, *rest)


@dataclass
class DatasetInfo:
    """What ``dataset.json`` records about a committed dataset."""

    name: str
    uri: str
    shards: list[str]
    rows: int
    errors: int
    frames: int
    stage: str
    created: float = field(default_factory=time.time)
    stats: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def errors_uri(self) -> str:
        return posixpath.join(self.uri, "errors.parquet")


class ClipDatasink(Datasink):
    """Writes clip rows into shards in a staging folder; rows carrying an ``error`` are split off.

    Each write task returns the shards it wrote and its error rows (small: no frames), and the driver
    commits them with :func:`commit` once all tasks are done.
    """

    def __init__(
        self, storage: StorageConfig, staging: str, rows_per_shard: int, schema: pa.Schema = CLIP_SCHEMA
    ):
        self.storage_cfg = storage
        self.staging = staging
        self.rows_per_shard = rows_per_shard
        self.schema = schema
        self.returns: list[dict[str, Any]] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        storage = Storage(self.storage_cfg)
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        files: list[str] = []
        errors: list[dict[str, Any]] = []
        rows = frames = 0
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
            if "error" in table.column_names:
                failed = pc.invert(pc.is_null(table["error"]))
                bad = table.filter(failed)
                for row in bad.select(["id", "error_path", "error_stage", "error"]).to_pylist():
                    errors.append(
                        {
                            "id": row["id"],
                            "path": row["error_path"],
                            "stage": row["error_stage"],
                            "reason": row["error"],
                        }
                    )
                table = table.filter(pc.invert(failed))
            table = validate(table, self.schema)
            fs = storage.arrow_fs()
            storage.fs.makedirs(self.staging, exist_ok=True)
            for j, start in enumerate(range(0, table.num_rows, self.rows_per_shard)):
                part = table.slice(start, self.rows_per_shard)
                path = posixpath.join(self.staging, f"task-{ctx.task_idx:05d}-{j:03d}.parquet")
                pq.write_table(part, path, filesystem=fs)
                files.append(path)
            rows = table.num_rows
            frames = int(pc.sum(pc.list_value_length(table["frames"])).as_py() or 0)
        return {"files": files, "errors": errors, "rows": rows, "frames": frames}

    def on_write_complete(self, write_result: Any) -> None:
        self.returns = list(write_result.write_returns)


def staging_dir(storage: Storage, name: str) -> str:
    return storage.path("_staging", f"{name}-{uuid.uuid4().hex[:8]}")


def commit(
    storage: Storage,
    name: str,
    staged: list[dict[str, Any]],
    *,
    stage: str,
    extra_errors: list[dict[str, Any]] = (),
    stats: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    staging: str | None = None,
) -> DatasetInfo:
    """Move staged shards into ``datasets/NAME``, write its errors table and then ``dataset.json``."""
    run = uuid.uuid4().hex[:8]
    files = sorted(f for r in staged for f in r["files"])
    shards = []
    for k, src in enumerate(files):
        rel = f"shards/part-{run}-{k:05d}.parquet"
        storage.move(src, storage.path(*dataset_parts(name, rel)))
        shards.append(rel)
    errors = list(extra_errors) + [e for r in staged for e in r["errors"]]
    table = pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(sink.getvalue().to_pybytes(), *dataset_parts(name, "errors.parquet"))
    info = DatasetInfo(
        name=name,
        uri=storage.uri(*dataset_parts(name)),
        shards=shards,
        rows=sum(r["rows"] for r in staged),
        errors=len(errors),
        frames=sum(r["frames"] for r in staged),
        stage=stage,
        stats=stats or {},
        config=config or {},
    )
    storage.write_bytes(json.dumps(asdict(info), indent=2).encode(), *dataset_parts(name, "dataset.json"))
    # Only now that dataset.json names the new shards may the old ones go.
    keep = {storage.path(*dataset_parts(name, s)) for s in shards}
    for old in storage.list(*dataset_parts(name, "shards")):
        if old not in keep:
            storage.remove(old)
    if staging:
        storage.remove(staging, recursive=True)
    return info


def load_info(storage: Storage, name: str) -> DatasetInfo:
    if not storage.exists(*dataset_parts(name, "dataset.json")):
        raise FileNotFoundError(
            f"no dataset '{name}' under {storage.uri('datasets')} (run the stage that makes it)"
        )
    data = json.loads(storage.read_bytes(*dataset_parts(name, "dataset.json")))
    return DatasetInfo(**data)


def shard_paths(storage: Storage, info: DatasetInfo) -> list[str]:
    """Paths inside ``storage.fs`` of a dataset's committed shards."""
    return [storage.path(*dataset_parts(info.name, s)) for s in info.shards]


def read_dataset(storage: Storage, name: str, columns: list[str] | None = None) -> Any:
    """A committed dataset as a Ray Dataset (only the shards ``dataset.json`` names)."""
    import ray.data

    info = load_info(storage, name)
    if not info.shards:
        return ray.data.from_arrow(CLIP_SCHEMA.empty_table().select(columns or CLIP_SCHEMA.names))
    return ray.data.read_parquet(shard_paths(storage, info), filesystem=storage.arrow_fs(), columns=columns)


def read_errors(storage: Storage, name: str) -> pa.Table:
    with storage.fs.open(storage.path(*dataset_parts(name, "errors.parquet")), "rb") as f:
        return pq.read_table(f)
