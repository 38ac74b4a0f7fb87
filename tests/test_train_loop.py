"""The per-worker training loop in a plain process (no Ray): real DeepSpeed ZeRO on CPU trains the tiny
Qwen2-VL, the loss falls, and the saved model loads back through from_pretrained and answers."""

from __future__ import annotations

import random

import pytest

from test_models import NAMES, QUESTION, clip, sample
from vidtune.models.family import get_family
from vidtune.train.deepspeed import deepspeed_config
from vidtune.train.loop import LoopConfig, train_loop


def test_deepspeed_config_rules():
    cfg = deepspeed_config(zero_stage=3, offload_optimizer=True, offload_params=True, total_steps=100)
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 3
    with pytest.raises(ValueError, match="stage 3"):
        deepspeed_config(zero_stage=2, offload_params=True)


def test_zero2_trains_in_a_plain_process(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("qwen2-vl")
    corpus = [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    base = family.build_tiny(tmp_path / "base", corpus)
    processor = AutoProcessor.from_pretrained(base)
    rng = random.Random(1)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    samples = [family.encode(processor, *sample(*rng.choice(pairs))) for _ in range(64)]
    lines: list[str] = []
    cfg = LoopConfig(
        model_path=str(base),
        output_dir=str(tmp_path / "out"),
        steps=60,
        micro_batch=8,
        lr=3e-3,
        zero_stage=2,
        log_every=20,
    )
    result = train_loop(cfg, samples, processor.tokenizer.pad_token_id, log=lines.append)
    assert result.losses[0] > 3 * result.losses[-1]
    assert len(lines) == 3 and lines[-1].startswith("step 60/60") and "samples/s" in lines[-1]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    right = sum(
        family.generate(model, processor, clip(a, b), [{"role": "user", "content": QUESTION}], 4) == a
        for a, b in pairs
    )
    assert right >= 9, right  # of 12 held-out orders; chance is 3
