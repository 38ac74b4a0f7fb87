"""Ray Train: the per-worker loop on N workers, fed by the Ray Data preprocessing stage.

Each worker takes its shard of the preprocessed dataset (``get_dataset_shard``), converts rows to
tensors and runs :func:`vidtune.train.loop.train_loop`; Ray Train sets up the process group that
DeepSpeed joins. Rank 0 saves the model and reports it as the run's checkpoint.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

from vidtune.train.loop import LoopConfig


def worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs."""
    import ray.train

    from vidtune.train.loop import train_loop
    from vidtune.train.preprocess import to_torch

    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    samples = [to_torch(r) for r in shard.iter_rows() if not r["too_long"]]
    loop_cfg = LoopConfig(**{**config["loop"], "output_dir": tempfile.mkdtemp(prefix="vidtune-model-")})
    log = print if ctx.get_world_rank() == 0 else (lambda s: None)
    result = train_loop(loop_cfg, samples, config["pad_id"], log=log)
    metrics = {
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "losses": result.losses,
        "samples_per_s": result.samples_per_s,
        "steps": len(result.losses),
    }
    if ctx.get_world_rank() == 0:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(loop_cfg.output_dir))
    else:
        ray.train.report(metrics)


def fit(
    dataset: Any,
    loop: LoopConfig,
    *,
    pad_id: int,
    num_workers: int,
    storage_path: str,
    name: str = "vidtune-train",
    use_gpu: bool = False,
) -> Any:
    """Train on ``num_workers`` Ray Train workers; returns Ray Train's result (checkpoint, metrics)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"loop": dataclasses.asdict(loop), "pad_id": pad_id},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=storage_path),
        datasets={"train": dataset},
    )
    return trainer.fit()
