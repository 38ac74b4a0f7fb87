"""`vidtune run`: stages in order under one MLflow pipeline run; a stage whose output is complete from
an earlier run with the same config is skipped, and anything that makes its output stale (a changed
config, a lost shard, an upstream stage run again, `--force`) runs it again. Also where settings come
from: the environment fills what a job file leaves out, as a cluster's runtime env does."""

from __future__ import annotations

import json

import mlflow
import pytest

from conftest import llava_entry
from vidtune.config import validate_job
from vidtune.stages import run_pipeline
from vidtune.storage import Storage


@pytest.fixture()
def job_raw(tmp_path, video_dir):
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps(llava_entry(f"c{i}", ["a.mp4", "b.mp4", "c.mp4"][i % 3])) + "\n" for i in range(6))
    )
    return {
        "name": "pipe",
        "stages": ["prepare", "mix"],
        "storage": {"root": str(tmp_path / "data")},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "prepare": {
            "sampling": {"frames": 2},
            "max_pixels": 64 * 64,
            "datasets": [
                {"name": "clips", "manifest": str(tmp_path / "m.jsonl"), "video_root": str(video_dir)}
            ],
        },
        "mix": {"name": "mixed", "sources": [{"dataset": "clips", "count": 4}]},
    }


def ran(results) -> list[str]:
    """The stages that ran (a skipped stage's result is its completion record)."""
    from vidtune.completion import StageRecord

    return [s for s, r in results.items() if not isinstance(r, StageRecord)]


def test_complete_stages_are_skipped_until_their_output_is_stale(job_raw, ray_local):
    out: list[str] = []
    job = validate_job(job_raw)
    assert ran(run_pipeline(job, echo=out.append)) == ["prepare", "mix"]
    first_prepare = Storage(job.storage).read_bytes("datasets", "clips", "dataset.json")

    out.clear()
    results = run_pipeline(job, echo=out.append)
    assert ran(results) == []
    assert any(line.startswith("== prepare skipped: output complete from run") for line in out)
    assert Storage(job.storage).read_bytes("datasets", "clips", "dataset.json") == first_prepare
    # The skipped stages still appear under the pipeline run, pointing at the runs that made the output.
    mlflow.set_tracking_uri(job.tracking.uri)
    skipped = mlflow.search_runs(
        experiment_names=["pipe"], filter_string="tags.`vidtune.skipped` = 'true'", output_format="list"
    )
    assert sorted(r.data.tags["vidtune.stage"] for r in skipped) == ["mix", "prepare"]
    assert {r.data.tags["vidtune.output_of"] for r in skipped} == {
        results["prepare"].run_id,
        results["mix"].run_id,
    }

    # A changed config runs that stage only; the stage before it is still complete.
    job_raw["mix"]["seed"] = 7
    out.clear()
    assert ran(run_pipeline(validate_job(job_raw), echo=out.append)) == ["mix"]
    assert "== mix runs again: its config changed ==" in out

    # A lost shard makes prepare incomplete; mix runs again too, because its input is new.
    storage = Storage(job.storage)
    storage.remove(storage.list("datasets", "clips", "shards")[0])
    assert ran(run_pipeline(validate_job(job_raw), echo=out.append)) == ["prepare", "mix"]

    assert ran(run_pipeline(validate_job(job_raw), echo=out.append, force=True)) == ["prepare", "mix"]
    assert ran(run_pipeline(validate_job(job_raw), echo=out.append)) == []


def test_a_failed_stage_leaves_no_record(job_raw, ray_local):
    job_raw["mix"]["sources"][0]["count"] = 100  # more clips than prepare makes: mix fails
    job = validate_job(job_raw)
    with pytest.raises(Exception, match="clips"):
        run_pipeline(job, echo=lambda s: None)
    storage = Storage(job.storage)
    assert storage.exists("stages", "pipe", "prepare.json")
    assert not storage.exists("stages", "pipe", "mix.json")
    job_raw["mix"]["sources"][0]["count"] = 3
    assert ran(run_pipeline(validate_job(job_raw), echo=lambda s: None)) == ["mix"]


def test_the_environment_fills_what_the_job_file_leaves_out(monkeypatch):
    monkeypatch.setenv("VIDTUNE_STORAGE_ROOT", "s3://bucket/vidtune")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    job = validate_job({"name": "x"})
    assert job.storage.root == "s3://bucket/vidtune"
    assert job.storage.endpoint_url == "http://127.0.0.1:9000"
    assert job.tracking.uri == "http://127.0.0.1:5000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")  # the S3-specific one wins
    assert validate_job({"name": "x"}).storage.endpoint_url == "http://127.0.0.1:9001"
    # What the job file says wins over the environment.
    pinned = validate_job({"name": "x", "storage": {"root": "/data"}, "tracking": {"uri": "sqlite:///t.db"}})
    assert (pinned.storage.root, pinned.tracking.uri) == ("/data", "sqlite:///t.db")

    for name in ("VIDTUNE_STORAGE_ROOT", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    bare = validate_job({"name": "x"})
    assert (bare.storage.root, bare.storage.endpoint_url, bare.tracking.uri) == (
        "./vidtune-data",
        None,
        "sqlite:///mlflow.db",
    )
