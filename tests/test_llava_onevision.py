"""LLaVA-OneVision: a tiny model built offline and loaded through from_pretrained; the ``<video>``
placeholder expanded to as many tokens as the model's pooled video features; label masking checked on the
tokens; and the model learns which colour comes first through the encode and collate path training uses."""

from __future__ import annotations

import random

import pytest
import torch

import vidtune.models.llava_onevision  # noqa: F401 — registers itself
from test_models import NAMES, QUESTION, clip, learn_colour_order, sample
from vidtune.models.family import IGNORE, collate, get_family


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("llava-onevision")
    corpus = [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    path = family.build_tiny(tmp_path_factory.mktemp("tiny") / "llava-ov", corpus)
    return family, AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_tiny_model_loads_back_and_has_a_finite_loss(tiny):
    family, model, processor = tiny
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    samples = [
        family.encode(processor, *sample("red", "blue")),
        family.encode(processor, *sample("green", "red")),
    ]
    batch = collate(samples, processor.tokenizer.pad_token_id)
    size = model.config.vision_config.image_size
    assert tuple(batch["pixel_values_videos"].shape) == (2, 8, 3, size, size)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    out = model(**batch)
    assert torch.isfinite(out.loss)
    groups = {family.module_group(n) for n, _ in model.named_parameters()}
    assert groups == {"vision", "projector", "language"}


@pytest.mark.parametrize("frames", [8, 4])
def test_placeholder_expands_to_the_video_tokens(tiny, frames):
    family, model, processor = tiny
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "red"}]
    enc = family.encode(processor, clip("red", "blue", frames=frames), messages)
    vision = model.config.vision_config
    assert (vision.image_size, vision.patch_size) == (56, 14)
    # 56 / 14 = 4 patches a side, pooled to 2x2 per frame, plus one image_newline for the whole video
    side = -(-(vision.image_size // vision.patch_size) // 2)
    expected = frames * side * side + 1
    assert expected == frames * 4 + 1
    assert int((enc["input_ids"] == model.config.video_token_id).sum()) == expected
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 0
    with torch.no_grad():
        features = model.get_video_features(enc["pixel_values_videos"]).pooler_output
    assert tuple(features.shape) == (1, expected, model.config.text_config.hidden_size)


def test_labels_cover_the_answer_only(tiny):
    family, _, processor = tiny
    enc = family.encode(processor, *sample("green", "red"))
    kept = enc["labels"][enc["labels"] != IGNORE]
    assert processor.tokenizer.decode(kept) == "green<|im_end|>"
    everything = family.labels(processor, enc["input_ids"], "all")
    assert not (everything == processor.video_token_id).any()
    text = processor.tokenizer.decode(everything[everything != IGNORE])
    assert "Which colour comes first?" in text and "green" in text and "<video>" not in text


def test_labels_cover_every_assistant_turn(tiny):
    family, _, processor = tiny
    frames, _ = sample("blue", "yellow")
    messages = [
        {"role": "system", "content": "Answer with a colour."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "blue"},
        {"role": "user", "content": "Which colour comes second?"},
        {"role": "assistant", "content": "yellow"},
    ]
    enc = family.encode(processor, frames, messages)
    kept = enc["labels"][enc["labels"] != IGNORE]
    assert processor.tokenizer.decode(kept) == "blue<|im_end|>yellow<|im_end|>"


def test_learns_which_colour_comes_first(tiny):
    """Far above chance (3 of 12) only if frames arrive in order and the labels are the answer."""
    loss, answers, right = learn_colour_order(*tiny, frames=4, size=56, steps=80)
    assert loss < 0.5 and right >= 9, answers


def test_mixed_frame_counts_fail_clearly_and_the_loop_trains(tiny, tmp_path):
    """The model reshapes a batch by one frame count: collate refuses mixed lengths with a clear error,
    and the DeepSpeed loop (ZeRO-2) trains on clips of one length."""
    from transformers import AutoModelForImageTextToText

    from vidtune.train.loop import LoopConfig, train_loop

    family, model, processor = tiny
    pad = processor.tokenizer.pad_token_id
    four = family.encode(processor, clip("red", "blue", 4, 56), sample("red", "blue")[1])
    eight = family.encode(processor, clip("red", "blue", 8, 56), sample("red", "blue")[1])
    with pytest.raises(ValueError, match="one frame count per batch"):
        collate([four, eight], pad)

    # a fresh model: the module's one has already learned the task in the learning test
    family.build_tiny(
        tmp_path / "base", [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    )
    rng = random.Random(4)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    samples = [
        family.encode(processor, clip(a, b, 4, 56), sample(a, b)[1])
        for a, b in (rng.choice(pairs) for _ in range(24))
    ]
    cfg = LoopConfig(
        model_path=str(tmp_path / "base"),
        output_dir=str(tmp_path / "out"),
        family="llava-onevision",
        steps=12,
        micro_batch=4,
        lr=3e-3,
        log_every=100,
    )
    result = train_loop(cfg, samples, pad, log=lambda s: None)
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.losses[-1] < result.losses[0]
    assert (
        type(AutoModelForImageTextToText.from_pretrained(tmp_path / "out")).__name__ == type(model).__name__
    )
