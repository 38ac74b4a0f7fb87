"""`vidtune train` on a local Ray, the full path: videos -> prepare (Ray Data) -> preprocessing (Ray Data)
-> 2 Ray Train workers with DeepSpeed ZeRO-2 -> a Hugging Face model in storage and the MLflow registry
that answers held-out clips far above chance (the guard against broken masking, frame order and
placeholder expansion)."""

from __future__ import annotations

import json
import random

import mlflow

from conftest import llava_entry
from test_models import NAMES, QUESTION, clip
from vidtune.data.videogen import VideoSpec, color_sequence, write_video
from vidtune.models.family import get_family
from vidtune.stages import run_stage


def test_train_stage_learns_and_registers(tmp_path, make_job, ray_local):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rng = random.Random(0)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    lines = []
    for i in range(48):
        a, b = rng.choice(pairs)
        spec = VideoSpec(
            frames=16, fps=8, width=112, height=112, keyframe_interval=8, colors=color_sequence([a, b])
        )
        write_video(tmp_path / f"v{i}.mp4", spec)
        entry = llava_entry(f"c{i}", f"v{i}.mp4", answer=a)
        entry["conversations"][0]["value"] = QUESTION
        lines.append(json.dumps(entry))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    job = make_job(
        prepare={
            "sampling": {"frames": 8},
            "max_pixels": 112 * 112,
            "datasets": [
                {"name": "colors", "manifest": str(tmp_path / "m.jsonl"), "video_root": str(tmp_path)}
            ],
        },
        train={
            "dataset": "colors",
            "model": "tiny",
            "output": "colors-model",
            "register_as": "colors-model",
            "num_workers": 2,
            "steps": 80,
            "micro_batch": 4,
            "lr": 3e-3,
            "zero_stage": 2,
        },
    )
    run_stage(job, "prepare", echo=lambda s: None)
    summary: list[str] = []
    result = run_stage(job, "train", echo=summary.append)
    assert result.losses[-1] < result.losses[0] / 3 and len(result.losses) == 80
    assert result.registered == "models:/colors-model/1" and "colors-model" in summary[0]

    mlflow.set_tracking_uri(job.tracking.uri)
    path = mlflow.artifacts.download_artifacts("models:/colors-model/latest", dst_path=str(tmp_path / "dl"))
    settings = json.loads((tmp_path / "dl" / "vidtune.json").read_text())
    assert settings["family"] == "qwen2-vl" and settings["sampling"]["frames"] == 8
    family = get_family("qwen2-vl")
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    right = sum(
        family.generate(model, processor, clip(a, b), [{"role": "user", "content": QUESTION}], 4) == a
        for a, b in pairs
    )
    assert right >= 9, right  # of the 12 orders; chance is 3
    run = mlflow.search_runs(
        experiment_names=["t"], filter_string="tags.`vidtune.stage` = 'train'", output_format="list"
    )[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(history) == 80
