"""The Ray Data stage that turns video manifests into clip shards: ``vidtune prepare``.

manifests (driver) ─▶ from_items ─▶ map_batches(decode_videos) ─▶ ClipDatasink ─▶ commit

Manifests are small text, read on the driver so that a malformed line is reported with its file and line
number before any video is opened. Decoding is the expensive part and runs as Ray tasks that each hold
``prepare.num_cpus`` CPUs; on a mixed cluster that puts it on CPU nodes.
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vidtune.config import JobConfig, PrepareConfig, SamplingConfig, VideoDatasetConfig
from vidtune.data.contactsheet import contact_sheet
from vidtune.data.decode import VideoDecodeError, make_reader
from vidtune.data.manifests import ManifestError, ManifestRecord, read_manifest
from vidtune.data.shards import DECODED_SCHEMA, ClipDatasink, DatasetInfo, commit, shard_paths, staging_dir
from vidtune.storage import Storage, filesystem, is_remote

STAGE = "prepare"
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process decoded a clip, for tracing slow nodes


def encode_jpeg(rgb: Any, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _open_video(uri: str, endpoint_url: str | None) -> Any:
    """A local path as it is (the decoder opens it itself); remote files as seekable file objects,
    so that seeking reads byte ranges instead of downloading the video."""
    fs, path = filesystem(uri, endpoint_url)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise VideoDecodeError("missing: no such file") from None
    if not size:
        raise VideoDecodeError("empty file (0 bytes)")
    if not is_remote(uri):
        return path
    return fs.open(path, "rb", block_size=2**20, cache_type="readahead")


def decode_videos(
    batch: pa.Table,
    *,
    sampling: dict[str, Any],
    max_pixels: int,
    jpeg_quality: int,
    backend: str,
    endpoint_url: str | None,
    source: str,
) -> pa.Table:
    """Ray Data ``map_batches`` function: manifest records in, clip rows (or error rows) out."""
    cfg = SamplingConfig(**sampling)
    reader = make_reader(backend)
    rows = []
    for rec in batch.to_pylist():
        row: dict[str, Any] = {
            "id": rec["id"],
            "source": source,
            "kind": "video",
            "messages": json.loads(rec["messages"]),
            "frames": [],
            "frame_times": [],
            "meta": "{}",
            "error": None,
            "error_path": None,
            "error_stage": None,
        }
        started = time.perf_counter()
        handle = None
        try:
            handle = _open_video(rec["video"], endpoint_url)
            segment = (rec.get("start"), rec.get("end"))
            clip = reader.read(handle, cfg, max_pixels, segment if segment != (None, None) else None)
            row["frames"] = [encode_jpeg(f, jpeg_quality) for f in clip.frames]
            row["frame_times"] = clip.times
            h, w = clip.frames[0].shape[:2]
            row["meta"] = json.dumps(
                {
                    "video": rec["video"],
                    "origin": rec["origin"],
                    "backend": reader.name,
                    "fps": clip.meta.fps,
                    "num_frames": clip.meta.num_frames,
                    "duration": round(clip.meta.duration, 3),
                    "width": clip.meta.width,
                    "height": clip.meta.height,
                    "codec": clip.meta.codec,
                    "frame_size": [w, h],
                    "sampling": sampling,
                    "segment": list(segment) if segment != (None, None) else None,
                    "frame_indices": clip.indices,
                    "decoded_frames": clip.decoded,
                    "decoded_by": WORKER,
                    "decode_seconds": round(time.perf_counter() - started, 4),
                }
            )
        except VideoDecodeError as exc:
            row.update(error=exc.reason, error_path=rec["video"], error_stage=STAGE)
        except Exception as exc:  # noqa: BLE001 — one bad video must not fail the job
            row.update(
                error=f"unexpected {type(exc).__name__}: {exc}"[:500],
                error_path=rec["video"],
                error_stage=STAGE,
            )
        finally:
            if handle is not None and not isinstance(handle, str):
                handle.close()
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


class BatchWorker:
    """Ray Data's callable class around a plain batch function: one per actor, holding its settings
    (and whatever the function caches per process, such as fonts and rendered glyphs)."""

    def __init__(self, fn: Callable[..., pa.Table], **settings: Any):
        self.fn = fn
        self.settings = settings

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(batch, **self.settings)


def collect_manifests(ds: VideoDatasetConfig, endpoint_url: str | None) -> tuple[list[dict], list[dict]]:
    """Manifest records ready for Ray, and error rows for lines that cannot become samples.

    A repeated id keeps its first occurrence; the later ones are errors (ids are unique in a dataset).
    """
    records: list[dict] = []
    errors: list[dict] = []
    seen: dict[str, str] = {}
    for uri in ds.manifests:
        for item in read_manifest(uri, fmt=ds.format, video_root=ds.video_root, endpoint_url=endpoint_url):
            if isinstance(item, ManifestError):
                errors.append(
                    {"id": item.id, "path": item.origin, "stage": "manifest", "reason": item.reason}
                )
                continue
            assert isinstance(item, ManifestRecord)
            if item.id in seen:
                errors.append(
                    {
                        "id": item.id,
                        "path": item.origin,
                        "stage": "manifest",
                        "reason": f"duplicate id (first at {seen[item.id]})",
                    }
                )
                continue
            seen[item.id] = item.origin
            records.append(
                {
                    "id": item.id,
                    "video": item.video,
                    "origin": item.origin,
                    "messages": json.dumps(item.messages),
                }
            )
    return records, errors


@dataclass
class PreparedDataset:
    info: DatasetInfo
    videos_in: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.info.frames / self.seconds if self.seconds else 0.0

    @property
    def videos_per_s(self) -> float:
        return self.videos_in / self.seconds if self.seconds else 0.0


def map_to_shards(
    storage: Storage,
    name: str,
    records: list[dict],
    fn: Callable[..., pa.Table],
    settings: dict[str, Any],
    cfg: Any,
) -> tuple[list[dict[str, Any]], str]:
    """Run ``fn(batch, **settings)`` (records in, clip or error rows out) over ``records`` as a Ray
    Data actor pool and write its rows into a staging folder; returns what the write tasks staged.

    ``cfg`` gives ``batch_size``, ``num_cpus``, ``concurrency`` and ``rows_per_shard``. Workers are an
    actor pool, not a task stage: a task stage is fused with the write and handed ``rows_per_shard``
    rows per task (one task for a small set), while actors keep small batches and shards stay whole.
    """
    import ray.data

    from vidtune.cluster import cpu_workers, data_task_args

    staging = staging_dir(storage, name)
    sink = ClipDatasink(storage.cfg, staging, cfg.rows_per_shard)
    if records:
        blocks = max(1, math.ceil(len(records) / cfg.batch_size))
        pool = cfg.concurrency or cpu_workers(cfg.num_cpus)
        rows = ray.data.from_items(records, override_num_blocks=blocks).map_batches(
            BatchWorker,
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            num_cpus=cfg.num_cpus,
            compute=ray.data.ActorPoolStrategy(size=min(pool, blocks)),
            fn_constructor_kwargs={"fn": fn, **settings},
            **data_task_args(),
        )
        rows.write_datasink(sink)
    return sink.returns, staging


def prepare_dataset(ds_cfg: VideoDatasetConfig, cfg: PrepareConfig, storage: Storage) -> PreparedDataset:
    """Decode one manifest set into a committed clip dataset (the Ray Data pipeline)."""
    started = time.perf_counter()
    records, manifest_errors = collect_manifests(ds_cfg, storage.endpoint_url)
    staged, staging = map_to_shards(
        storage,
        ds_cfg.name,
        records,
        decode_videos,
        {
            "sampling": cfg.sampling.model_dump(),
            "max_pixels": cfg.max_pixels,
            "jpeg_quality": cfg.jpeg_quality,
            "backend": cfg.backend,
            "endpoint_url": storage.endpoint_url,
            "source": ds_cfg.source or ds_cfg.name,
        },
        cfg,
    )
    seconds = time.perf_counter() - started
    videos = len(records)
    info = commit(
        storage,
        ds_cfg.name,
        staged,
        stage=STAGE,
        extra_errors=manifest_errors,
        staging=staging,
        stats={"videos_in": videos, "seconds": round(seconds, 3)},
        config={
            "dataset": ds_cfg.model_dump(),
            "sampling": cfg.sampling.model_dump(),
            "max_pixels": cfg.max_pixels,
            "jpeg_quality": cfg.jpeg_quality,
            "backend": cfg.backend,
        },
    )
    return PreparedDataset(info, videos, seconds)


def sample_rows(storage: Storage, info: DatasetInfo, n: int) -> list[dict]:
    """The first ``n`` clips of a dataset, read from its first shards only (for pictures)."""
    rows: list[dict] = []
    for path in shard_paths(storage, info):
        if len(rows) >= n:
            break
        with storage.fs.open(path, "rb") as f:
            rows += (
                pq.read_table(f, columns=["id", "frames", "frame_times"]).slice(0, n - len(rows)).to_pylist()
            )
    return rows


def prepare(job: JobConfig, tracker: Any) -> list[PreparedDataset]:
    """``vidtune prepare``: every dataset of the job's ``prepare`` section, logged to ``tracker``."""
    from vidtune.cluster import ensure_ray

    cfg: PrepareConfig = job.section(STAGE)
    storage = Storage(job.storage)
    ensure_ray(job.ray)
    results = []
    for ds_cfg in cfg.datasets:
        result = prepare_dataset(ds_cfg, cfg, storage)
        info = result.info
        results.append(result)
        tracker.metrics(
            {
                f"{info.name}.videos_in": result.videos_in,
                f"{info.name}.clips_out": info.rows,
                f"{info.name}.errors": info.errors,
                f"{info.name}.frames": info.frames,
                f"{info.name}.frames_per_s": result.frames_per_s,
                f"{info.name}.videos_per_s": result.videos_per_s,
            }
        )
        tracker.table(_errors_of(storage, info), f"errors/{info.name}.json")
        if cfg.contact_sheet_clips and info.rows:
            sheet = contact_sheet(sample_rows(storage, info, cfg.contact_sheet_clips))
            tracker.image(sheet, f"contact_sheets/{info.name}.png")
    tracker.metrics(
        {
            "videos_in": sum(r.videos_in for r in results),
            "clips_out": sum(r.info.rows for r in results),
            "errors": sum(r.info.errors for r in results),
            "frames_per_s": sum(r.info.frames for r in results) / max(1e-9, sum(r.seconds for r in results)),
        }
    )
    return results


def _errors_of(storage: Storage, info: DatasetInfo) -> list[dict]:
    from vidtune.data.shards import read_errors

    return read_errors(storage, info.name).to_pylist() if info.errors else []
