"""The per-worker training loop: a plain function of its config, as Ray Train's examples write them.

``train_loop(cfg, data, pad_id)`` fine-tunes a Hugging Face video LLM with DeepSpeed on encoded samples
(what a family adapter's ``encode`` returns) and saves the result in Hugging Face format. It runs in a
plain process (one rank: the GPU benchmark, where Ray is absent), under torchrun, or as a Ray Train
worker: DeepSpeed reads rank and world size from the environment that each launcher sets.

What it does beyond a textbook loop:

* ZeRO-3 partitions the model while it loads (``HfDeepSpeedConfig`` is alive before ``from_pretrained``),
  so no rank ever holds the whole model;
* freezing (vision tower, projector, language model), LoRA through peft, gradient checkpointing;
* checkpoints every ``checkpoint_every`` steps through a :class:`~vidtune.train.checkpoints.Checkpointer`,
  and a resumed run continues from the same step and the same micro-batch of the same epoch;
* one training line per ``log_every`` steps (step, loss, lr, samples/s, data wait, time left) and the
  same figures per step to a metrics sink (MLflow from rank 0 under Ray Train).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vidtune.models.family import collate, get_family, load_kwargs
from vidtune.train.checkpoints import Checkpointer, LoopState, load_engine
from vidtune.train.deepspeed import deepspeed_config
from vidtune.train.ingest import micro_batches

# Dense bf16 peak of the GPUs a user is likely to train on, for model FLOPs utilisation (TFLOP/s).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
LORA_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoopConfig:
    model_path: str
    output_dir: str
    family: str = "qwen2-vl"
    steps: int = 10  # optimizer steps
    micro_batch: int = 2
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    clip: float = 1.0
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    bf16: bool | None = None  # None: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    freeze: tuple[str, ...] = ()  # any of "vision", "projector", "language"
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_DEFAULT_TARGETS
    checkpoint_every: int = 0  # 0: no intermediate checkpoints
    shuffle_buffer: int = 256  # rows mixed per rank and epoch (seeded)
    seed: int = 0
    log_every: int = 1


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)  # the steps this run trained (after any resume)
    first_step: int = 1
    # Throughput over the steps after the first (which starts the data pipeline and warms up).
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    data_wait: float = 0.0  # fraction of step time spent waiting for the next micro-batch
    seconds: float = 0.0
    output_dir: str = ""
    trainable_params: int = 0
    total_params: int = 0


class MetricsSink(Protocol):
    def resumed(self, state: LoopState) -> None: ...
    def add(self, step: int, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...


def _single_process_env() -> None:
    """What a launcher would set, for a run with no launcher (one rank on this machine)."""
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def in_memory(samples: Sequence[dict[str, Any]], cfg: LoopConfig) -> Callable[[int], Iterable[list[dict]]]:
    """Epochs over samples already in memory: a full seeded shuffle each epoch."""
    return lambda epoch: micro_batches(samples, cfg.micro_batch, len(samples), cfg.seed, epoch)


class EpochCursor:
    """Micro-batches epoch after epoch from ``data(epoch)``, remembering where it stands so that a
    checkpoint can record (epoch, micro-batch) and a resumed run skip to exactly there."""

    def __init__(self, data: Callable[[int], Iterable[list[dict]]], epoch: int, batch: int):
        self.data = data
        self.epoch, self.batch = epoch, 0
        self._it: Iterator[list[dict]] = iter(data(epoch))
        for _ in range(batch):
            self.next()

    def next(self) -> list[dict]:
        while True:
            try:
                group = next(self._it)
            except StopIteration:
                if self.batch == 0:
                    raise RuntimeError(
                        "this rank has no training samples (all dropped, or too few rows)"
                    ) from None
                self.epoch, self.batch = self.epoch + 1, 0
                self._it = iter(self.data(self.epoch))
                continue
            self.batch += 1
            return group


def build_model(cfg: LoopConfig, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """The model as the config asks for it, and the ZeRO-3 handle that must outlive ``from_pretrained``."""
    import torch
    from transformers import AutoModelForImageTextToText

    zero3 = None
    if cfg.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # Alive during from_pretrained, this makes transformers build the model under zero.Init:
        # each rank materializes only its partition of every weight.
        zero3 = HfDeepSpeedConfig(ds_config)
    use_gpu = torch.cuda.is_available()
    model = AutoModelForImageTextToText.from_pretrained(cfg.model_path, **load_kwargs(use_gpu, _bf16(cfg)))
    family = get_family(cfg.family)
    for name, param in model.named_parameters():
        if family.module_group(name) in cfg.freeze:
            param.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing and (cfg.lora_rank or "language" in cfg.freeze):
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model, zero3


def _bf16(cfg: LoopConfig) -> bool:
    import torch

    return torch.cuda.is_available() if cfg.bf16 is None else cfg.bf16


def _optimizer(model: Any, cfg: LoopConfig) -> Any:
    """AdamW with weight decay on matrices only (not on biases and norms), as Hugging Face trainers do.
    A torch optimizer needs no JIT-compiled op; CPU offload needs DeepSpeed's CPU Adam."""
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=torch.cuda.is_available())


