"""The per-worker training loop in a plain process (no Ray): real DeepSpeed ZeRO on CPU trains the tiny
Qwen2-VL, the loss falls, and the saved model loads back through from_pretrained and answers."""

from __future__ import annotations

import random

import pytest
import torch

from test_models import NAMES, QUESTION, clip, sample
from vidtune.models.family import get_family
from vidtune.train.checkpoints import LocalCheckpointer
from vidtune.train.deepspeed import deepspeed_config
from vidtune.train.ingest import micro_batches
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


@pytest.fixture(scope="module")
def colour_task(tmp_path_factory):
    """A tiny Qwen2-VL and 32 encoded "which colour comes first" samples."""
    from transformers import AutoProcessor

    family = get_family("qwen2-vl")
    corpus = [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    base = family.build_tiny(tmp_path_factory.mktemp("tiny") / "base", corpus)
    processor = AutoProcessor.from_pretrained(base)
    rng = random.Random(2)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    samples = [family.encode(processor, *sample(*rng.choice(pairs))) for _ in range(32)]
    return base, samples, processor.tokenizer.pad_token_id


def _cfg(base, out, **kw) -> LoopConfig:
    return LoopConfig(
        **{
            "model_path": str(base),
            "output_dir": str(out),
            "micro_batch": 4,
            "lr": 3e-3,
            "log_every": 100,
            **kw,
        }
    )


class Interrupt(Exception):
    pass


def test_resume_continues_the_same_run(colour_task, tmp_path):
    """A run stopped after its step-4 checkpoint resumes at step 5 on the micro-batch it would have
    trained next: its losses from there are those of a run that never stopped."""
    base, samples, pad = colour_task
    whole = train_loop(_cfg(base, tmp_path / "a", steps=10), samples, pad, log=lambda s: None)

    cfg = _cfg(base, tmp_path / "b", steps=10, checkpoint_every=4)
    ckpts = LocalCheckpointer(tmp_path / "ckpt", keep=1)
    served = 0

    def failing(epoch):  # dies while fetching the 7th micro-batch, after the step-4 checkpoint
        nonlocal served
        for group in micro_batches(samples, cfg.micro_batch, len(samples), cfg.seed, epoch):
            served += 1
            if served == 7:
                raise Interrupt
            yield group

    with pytest.raises(Interrupt):
        train_loop(cfg, failing, pad, checkpointer=ckpts, log=lambda s: None)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-00000004"]

    lines: list[str] = []
    resumed = train_loop(cfg, samples, pad, checkpointer=ckpts, log=lines.append)
    assert lines[0] == "resumed from step 4 (epoch 0, micro-batch 4)"
    assert resumed.first_step == 5 and len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(whole.losses[4:], rel=1e-4)


def test_zero3_lora_frozen_vision_checkpointing(colour_task, tmp_path):
    """ZeRO-3 (weights partitioned while loading), LoRA on the language model, vision tower frozen,
    gradient checkpointing: the loss falls, only adapters train, and the merged model loads plainly."""
    from transformers import AutoModelForImageTextToText

    base, samples, pad = colour_task
    cfg = _cfg(
        base,
        tmp_path / "out",
        steps=16,
        lr=2e-2,  # adapters start at zero and want a larger step than full fine-tuning
        zero_stage=3,
        lora_rank=8,
        lora_alpha=16,
        # a tiny LM with random weights learns nothing new unless its output layer adapts too
        lora_targets=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj", "lm_head"),
        freeze=("vision",),
        gradient_checkpointing=True,
    )
    result = train_loop(cfg, samples, pad, log=lambda s: None)
    assert result.losses[-1] < 0.8 * result.losses[0]
    assert 0 < result.trainable_params < 0.2 * result.total_params
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    original = AutoModelForImageTextToText.from_pretrained(base)
    family = get_family("qwen2-vl")
    changed = {
        family.module_group(n)
        for (n, p), q in zip(trained.named_parameters(), original.parameters(), strict=True)
        if not torch.equal(p, q)
    }
    assert changed == {"language"}  # merged adapters moved the LM; the vision tower is untouched
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()


def test_ingest_order_is_seeded_balanced_and_complete():
    """Ranks get disjoint, balanced rows from a seeded permutation; an epoch's micro-batches hold every
    row once, in an order fixed by (seed, epoch) that changes from epoch to epoch."""
    from vidtune.train.ingest import rank_of_ids

    ids = [f"c{i:03d}" for i in range(103)]
    ranks = rank_of_ids(reversed(ids), 4, seed=7)
    assert ranks == rank_of_ids(ids, 4, seed=7) and ranks != rank_of_ids(ids, 4, seed=8)
    sizes = sorted(list(ranks.values()).count(r) for r in range(4))
    assert sizes == [25, 26, 26, 26]
    with pytest.raises(ValueError, match="repeated ids"):
        rank_of_ids(["a", "b", "a"], 2, seed=0)

    rows = list(range(50))
    epoch0 = list(micro_batches(rows, 8, 16, seed=3, epoch=0))
    assert [len(b) for b in epoch0] == [8] * 6 + [2]  # the last one is smaller, nothing dropped
    assert sorted(r for b in epoch0 for r in b) == rows
    assert epoch0 == list(micro_batches(rows, 8, 16, seed=3, epoch=0))
    assert epoch0 != list(micro_batches(rows, 8, 16, seed=3, epoch=1))


def test_zero3_with_optimizer_and_parameters_offloaded(colour_task, tmp_path):
    """The paper's recipe: ZeRO-3 with the optimizer and the parameters offloaded to CPU (DeepSpeed's CPU
    Adam, compiled on first use). The loss falls and the gathered model loads back."""
    from transformers import AutoModelForImageTextToText

    base, samples, pad = colour_task
    cfg = _cfg(base, tmp_path / "out", steps=8, zero_stage=3, offload_optimizer=True, offload_params=True)
    result = train_loop(cfg, samples, pad, log=lambda s: None)
    assert result.losses[-1] < result.losses[0]
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in trained.parameters()) == result.total_params


def test_a_replaced_worker_group_does_not_record_a_step_twice(tmp_path):
    """Rank 0 wrote steps 1-6, then died before Ray Train registered the step-6 checkpoint; its
    replacement resumes from step 3 in the same MLflow run. Steps 4-6 are trained again but recorded
    once, and the run says which steps were retrained."""
    import mlflow

    from vidtune.train.checkpoints import LoopState
    from vidtune.train.trainer import MlflowMetrics

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    first = MlflowMetrics(uri, run_id)
    for step in range(1, 7):
        first.add(step, {"loss": 10.0 - step})
    first.flush()

    second = MlflowMetrics(uri, run_id)
    second.resumed(LoopState(step=3, run_id=run_id))
    for step in range(4, 10):
        second.add(step, {"loss": 10.0 - step})
    second.flush()
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(1, 10))
    assert client.get_run(run_id).data.tags["vidtune.retrained_steps"] == "4-6"
