"""The per-worker training loop: a plain function of its config, as Ray Train's examples write them.

``train_loop(config, samples)`` fine-tunes a Hugging Face video LLM with DeepSpeed on encoded samples
(what a family adapter's ``encode`` returns) and saves the result in Hugging Face format. It runs in a
plain process (one rank: the GPU benchmark, where Ray is absent), under torchrun, or as a Ray Train
worker: DeepSpeed reads rank and world size from the environment that each launcher sets.

Each step prints one line: step, loss, learning rate, samples/s and time left.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from vidtune.models.family import collate
from vidtune.train.deepspeed import deepspeed_config


@dataclass
class LoopConfig:
    model_path: str
    output_dir: str
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
    seed: int = 0
    log_every: int = 1


@dataclass
class LoopResult:
    losses: list[float] = field(default_factory=list)
    samples_per_s: float = 0.0
    seconds: float = 0.0
    output_dir: str = ""


def _single_process_env() -> None:
    """What a launcher would set, for a run with no launcher (one rank on this machine)."""
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def batches(samples: Sequence[dict[str, Any]], size: int, seed: int, pad_id: int) -> Iterator[dict[str, Any]]:
    """Shuffled micro-batches, epoch after epoch, in an order fixed by ``seed`` (resumable)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(samples)))
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield collate([samples[k] for k in order[i : i + size]], pad_id)


def train_loop(
    cfg: LoopConfig,
    samples: Sequence[dict[str, Any]],
    pad_id: int,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Fine-tune ``cfg.model_path`` on ``samples`` for ``cfg.steps`` steps, then save to ``output_dir``."""
    import deepspeed
    import torch
    from transformers import AutoModelForImageTextToText

    _single_process_env()
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_pretrained(cfg.model_path)
    ds_config = deepspeed_config(
        zero_stage=cfg.zero_stage,
        offload_optimizer=cfg.offload_optimizer,
        offload_params=cfg.offload_params,
        micro_batch=cfg.micro_batch,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        total_steps=cfg.steps,
        clip=cfg.clip,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    engine.train()
    data = batches(samples, cfg.micro_batch, cfg.seed, pad_id)
    result = LoopResult(output_dir=cfg.output_dir)
    started = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        total = 0.0
        for _ in range(cfg.grad_accum):
            batch = next(data)
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            total += float(loss.detach())
        result.losses.append(total / cfg.grad_accum)
        elapsed = time.perf_counter() - started
        if step % cfg.log_every == 0 or step == cfg.steps:
            seen = step * cfg.grad_accum * cfg.micro_batch
            left = elapsed / step * (cfg.steps - step)
            lr = scheduler.get_last_lr()[0] if scheduler is not None else cfg.lr
            log(
                f"step {step}/{cfg.steps}  loss {result.losses[-1]:.4f}  lr {lr:.2e}  "
                f"{seen / elapsed:.1f} samples/s  {left:.0f}s left"
            )
    result.seconds = time.perf_counter() - started
    result.samples_per_s = cfg.steps * cfg.grad_accum * cfg.micro_batch / result.seconds
    if cfg.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        if engine.global_rank == 0:
            engine.module.save_pretrained(cfg.output_dir, state_dict=state)
    elif engine.global_rank == 0:
        engine.module.save_pretrained(cfg.output_dir)
    return result