def _peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def train_loop(
    cfg: LoopConfig,
    data: Sequence[dict[str, Any]] | Callable[[int], Iterable[list[dict]]],
    pad_id: int,
    *,
    checkpointer: Checkpointer | None = None,
    metrics: MetricsSink | None = None,
    run_id: str | None = None,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Fine-tune ``cfg.model_path`` for ``cfg.steps`` optimizer steps, then save to ``output_dir``.

    ``data`` is samples in memory or a function from epoch to micro-batches (a Ray Data shard).
    With a ``checkpointer`` the loop resumes from its latest checkpoint and saves every
    ``cfg.checkpoint_every`` steps; ``run_id`` names the MLflow run this run's metrics go to.
    """
    import deepspeed
    import torch

    _single_process_env()
    torch.manual_seed(cfg.seed)
    ds_config = deepspeed_config(
        zero_stage=cfg.zero_stage,
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
        micro_batch=cfg.micro_batch,
        grad_accum=cfg.grad_accum,
        warmup_ratio=cfg.warmup_ratio,
        total_steps=cfg.steps,
        clip=cfg.clip,
        bf16=_bf16(cfg),
    )
    model, zero3 = build_model(cfg, ds_config)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=_optimizer(model, cfg), config=ds_config
    )
    engine.train()
    result = LoopResult(output_dir=cfg.output_dir)
    result.total_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    result.trainable_params = sum(
        getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad
    )

    state = LoopState(run_id=run_id)
    if checkpointer is not None:
        with checkpointer.latest() as folder:
            if folder is not None:
                state = load_engine(engine, folder)
                log(f"resumed from step {state.step} (epoch {state.epoch}, micro-batch {state.batch})")
                if metrics is not None:
                    metrics.resumed(state)
                state.run_id = run_id
    epochs = in_memory(data, cfg) if isinstance(data, Sequence) else data
    cursor = EpochCursor(epochs, state.epoch, state.batch)
    world = engine.world_size
    peak = _peak_flops()
    result.first_step = state.step + 1
    started = steady_from = time.perf_counter()
    waited = 0.0
    tokens = 0
    window = {"time": 0.0, "wait": 0.0, "tokens": 0, "steps": 0}
    for step in range(state.step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        total, step_wait, step_tokens = 0.0, 0.0, 0
        for _ in range(cfg.grad_accum):
            w0 = time.perf_counter()
            batch = collate(cursor.next(), pad_id)
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            step_wait += time.perf_counter() - w0
            step_tokens += int(batch["attention_mask"].sum())
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            total += float(loss.detach())
        dt = time.perf_counter() - t0
        if step == state.step + 1:
            # The first step pays for starting the data pipeline and warming up: the run's figures
            # (like a benchmark's) count the steady state after it; the per-step metrics keep it.
            steady_from = time.perf_counter()
        else:
            waited += step_wait
            tokens += step_tokens
        result.losses.append(total / cfg.grad_accum)
        lr = scheduler.get_last_lr()[0] if scheduler is not None else cfg.lr
        grad_norm = engine.get_global_grad_norm()
        per_step = {
            "loss": result.losses[-1],
            "lr": lr,
            "samples_per_s": world * cfg.micro_batch * cfg.grad_accum / dt,
            "tokens_per_s": world * step_tokens / dt,  # rank 0's tokens x world size
            "data_wait": step_wait / dt,
        }
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            per_step["grad_norm"] = float(grad_norm)
        if peak:
            per_step["mfu"] = 6 * result.total_params * per_step["tokens_per_s"] / (world * peak)
        if metrics is not None:
            metrics.add(step, per_step)
        window["time"] += dt
        window["steps"] += 1
        window["wait"] += step_wait
        window["tokens"] += step_tokens
        if step % cfg.log_every == 0 or step == cfg.steps:
            # The latest window's pace: the first one also holds the data pipeline's start.
            left = window["time"] / window["steps"] * (cfg.steps - step)
            samples_s = world * cfg.micro_batch * cfg.grad_accum * window["steps"] / window["time"]
            tok_s = world * window["tokens"] / window["time"]
            log(
                f"step {step}/{cfg.steps}  loss {result.losses[-1]:.4f}  lr {lr:.2e}  "
                f"{samples_s:.1f} samples/s  {tok_s:.0f} tok/s  "
                f"data wait {window['wait'] / window['time']:.0%}  {left:.0f}s left"
            )
            window = {"time": 0.0, "wait": 0.0, "tokens": 0, "steps": 0}
        if (
            checkpointer is not None
            and cfg.checkpoint_every
            and step % cfg.checkpoint_every == 0
            and step < cfg.steps
        ):
            state = LoopState(step=step, epoch=cursor.epoch, batch=cursor.batch, run_id=run_id)
            checkpointer.save(engine, state, {"loss": result.losses[-1]})
            if metrics is not None:
                metrics.flush()  # only once the checkpoint is saved: the record never runs ahead of it
    result.seconds = time.perf_counter() - started
    steady = len(result.losses) - 1
    if steady > 0:
        seconds = time.perf_counter() - steady_from
        result.samples_per_s = world * steady * cfg.grad_accum * cfg.micro_batch / seconds
        result.tokens_per_s = world * tokens / seconds
        result.data_wait = waited / seconds
    if metrics is not None:
        metrics.flush()
    del zero3  # from here from_pretrained builds whole models again (the LoRA merge under ZeRO-3)
    save_model(engine, cfg)
    return result


def save_model(engine: Any, cfg: LoopConfig) -> None:
    """Rank 0 writes the trained model in Hugging Face format: ZeRO-3 partitions gathered, LoRA merged
    into the base weights (and the adapter kept in ``adapter/``), so eval and serve load it as is."""
    if cfg.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # a collective: every rank calls it
    else:
        state = engine.module.state_dict() if engine.global_rank == 0 else None
    if engine.global_rank != 0:
        return
    module = engine.module
    if cfg.lora_rank:
        from peft import PeftModel

        # peft keeps only the adapter's tensors of the state it is given
        module.save_pretrained(os.path.join(cfg.output_dir, "adapter"), state_dict=state)
        if cfg.zero_stage == 3:
            # The engine's copy is partitioned: merge on a fresh base with the gathered weights.
            module = _fresh_peft_copy(cfg, state)
        assert isinstance(module, PeftModel)
        merged = module.merge_and_unload()
        merged.save_pretrained(cfg.output_dir)
        return
    module.save_pretrained(cfg.output_dir, state_dict=state)


def _fresh_peft_copy(cfg: LoopConfig, state: dict[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(cfg.model_path)
    model = get_peft_model(
        base,
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            task_type="CAUSAL_LM",
        ),
    )
    model.load_state_dict(state, strict=False)
    return model
