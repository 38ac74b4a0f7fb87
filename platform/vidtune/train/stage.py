"""``vidtune train``: preprocess a clip dataset on Ray Data, fine-tune on Ray Train workers with
DeepSpeed, save the model in Hugging Face format under ``storage.root/models/NAME`` with the settings
eval and serve must reuse, and register it in MLflow.

Checkpoints live in ``storage.root/checkpoints/JOB-OUTPUT``: running the stage again after a crash
resumes from the newest one (``resume: false`` starts over); a finished run is started afresh.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidtune.config import JobConfig, TrainConfig
from vidtune.storage import Storage
from vidtune.tracking import absolute_tracking_uri

STAGE = "train"


@dataclass
class TrainResult:
    model_uri: str
    losses: list[float]  # the steps this run trained
    first_step: int
    samples_per_s: float
    tokens_per_s: float
    data_wait: float
    too_long: list[str]
    registered: str | None
    checkpoints: str
    heldout_before: Any = None
    heldout_after: Any = None
    workers: list[dict[str, Any]] = field(default_factory=list)  # rank, node_id, host


def dataset_ids(storage: Storage, dataset: str) -> list[str]:
    """Every id of a committed dataset, read from the shards' id column alone."""
    import pyarrow.parquet as pq

    from vidtune.data.shards import load_info, shard_paths

    ids: list[str] = []
    for path in shard_paths(storage, load_info(storage, dataset)):
        with storage.fs.open(path, "rb") as f:
            ids += pq.read_table(f, columns=["id"])["id"].to_pylist()
    return ids


def tiny_corpus(storage: Storage, datasets: list[str]) -> list[str]:
    """The datasets' conversation text, for training a tiny model's tokenizer on the spot."""
    import pyarrow.parquet as pq

    from vidtune.data.shards import load_info, shard_paths

    texts = []
    for dataset in datasets:
        for path in shard_paths(storage, load_info(storage, dataset)):
            with storage.fs.open(path, "rb") as f:
                for messages in pq.read_table(f, columns=["messages"])["messages"].to_pylist():
                    texts += [m["content"].replace("<video>", "") for m in messages]
    return texts


