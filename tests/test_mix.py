"""`vidtune mix`: counts and ratios are honoured, the shuffle is seeded, ids are de-duplicated, and the
composition is in MLflow."""

from __future__ import annotations

import mlflow
import pyarrow.parquet as pq
import pytest

from conftest import llava_entry
from vidtune.config import MixConfig
from vidtune.data.mix import MixError, plan_mix
from vidtune.data.shards import load_info, shard_paths
from vidtune.stages import run_stage
from vidtune.storage import Storage


def test_plan_counts_ratios_and_duplicates():
    cfg = MixConfig(
        name="m", seed=1, total=10, sources=[{"dataset": "a", "ratio": 0.6}, {"dataset": "b", "count": 3}]
    )
    ids = {"a": [f"a{i}" for i in range(20)], "b": ["a0", "a1", "a2"] + [f"b{i}" for i in range(5)]}
    plan, parts = plan_mix(cfg, ids)
    assert [(p.dataset, p.taken) for p in parts] == [("a", 6), ("b", 3)]
    # ids a0-a2 are offered by b too; only those a took count as duplicates there
    assert parts[1].duplicates == len({"a0", "a1", "a2"} & set(plan["a"]))
    assert sorted(r for d in plan.values() for r in d.values()) == list(range(9))
    assert not set(plan["a"]) & set(plan["b"])
    again, _ = plan_mix(cfg, ids)
    assert again == plan
    other, _ = plan_mix(cfg.model_copy(update={"seed": 2}), ids)
    assert other != plan


def test_asking_for_more_than_there_is_fails():
    cfg = MixConfig(name="m", sources=[{"dataset": "a", "count": 5}])
    with pytest.raises(MixError, match="'a' has 3 clips left"):
        plan_mix(cfg, {"a": ["1", "2", "3"]})


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, video_dir, ray_local):
    import json

    from vidtune.config import validate_job

    tmp = tmp_path_factory.mktemp("mix")
    names = ["a.mp4", "b.mp4", "c.mp4"]
    (tmp / "x.jsonl").write_text(
        "".join(json.dumps(llava_entry(f"x{i}", names[i % 3])) + "\n" for i in range(9))
    )
    # y shares ids y0..y5 and two of x's ids
    (tmp / "y.jsonl").write_text(
        "".join(
            json.dumps(llava_entry(i, names[k % 3])) + "\n"
            for k, i in enumerate(["x0", "x1"] + [f"y{i}" for i in range(6)])
        )
    )
    raw = {
        "name": "mixing",
        "storage": {"root": str(tmp / "data")},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
        "prepare": {
            "sampling": {"frames": 2},
            "max_pixels": 64 * 48,
            "datasets": [
                {"name": "x", "manifest": str(tmp / "x.jsonl"), "video_root": str(video_dir)},
                {"name": "y", "manifest": str(tmp / "y.jsonl"), "video_root": str(video_dir)},
            ],
        },
    }
    run_stage(validate_job(raw), "prepare", echo=lambda s: None)
    return raw, tmp


def mixed_ids(job, name):
    storage = Storage(job.storage)
    ids = []
    for p in shard_paths(storage, load_info(storage, name)):
        ids += pq.read_table(p, columns=["id"])["id"].to_pylist()
    return ids


def test_mix_end_to_end(two_datasets):
    from vidtune.config import validate_job

    raw, tmp = two_datasets
    mix = {
        "name": "xy",
        "seed": 3,
        "rows_per_shard": 4,
        "sources": [{"dataset": "x", "count": 5}, {"dataset": "y"}],
    }
    job = validate_job({**raw, "mix": mix})
    result = run_stage(job, "mix", echo=lambda s: None)
    ids = mixed_ids(job, "xy")
    assert len(ids) == len(set(ids)) == result.info.rows
    dupes = sum(p.duplicates for p in result.parts)
    assert [(p.dataset, p.taken) for p in result.parts] == [("x", 5), ("y", 8 - dupes)]
    # y's own x0/x1 fill in only where x did not take them: x ids = x's 5 + y's non-duplicate two
    assert len([i for i in ids if i.startswith("x")]) == 5 + 2 - dupes
    assert len([i for i in ids if i.startswith("y")]) == 6
    assert result.info.rows == 5 + 8 - dupes
    assert len(result.info.shards) == -(-result.info.rows // 4)
    # same seed, same order; another seed, another order
    run_stage(job, "mix", echo=lambda s: None)
    assert mixed_ids(job, "xy") == ids
    job2 = validate_job({**raw, "mix": {**mix, "seed": 4}})
    run_stage(job2, "mix", echo=lambda s: None)
    assert mixed_ids(job2, "xy") != ids
    mlflow.set_tracking_uri(job.tracking.uri)
    run = mlflow.search_runs(
        experiment_names=["mixing"], filter_string="tags.`vidtune.stage` = 'mix'", output_format="list"
    )[-1]
    assert run.data.metrics["rows"] == result.info.rows
    assert run.data.metrics["x.taken"] == 5
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"composition.json", "composition.png"} <= files
