"""``vidtune train``: preprocess a clip dataset on Ray Data, fine-tune on Ray Train workers with
DeepSpeed, save the model in Hugging Face format under ``storage.root/models/NAME`` with the settings
eval and serve must reuse, and register it in MLflow."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidtune.config import JobConfig, TrainConfig
from vidtune.storage import Storage

STAGE = "train"


@dataclass
class TrainResult:
    model_uri: str
    losses: list[float]
    samples_per_s: float
    registered: str | None


def tiny_corpus(storage: Storage, dataset: str) -> list[str]:
    """The dataset's conversation text, for training a tiny model's tokenizer on the spot."""
    import pyarrow.parquet as pq

    from vidtune.data.shards import load_info, shard_paths

    texts = []
    for path in shard_paths(storage, load_info(storage, dataset)):
        with storage.fs.open(path, "rb") as f:
            for messages in pq.read_table(f, columns=["messages"])["messages"].to_pylist():
                texts += [m["content"].replace("<video>", "") for m in messages]
    return texts


def train(job: JobConfig, tracker: Any) -> TrainResult:
    import ray.data
    from transformers import AutoProcessor

    from vidtune.cluster import ensure_ray
    from vidtune.data.shards import load_info, read_dataset
    from vidtune.models.family import get_family
    from vidtune.train.loop import LoopConfig
    from vidtune.train.preprocess import EncodeClips
    from vidtune.train.trainer import fit

    cfg: TrainConfig = job.section(STAGE)
    storage = Storage(job.storage)
    ensure_ray(job.ray)
    family = get_family(cfg.family)
    work = Path(tempfile.mkdtemp(prefix="vidtune-train-"))
    model_path = cfg.model
    if cfg.model == "tiny":
        model_path = str(family.build_tiny(work / "base", tiny_corpus(storage, cfg.dataset)))
    processor = AutoProcessor.from_pretrained(model_path)
    encoded = read_dataset(storage, cfg.dataset).map_batches(
        EncodeClips,
        batch_size=8,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={
            "model_path": model_path,
            "family": cfg.family,
            "labels": cfg.labels,
            "max_length": cfg.max_length,
        },
    )
    loop = LoopConfig(
        model_path=model_path,
        output_dir="",
        steps=cfg.steps,
        micro_batch=cfg.micro_batch,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        clip=cfg.clip,
        zero_stage=cfg.zero_stage,
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
        seed=cfg.seed,
        log_every=max(1, cfg.steps // 10),
    )
    result = fit(
        encoded,
        loop,
        pad_id=processor.tokenizer.pad_token_id,
        num_workers=cfg.num_workers,
        storage_path=str(work / "ray"),
        name=f"{job.name}-{cfg.output}",
        use_gpu=cfg.use_gpu,
    )
    losses = result.metrics["losses"]
    for step, loss in enumerate(losses, start=1):
        tracker.metrics({"loss": loss}, step=step)
    tracker.metrics({"samples_per_s": result.metrics["samples_per_s"]})

    # The model, its processor and the settings that eval and serve must sample frames with.
    info = load_info(storage, cfg.dataset)
    local = work / "model"
    with result.checkpoint.as_directory() as ckpt:
        shutil.copytree(ckpt, local)
    processor.save_pretrained(local)
    settings = {
        "family": cfg.family,
        "dataset": cfg.dataset,
        "sampling": info.config.get("sampling"),
        "max_pixels": info.config.get("max_pixels"),
        "labels": cfg.labels,
    }
    (local / "vidtune.json").write_text(json.dumps(settings, indent=2))
    target = storage.path("models", cfg.output)
    storage.remove(target, recursive=True)
    storage.fs.put(str(local), target, recursive=True)
    tracker.folder(local, "model")
    registered = None
    if cfg.register_as:
        import mlflow
        from mlflow.exceptions import MlflowException

        # The model is a Hugging Face folder among the run's artifacts, not an MLflow flavour, so the
        # version points at that folder; `mlflow.artifacts.download_artifacts("models:/NAME/N")` fetches it.
        client = mlflow.MlflowClient()
        try:
            client.create_registered_model(cfg.register_as)
        except MlflowException:
            pass  # already registered: add a version
        version = client.create_model_version(
            cfg.register_as, source=mlflow.get_artifact_uri("model"), run_id=tracker.run_id
        )
        registered = f"models:/{cfg.register_as}/{version.version}"
    shutil.rmtree(work, ignore_errors=True)
    return TrainResult(storage.uri("models", cfg.output), losses, result.metrics["samples_per_s"], registered)