def loop_config(cfg: TrainConfig, model_path: str) -> Any:
    from vidtune.train.loop import LoopConfig

    lora = cfg.lora
    return LoopConfig(
        model_path=model_path,
        output_dir="",
        family=cfg.family,
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
        bf16=cfg.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        freeze=tuple(cfg.freeze),
        lora_rank=lora.rank if lora else 0,
        lora_alpha=lora.alpha if lora else 16,
        lora_dropout=lora.dropout if lora else 0.0,
        lora_targets=tuple(lora.targets) if lora else (),
        checkpoint_every=cfg.checkpoint_every,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        log_every=max(1, cfg.steps // 10),
    )


def prepare_run_folder(storage: Storage, name: str, resume: bool) -> str:
    """Ray Train's run folder under ``checkpoints/``: kept to resume an unfinished run, cleared for a
    finished one (or when resuming is off)."""
    folder = storage.path("checkpoints", name)
    finished = storage.fs.exists(f"{folder}/final/vidtune-state.json")
    if storage.fs.exists(folder) and (finished or not resume):
        storage.remove(folder, recursive=True)
    return folder


def train(job: JobConfig, tracker: Any) -> TrainResult:
    import mlflow
    from transformers import AutoProcessor

    from vidtune.cluster import ensure_ray
    from vidtune.data.shards import load_info, read_dataset
    from vidtune.models.family import get_family
    from vidtune.storage import is_remote
    from vidtune.train.heldout import clips, heldout_accuracy
    from vidtune.train.preprocess import Encoder
    from vidtune.train.trainer import MODEL_DIR, fit

    cfg: TrainConfig = job.section(STAGE)
    storage = Storage(job.storage)
    ensure_ray(job.ray)
    family = get_family(cfg.family)
    work = Path(tempfile.mkdtemp(prefix="vidtune-train-"))
    model_path = cfg.model
    if cfg.model == "tiny":
        corpus = tiny_corpus(storage, [cfg.dataset] + ([cfg.heldout] if cfg.heldout else []))
        model_path = str(family.build_tiny(work / "base", corpus))
    processor = AutoProcessor.from_pretrained(model_path)

    heldout_rows = clips(storage, cfg.heldout, cfg.heldout_limit) if cfg.heldout else []
    before = heldout_accuracy(model_path, cfg.family, heldout_rows, cfg.heldout) if cfg.heldout else None
    if before:
        tracker.metrics({"heldout_accuracy_before": before.accuracy})

    name = f"{job.name}-{cfg.output}"
    prepare_run_folder(storage, name, cfg.resume)
    shared = model_path
    if cfg.model == "tiny":
        # Built on this node's disk: workers and preprocessing tasks, maybe on other nodes, read it from
        # storage. It stays there beside the trained model, so `vidtune eval` can grade both.
        shared = storage.uri("models", f"{cfg.output}-base")
        storage.remove(storage.path("models", f"{cfg.output}-base"), recursive=True)
        storage.fs.put(model_path, storage.path("models", f"{cfg.output}-base"), recursive=True)
    loop = loop_config(cfg, shared)
    encode = Encoder(
        shared,
        cfg.family,
        cfg.labels,
        cfg.max_length,
        concurrency=cfg.preprocess_concurrency,
        resources=job.ray.data_resources,
        endpoint_url=storage.endpoint_url,
    )
    result = fit(
        read_dataset(storage, cfg.dataset),
        loop,
        encode=encode,
        pad_id=processor.tokenizer.pad_token_id,
        num_workers=cfg.num_workers,
        storage_path=storage.path("checkpoints"),
        storage_filesystem=storage.arrow_fs() if is_remote(storage.root) else None,
        name=name,
        use_gpu=cfg.use_gpu,
        resources_per_worker=cfg.resources_per_worker,
        placement_strategy=cfg.placement_strategy,
        keep_checkpoints=cfg.keep_checkpoints,
        max_failures=cfg.max_failures,
        cache_bytes=cfg.cache_mb * 2**20,
        endpoint_url=storage.endpoint_url,
        ids=dataset_ids(storage, cfg.dataset),
        tracking={"tracking_uri": absolute_tracking_uri(mlflow.get_tracking_uri()), "run_id": tracker.run_id},
    )
    m = result.metrics
    tracker.metrics(
        {
            "samples_per_s_mean": m["samples_per_s"],
            "tokens_per_s_mean": m["tokens_per_s"],
            "data_wait_mean": m["data_wait"],
            "trainable_params": m["trainable_params"],
            "total_params": m["total_params"],
            "dropped_too_long": len(m["too_long"]),
        }
    )
    tracker.json(m["workers"], "workers.json")
    tracker.tags({"vidtune.worker_nodes": str(len({w["node_id"] for w in m["workers"]}))})
    if m["too_long"]:
        tracker.json({"max_length": cfg.max_length, "ids": m["too_long"]}, "dropped_too_long.json")

    # The model, its processor and the settings that eval and serve must sample frames with.
    info = load_info(storage, cfg.dataset)
    local = work / "model"
    with result.checkpoint.as_directory() as ckpt:
        shutil.copytree(Path(ckpt) / MODEL_DIR, local)
    processor.save_pretrained(local)
    settings = {
        "family": cfg.family,
        "dataset": cfg.dataset,
        "sampling": info.config.get("sampling"),
        "max_pixels": info.config.get("max_pixels"),
        "labels": cfg.labels,
    }
    (local / "vidtune.json").write_text(json.dumps(settings, indent=2))
    after = heldout_accuracy(str(local), cfg.family, heldout_rows, cfg.heldout) if cfg.heldout else None
    if after:
        tracker.metrics({"heldout_accuracy_after": after.accuracy})
        tracker.json({"before": before.rows, "after": after.rows}, "heldout.json")
    target = storage.path("models", cfg.output)
    storage.remove(target, recursive=True)
    storage.fs.put(str(local), target, recursive=True)
    if cfg.model == "tiny":
        storage.write_bytes(
            json.dumps(settings, indent=2).encode(), "models", f"{cfg.output}-base", "vidtune.json"
        )
    tracker.folder(local, "model")
    registered = register(cfg.register_as, tracker.run_id) if cfg.register_as else None
    shutil.rmtree(work, ignore_errors=True)
    return TrainResult(
        model_uri=storage.uri("models", cfg.output),
        losses=m["losses"],
        first_step=m["first_step"],
        samples_per_s=m["samples_per_s"],
        tokens_per_s=m["tokens_per_s"],
        data_wait=m["data_wait"],
        too_long=m["too_long"],
        workers=m["workers"],
        registered=registered,
        checkpoints=storage.uri("checkpoints", name),
        heldout_before=before,
        heldout_after=after,
    )


def register(name: str, run_id: str) -> str:
    """A new version of registered model ``name`` pointing at the run's ``model`` artifact folder.

    The model is a Hugging Face folder, not an MLflow flavour, so the version's source is that folder;
    ``mlflow.artifacts.download_artifacts("models:/NAME/N")`` fetches it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered: add a version
    version = client.create_model_version(name, source=mlflow.get_artifact_uri("model"), run_id=run_id)
    return f"models:/{name}/{version.version}"
