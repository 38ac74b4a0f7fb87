"""The full training path on a local Ray: videos -> prepare (Ray Data) -> preprocessing (Ray Data) ->
2 Ray Train workers with DeepSpeed ZeRO-2 -> a checkpoint in Hugging Face format that answers held-out
clips far above chance (the guard against broken masking, frame order and placeholder expansion)."""

from __future__ import annotations

import json
import random

import ray.data

from conftest import llava_entry
from test_models import NAMES, QUESTION, clip
from vidtune.data.shards import read_dataset
from vidtune.data.videogen import VideoSpec, color_sequence, write_video
from vidtune.models.family import get_family
from vidtune.stages import run_stage
from vidtune.storage import Storage
from vidtune.train.loop import LoopConfig
from vidtune.train.preprocess import EncodeClips
from vidtune.train.trainer import fit


def test_two_workers_learn_through_the_full_path(tmp_path, make_job, ray_local):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rng = random.Random(0)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    lines = []
    for i in range(48):
        a, b = rng.choice(pairs)
        write_video(
            tmp_path / f"v{i}.mp4",
            VideoSpec(
                frames=16, fps=8, width=112, height=112, keyframe_interval=8, colors=color_sequence([a, b])
            ),
        )
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
        }
    )
    run_stage(job, "prepare", echo=lambda s: None)

    family = get_family("qwen2-vl")
    base = family.build_tiny(tmp_path / "base", [f"Which colour comes first? {a} {b}" for a, b in pairs] * 5)
    processor = AutoProcessor.from_pretrained(base)
    encoded = read_dataset(Storage(job.storage), "colors").map_batches(
        EncodeClips,
        batch_size=8,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"model_path": str(base), "family": "qwen2-vl"},
    )
    loop = LoopConfig(
        model_path=str(base), output_dir="", steps=80, micro_batch=4, lr=3e-3, zero_stage=2, log_every=10
    )
    result = fit(
        encoded,
        loop,
        pad_id=processor.tokenizer.pad_token_id,
        num_workers=2,
        storage_path=str(tmp_path / "ray"),
    )
    assert result.metrics["loss_last"] < result.metrics["loss_first"] / 3
    with result.checkpoint.as_directory() as path:
        model = AutoModelForImageTextToText.from_pretrained(path)
        right = sum(
            family.generate(model, processor, clip(a, b), [{"role": "user", "content": QUESTION}], 4) == a
            for a, b in pairs
        )
    assert right >= 9, right  # of the 12 orders; chance is 3
