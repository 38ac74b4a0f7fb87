"""`vidtune prepare` end to end on a local Ray: the right frames land in shards, bad inputs land in the
errors table, MLflow has the run, and the same job on a real S3 API gives identical shards."""

from __future__ import annotations

import io
import json

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import VIDEOS, llava_entry
from vidtune.data.sampling import uniform_indices
from vidtune.data.schema import validate
from vidtune.data.shards import load_info, read_dataset, read_errors, shard_paths
from vidtune.data.videogen import frame_index_of
from vidtune.stages import run_stage
from vidtune.storage import Storage

BAD = {
    "corrupt": ("corrupt.mp4", "undecodable"),
    "empty": ("empty.mp4", "empty file"),
    "truncated": ("truncated.mp4", "truncated"),
    "missing": ("nope.mp4", "missing"),
}


def write_manifest(path, video_root_prefix=""):
    lines = [json.dumps(llava_entry(name.split(".")[0], name)) for name, *_ in VIDEOS]
    lines += [json.dumps(llava_entry(k, v[0])) for k, v in BAD.items()]
    lines.insert(2, '{"id": "broken", "video": ')  # line 3: malformed JSON
    text = "\n".join(lines) + "\n"
    if hasattr(path, "write_text"):
        path.write_text(text)
    return text


def prepare_section(manifest, video_root, **extra):
    return {
        "sampling": {"frames": 8},
        "max_pixels": 80 * 60,
        "rows_per_shard": 2,
        "datasets": [{"name": "clips", "manifest": manifest, "video_root": video_root}],
        **extra,
    }


def read_clips(storage: Storage, name: str) -> pa.Table:
    info = load_info(storage, name)
    tables = []
    for p in shard_paths(storage, info):
        with storage.fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables).sort_by("id")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, video_dir, ray_local):
    tmp = tmp_path_factory.mktemp("prep")
    write_manifest(tmp / "m.jsonl")
    from vidtune.config import validate_job

    job = validate_job(
        {
            "name": "prep",
            "storage": {"root": str(tmp / "data")},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
            "prepare": prepare_section(str(tmp / "m.jsonl"), str(video_dir)),
        }
    )
    lines: list[str] = []
    results = run_stage(job, "prepare", echo=lines.append)
    return job, results[0], "\n".join(lines), tmp


def test_right_frames_in_shards(prepared):
    job, result, _, _ = prepared
    storage = Storage(job.storage)
    assert result.info.rows == 3 and result.videos_in == 7
    clips = validate(read_clips(storage, "clips"))
    assert clips["id"].to_pylist() == ["a", "b", "c"]
    for row, (_, frames, _gop, _) in zip(clips.to_pylist(), VIDEOS, strict=True):
        pictures = [Image.open(io.BytesIO(b)) for b in row["frames"]]
        assert all(p.format == "JPEG" and p.size == (80, 60) for p in pictures)
        assert [frame_index_of(np.asarray(p), 160) for p in pictures] == uniform_indices(frames, 8)
        assert row["source"] == "clips" and row["kind"] == "video"
        assert row["messages"][0] == {"role": "user", "content": "<video>\nWhich colour comes first?"}
        meta = json.loads(row["meta"])
        assert meta["frame_indices"] == uniform_indices(frames, 8) and meta["num_frames"] == frames
    # rows_per_shard=2: three clips make two shards
    assert len(result.info.shards) == 2


def test_bad_inputs_are_counted_and_recorded(prepared):
    job, result, summary, _ = prepared
    errors = {r["id"]: r for r in read_errors(Storage(job.storage), "clips").to_pylist()}
    assert result.info.errors == 5
    assert set(errors) == set(BAD) | {""}
    for key, (name, reason) in BAD.items():
        assert errors[key]["reason"].startswith(reason), errors[key]
        assert errors[key]["path"].endswith(name) and errors[key]["stage"] == "prepare"
    assert errors[""]["stage"] == "manifest" and errors[""]["path"].endswith("m.jsonl:3")
    assert "7 videos in -> 3 clips, 5 errors" in summary and "errors.parquet" in summary


def test_mlflow_run_has_counts_and_contact_sheet(prepared):
    job, _, summary, tmp = prepared
    mlflow.set_tracking_uri(job.tracking.uri)
    runs = mlflow.search_runs(experiment_names=["prep"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_id in summary
    run = runs[0]
    assert run.data.metrics["clips_out"] == 3 and run.data.metrics["errors"] == 5
    assert run.data.metrics["videos_in"] == 7 and run.data.metrics["frames_per_s"] > 0
    assert run.data.params["prepare.sampling.frames"] == "8"
    sheet = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="contact_sheets/clips.png", dst_path=str(tmp / "dl")
    )
    img = Image.open(sheet)
    assert img.format == "PNG" and img.width > 300 and img.height > 3 * 60


def test_rerun_replaces_shards(prepared):
    job, first, _, _ = prepared
    again = run_stage(job, "prepare", echo=lambda s: None)[0]
    storage = Storage(job.storage)
    assert again.info.rows == 3
    assert len(storage.list("datasets", "clips", "shards")) == len(again.info.shards) == 2
    assert set(again.info.shards).isdisjoint(first.info.shards)
    assert read_clips(storage, "clips").num_rows == 3
    assert read_dataset(storage, "clips").count() == 3  # what later stages read: dataset.json's shards
    assert not storage.list("_staging")


def _comparable(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    for r in rows:
        meta = json.loads(r.pop("meta"))
        for volatile in ("video", "origin", "decode_seconds", "decoded_by"):
            meta.pop(volatile)
        r["meta"] = meta
    return rows


def test_same_job_on_s3_gives_identical_shards(prepared, video_dir, s3_endpoint, bucket, make_job):
    import fsspec

    job, _, _, tmp = prepared
    s3 = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    for p in video_dir.iterdir():
        s3.put_file(str(p), f"{bucket}/videos/{p.name}")
    s3.pipe_file(f"{bucket}/m.jsonl", write_manifest(None).encode())
    s3_job = make_job(
        storage={"root": f"s3://{bucket}/data", "endpoint_url": s3_endpoint},
        prepare=prepare_section(f"s3://{bucket}/m.jsonl", f"s3://{bucket}/videos"),
    )
    result = run_stage(s3_job, "prepare", echo=lambda s: None)[0]
    assert result.info.uri == f"s3://{bucket}/data/datasets/clips"
    assert result.info.rows == 3 and result.info.errors == 5
    local = read_clips(Storage(job.storage), "clips")
    remote = read_clips(Storage(s3_job.storage), "clips")
    assert _comparable(remote) == _comparable(local)
    assert s3.exists(f"{bucket}/data/datasets/clips/errors.parquet")


def test_videos_spread_over_decoders_while_shards_stay_whole(video_dir, make_job, tmp_path, ray_local):
    """Small decode batches go to every decoder even when one shard holds all the rows (a write that
    bundled rows_per_shard videos into one decode task would leave the second decoder idle)."""
    names = [v[0] for v in VIDEOS] * 2
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps(llava_entry(f"v{i}", n)) + "\n" for i, n in enumerate(names))
    )
    section = prepare_section(str(tmp_path / "m.jsonl"), str(video_dir), batch_size=1, concurrency=2)
    job = make_job(prepare={**section, "rows_per_shard": 256})
    result = run_stage(job, "prepare", echo=lambda s: None)[0]
    assert result.info.rows == 6 and len(result.info.shards) == 1
    metas = [json.loads(m) for m in read_clips(Storage(job.storage), "clips")["meta"].to_pylist()]
    assert len({m["decoded_by"] for m in metas}) == 2
