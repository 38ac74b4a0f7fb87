"""Ray Train: the per-worker loop on N workers, fed by per-rank Ray Data preprocessing pipelines.

Each worker streams its shard (``get_dataset_shard``; see :mod:`vidtune.train.ingest` for why each
rank has its own reproducible pipeline) into :func:`vidtune.train.loop.train_loop`, which DeepSpeed
runs over the process group Ray Train sets up. Checkpoints go through ``ray.train.report`` into
``storage.root/checkpoints/RUN`` (local or S3); a replaced worker (``FailureConfig``) or a run started
again under the same name resumes from the latest. Rank 0 writes the per-step metrics to the stage's
MLflow run and reports the final Hugging Face model as the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vidtune.train.checkpoints import STATE, LoopState, RayCheckpointer
from vidtune.train.loop import LoopConfig

MODEL_DIR = "model"


class MlflowMetrics:
    """Per-step metrics from rank 0 into one MLflow run, written when a checkpoint is saved (so the
    record never holds a step that a resumed run trains again) and at the end."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list[Any] = []
        self.recorded = 0  # steps this run already holds from a worker group that was replaced

    def resumed(self, state: LoopState) -> None:
        """Copy steps 1..state.step from the interrupted run, so this run's curves start at step 1.

        A replaced worker group (``max_failures``) resumes in the same run. Its rank 0 may have written
        steps past that checkpoint before it died (between saving a checkpoint and Ray Train
        registering it): those steps are trained again but not written again, and the run's tag
        ``vidtune.retrained_steps`` says which they were."""
        if state.run_id and state.run_id == self.run_id:
            history = self.client.get_metric_history(self.run_id, "loss")
            self.recorded = max((m.step for m in history), default=0)
            if self.recorded > state.step:
                self.client.set_tag(
                    self.run_id, "vidtune.retrained_steps", f"{state.step + 1}-{self.recorded}"
                )
            return
        if not state.run_id:
            return
        from mlflow.entities import Metric

        old = self.client.get_run(state.run_id).data.metrics
        for key in old:
            history = self.client.get_metric_history(state.run_id, key)
            self.pending += [
                Metric(key, m.value, m.timestamp, m.step) for m in history if 0 < m.step <= state.step
            ]
        self.client.set_tag(self.run_id, "vidtune.resumed_from", f"{state.run_id} step {state.step}")
        self.flush()

    def add(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if step <= self.recorded:
            return  # already in the record (see resumed)
        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000], synchronous=True)
        self.pending = []


class EpochCache:
    """A rank's encoded samples kept after one full pass while they fit in ``budget`` bytes, so later
    epochs of a small dataset do not run the preprocessing pipeline again. The pipeline's order is
    fixed, so an epoch from the cache is the epoch the pipeline would have produced."""

    def __init__(self, budget: int):
        self.budget = budget
        self.samples: list[dict[str, Any]] | None = None

    def rows(self, stream: Any) -> Iterator[dict[str, Any]]:
        if self.samples is not None:
            yield from self.samples
            return
        kept: list[dict[str, Any]] | None = []
        size = 0
        for sample in stream():
            if kept is not None:
                size += sum(t.numel() * t.element_size() for t in sample.values())
                if size <= self.budget:
                    kept.append(sample)
                else:
                    kept = None  # too big to keep: every epoch streams
            yield sample
        if kept is not None:
            self.samples = kept


def worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs."""
    import ray
    import ray.train
    import torch.distributed as dist

    from vidtune.storage import local_folder
    from vidtune.train.ingest import micro_batches
    from vidtune.train.loop import train_loop
    from vidtune.train.preprocess import to_torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    loop_cfg = LoopConfig(
        **{
            **config["loop"],
            "model_path": local_folder(config["loop"]["model_path"], config.get("endpoint_url")),
            "output_dir": tempfile.mkdtemp(prefix="vidtune-model-"),
        }
    )
    shard = ray.train.get_dataset_shard("train")
    too_long: set[str] = set()
    cache = EpochCache(config["cache_bytes"])

    def rows():
        for row in shard.iter_rows():
            if row["too_long"]:
                too_long.add(row["id"])  # never truncated through the visual tokens: dropped, counted
                continue
            yield to_torch(row)

    def epoch_batches(epoch: int):
        return micro_batches(
            cache.rows(rows), loop_cfg.micro_batch, loop_cfg.shuffle_buffer, loop_cfg.seed, epoch
        )

    tracking = config.get("tracking")
    sink = MlflowMetrics(**tracking) if tracking and rank == 0 else None
    result = train_loop(
        loop_cfg,
        epoch_batches,
        config["pad_id"],
        checkpointer=RayCheckpointer(),
        metrics=sink,
        run_id=tracking["run_id"] if tracking else None,
        log=print if rank == 0 else (lambda s: None),
    )
    dropped: list[Any] = [None] * ctx.get_world_size()
    dist.all_gather_object(dropped, sorted(too_long))
    # Where each rank ran (after a replaced worker, the last placement): shows SPREAD and PACK at work.
    workers: list[Any] = [None] * ctx.get_world_size()
    here = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    dist.all_gather_object(workers, here)
    metrics = {
        "losses": result.losses,
        "first_step": result.first_step,
        "samples_per_s": result.samples_per_s,
        "tokens_per_s": result.tokens_per_s,
        "data_wait": result.data_wait,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "too_long": sorted({i for ids in dropped for i in ids}),
        "workers": workers,
        "step": loop_cfg.steps,
    }
    with tempfile.TemporaryDirectory(prefix="vidtune-final-") as tmp:
        if rank == 0:
            Path(loop_cfg.output_dir).rename(Path(tmp) / MODEL_DIR)
            state = LoopState(step=loop_cfg.steps, run_id=(tracking or {}).get("run_id"), done=True)
            (Path(tmp) / STATE).write_text(json.dumps(dataclasses.asdict(state)))
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name="final"
            )
        else:
            ray.train.report(metrics)


def fit(
    dataset: Any,
    loop: LoopConfig,
    *,
    encode: Any,
    pad_id: int,
    num_workers: int,
    storage_path: str,
    storage_filesystem: Any = None,
    name: str = "vidtune-train",
    use_gpu: bool = False,
    resources_per_worker: dict[str, float] | None = None,
    placement_strategy: str = "PACK",
    keep_checkpoints: int = 2,
    max_failures: int = 0,
    tracking: dict[str, str] | None = None,
    cache_bytes: int = 0,
    ids: list[str] | None = None,
    endpoint_url: str | None = None,
) -> Any:
    """Train on ``num_workers`` Ray Train workers; returns Ray Train's result (checkpoint, metrics).

    ``dataset`` holds clip rows (``ids``: their ids, when the caller has them); ``encode`` maps a
    clip dataset to encoded samples and runs inside each rank's pipeline. ``tracking``
    (``tracking_uri``, ``run_id``) is where rank 0 logs per step.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vidtune.train.ingest import RankedDataConfig

    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "loop": dataclasses.asdict(loop),
            "pad_id": pad_id,
            "tracking": tracking,
            "cache_bytes": cache_bytes,
            "endpoint_url": endpoint_url,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources_per_worker,
            placement_strategy=placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
        datasets={"train": dataset},
        dataset_config=RankedDataConfig(encode, seed=loop.seed, ids=ids),
    )
    return trainer.fit()
