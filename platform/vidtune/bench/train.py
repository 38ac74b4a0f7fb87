"""``vidtune bench train``: training throughput of vidtune's loop against a plain PyTorch loop.

Side by side, in one process (no Ray, so it runs on a GPU machine that has none), on the same encoded
samples and model:

- ``plain PyTorch``: what a user writes first: ``model(**batch).loss.backward()``, AdamW, clipping;
- ``vidtune ZeRO-2`` and ``vidtune ZeRO-3``: :func:`vidtune.train.loop.train_loop` with DeepSpeed.

Each row gives samples/s, tokens/s (text and visual tokens), the fraction of step time spent waiting
for the next batch, and on GPU the model FLOPs utilisation (6 x parameters x tokens/s over the GPU's
dense bf16 peak). Sizes: ``tiny`` (the test model, for CPU) and ``2b`` (Qwen2-VL-2B's shape with random
weights: 1.5B-parameter language model, 675M-parameter vision tower), for one GPU.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidtune.bench.decode import _table

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "2b": {
        "hidden": 1536,
        "max_pixels": 448 * 448,
        "text": {
            "vocab_size": 151936,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4},
    },
}
TARGET_MFU = 0.40
TARGET_DATA_WAIT = 0.05


def build_model(size: str, out: Path) -> Path:
    from vidtune.models.tiny import build_tiny_qwen2vl

    corpus = [f"Which colour comes first? {w}" for w in ("red", "green", "blue", "yellow")] * 20
    spec = dict(SIZES[size])
    return build_tiny_qwen2vl(out, corpus, **spec)


def synthetic_samples(model_path: Path, count: int, frames: int, side: int, seed: int = 0) -> list[dict]:
    """Encoded samples of ``frames`` random frames at ``side`` x ``side`` with a short question/answer."""
    from transformers import AutoProcessor

    from vidtune.models.family import get_family

    family = get_family("qwen2-vl")
    processor = AutoProcessor.from_pretrained(model_path)
    rng = np.random.default_rng(seed)
    messages = [
        {"role": "user", "content": "<video>\nWhich colour comes first?"},
        {"role": "assistant", "content": "red"},
    ]
    return [
        family.encode(
            processor, list(rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8)), messages
        )
        for _ in range(count)
    ]


def plain_loop(model_path: Path, samples: list[dict], steps: int, micro_batch: int, pad_id: int) -> dict:
    """The baseline: one process, no DeepSpeed, the loop from a PyTorch tutorial."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vidtune.models.family import collate, load_kwargs
    from vidtune.train.ingest import micro_batches

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    model = AutoModelForImageTextToText.from_pretrained(model_path, **load_kwargs(gpu)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=gpu)
    waited, tokens, losses = 0.0, 0, []
    epoch, batches = 0, iter(micro_batches(samples, micro_batch, len(samples), 0, 0))
    started = time.perf_counter()
    for _ in range(steps):
        w0 = time.perf_counter()
        try:
            group = next(batches)
        except StopIteration:
            epoch += 1
            batches = iter(micro_batches(samples, micro_batch, len(samples), 0, epoch))
            group = next(batches)
        batch = {k: v.to(device) for k, v in collate(group, pad_id).items()}
        waited += time.perf_counter() - w0
        tokens += int(batch["attention_mask"].sum())
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    return _row(
        "plain PyTorch", steps * micro_batch / seconds, tokens / seconds, waited / seconds, params, losses
    )


def vidtune_loop(
    model_path: Path, samples: list[dict], steps: int, micro_batch: int, pad_id: int, zero: int
) -> dict:
    from vidtune.train.loop import LoopConfig, train_loop

    cfg = LoopConfig(
        model_path=str(model_path),
        output_dir=tempfile.mkdtemp(prefix="vidtune-bench-out-"),
        steps=steps,
        micro_batch=micro_batch,
        lr=1e-5,
        zero_stage=zero,
        log_every=max(1, steps // 4),
    )
    r = train_loop(cfg, samples, pad_id, log=lambda s: None)
    return _row(
        f"vidtune ZeRO-{zero}", r.samples_per_s, r.tokens_per_s, r.data_wait, r.total_params, r.losses
    )


def _row(name: str, samples_s: float, tokens_s: float, wait: float, params: int, losses: list[float]) -> dict:
    from vidtune.train.loop import _peak_flops

    peak = _peak_flops()
    return {
        "loop": name,
        "samples_per_s": samples_s,
        "tokens_per_s": tokens_s,
        "data_wait": wait,
        "mfu": 6 * params * tokens_s / peak if peak else None,
        "params": params,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "finite": all(math.isfinite(x) for x in losses),
    }


def run_train_bench(
    size: str = "tiny",
    steps: int = 30,
    micro_batch: int = 4,
    frames: int = 8,
    side: int = 112,
    json_out: str | None = None,
) -> dict:
    """Build the model, encode samples once, run the three loops, print a table with ratios."""
    import torch
    from transformers import AutoProcessor

    if size not in SIZES:
        raise ValueError(f"unknown size '{size}', choose from {sorted(SIZES)}")
    work = Path(tempfile.mkdtemp(prefix="vidtune-bench-train-"))
    model_path = build_model(size, work / "model")
    pad_id = AutoProcessor.from_pretrained(model_path).tokenizer.pad_token_id
    samples = synthetic_samples(model_path, max(4 * micro_batch, 16), frames, side)
    tokens = int(np.mean([s["input_ids"].shape[0] for s in samples]))
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or 'x86'})"
    )
    print(
        f"bench train: {size} model, {frames} frames of {side}x{side} ({tokens} tokens a sample), "
        f"micro-batch {micro_batch}, {steps} steps, on {device}"
    )
    rows = [plain_loop(model_path, samples, steps, micro_batch, pad_id)]
    rows += [vidtune_loop(model_path, samples, steps, micro_batch, pad_id, zero) for zero in (2, 3)]
    base = rows[0]["samples_per_s"]
    table = [
        [
            r["loop"],
            f"{r['samples_per_s']:.2f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['data_wait']:.1%}",
            f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
            f"{r['samples_per_s'] / base:.2f}x",
            f"{r['loss_first']:.2f} -> {r['loss_last']:.2f}",
        ]
        for r in rows
    ]
    print(_table(["loop", "samples/s", "tokens/s", "data wait", "MFU", "vs plain", "loss"], table))
    targets = f"targets on one H100 at 2b: MFU >= {TARGET_MFU:.0%}, data wait < {TARGET_DATA_WAIT:.0%}"
    print(targets)
    report = {
        "size": size,
        "frames": frames,
        "side": side,
        "tokens_per_sample": tokens,
        "device": device,
        "micro_batch": micro_batch,
        "steps": steps,
        "rows": rows,
    }
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report
