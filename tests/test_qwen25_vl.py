"""Qwen2.5-VL (the ``qwen2.5-vl`` family): a tiny model built offline and loaded through from_pretrained;
placeholder expansion, temporal M-RoPE positions and label masking checked on the tokens; the model
learns which colour comes first through the encode and collate path training uses; and the DeepSpeed
loop (ZeRO-2) trains it in a plain process."""

from __future__ import annotations

import random

import pytest
import torch

from test_models import NAMES, learn_colour_order, sample
from vidtune.models.family import IGNORE, collate, get_family

CORPUS = [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("qwen2.5-vl")
    path = family.build_tiny(tmp_path_factory.mktemp("tiny") / "qwen25vl", CORPUS)
    return family, AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_tiny_model_loads_back_and_has_a_finite_loss(tiny):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    family, model, processor = tiny
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    vision = model.config.vision_config
    assert vision.out_hidden_size == model.config.text_config.hidden_size
    assert list(vision.fullatt_block_indexes) == [1] and vision.window_size == 56  # block 0 is windowed
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    samples = [
        family.encode(processor, *sample("red", "blue")),
        family.encode(processor, *sample("green", "red")),
    ]
    batch = collate(samples, processor.tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["video_grid_thw"].tolist() == [[4, 8, 8]] * 2
    assert batch["second_per_grid_ts"].tolist() == [1.0, 1.0]  # one per video, like video_grid_thw
    out = model(**batch)
    assert torch.isfinite(out.loss)
    groups = {n: family.module_group(n) for n, _ in model.named_parameters()}
    assert set(groups.values()) == {"vision", "projector", "language"}
    assert {n for n, g in groups.items() if g == "projector"} == {
        n for n, _ in model.named_parameters() if n.startswith("model.visual.merger.")
    }


def test_placeholder_expands_to_the_video_tokens(tiny):
    family, model, processor = tiny
    enc = family.encode(processor, *sample("red", "blue"))
    # 8 frames of 112x112: temporal patches 8/2, 112/14 = 8 patches a side, merged 2x2 -> 4*4*4 tokens
    assert enc["video_grid_thw"].tolist() == [[4, 8, 8]]
    t, h, w = enc["video_grid_thw"][0].tolist()
    assert int((enc["input_ids"] == model.config.video_token_id).sum()) == t * h * w // 4 == 64
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 0


def test_temporal_positions_follow_the_frames(tiny):
    """Frames are taken as sampled at 2 fps: a temporal patch (2 frames) is one second, so consecutive
    patches sit ``tokens_per_second`` M-RoPE positions apart. The processor's own default for bare frames
    (24 fps) would put all four patches at one position, and frame order would be lost."""
    family, model, processor = tiny
    batch = collate([family.encode(processor, *sample("red", "blue"))], processor.tokenizer.pad_token_id)
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )
    video = batch["input_ids"][0] == model.config.video_token_id
    temporal = sorted(set(positions[0, 0][video].tolist()))
    step = model.config.vision_config.tokens_per_second
    assert temporal == [temporal[0] + i * step for i in range(4)]


def test_labels_cover_the_answer_only(tiny):
    family, _, processor = tiny
    enc = family.encode(processor, *sample("green", "red"))
    kept = enc["labels"][enc["labels"] != IGNORE]
    assert processor.tokenizer.decode(kept) == "green<|im_end|>"
    everything = family.labels(processor, enc["input_ids"], "all")
    text = processor.tokenizer.decode(everything[everything != IGNORE])
    assert "Which colour comes first?" in text and "green" in text and "<|video_pad|>" not in text


def test_learns_which_colour_comes_first(tiny):
    """Far above chance (3 of 12) only if frames arrive in order and the labels are the answer."""
    loss, answers, right = learn_colour_order(*tiny)
    assert loss < 0.5 and right >= 9, answers


def test_deepspeed_loop_trains_it(tmp_path):
    """The DeepSpeed loop (ZeRO-2, one rank in this process) on a fresh tiny model: finite, falling
    losses, and the saved output loads back as the same class."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vidtune.train.loop import LoopConfig, train_loop

    family = get_family("qwen2.5-vl")
    base = family.build_tiny(tmp_path / "base", CORPUS)
    processor = AutoProcessor.from_pretrained(base)
    rng = random.Random(4)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    samples = [family.encode(processor, *sample(*rng.choice(pairs))) for _ in range(24)]
    cfg = LoopConfig(
        model_path=str(base),
        output_dir=str(tmp_path / "out"),
        family="qwen2.5-vl",
        steps=12,
        micro_batch=4,
        lr=3e-3,
        zero_stage=2,
        log_every=100,
    )
    result = train_loop(cfg, samples, processor.tokenizer.pad_token_id, log=lambda s: None)
    assert len(result.losses) == 12
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.losses[-1] < result.losses[0]
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert type(trained).__name__ == "Qwen2_5_VLForConditionalGeneration"
