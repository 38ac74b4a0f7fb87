"""Idefics3 / SmolVLM: a tiny Idefics3 built offline and loaded through from_pretrained; frames as images
(one ``<image>`` a frame, no splitting) checked on the tokens, label masking on the decoded labels; and the
model learns which colour comes first through the encode and collate path training uses."""

from __future__ import annotations

import random

import pytest
import torch

import vidtune.models.idefics3  # noqa: F401 — registers the family
from test_models import NAMES, QUESTION, clip, learn_colour_order, sample
from vidtune.models.family import IGNORE, collate, get_family

FRAMES, SIZE = 4, 64  # the learning test's clips: two frames of each colour, at the tower's resolution


def short_sample(first: str, second: str):
    return clip(first, second, FRAMES, SIZE), [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first},
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("idefics3")
    corpus = [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    path = family.build_tiny(tmp_path_factory.mktemp("tiny") / "idefics3", corpus)
    return family, AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_tiny_model_loads_back_and_has_a_finite_loss(tiny):
    family, model, processor = tiny
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    assert processor.image_processor.do_image_splitting is False
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    encoded = [
        family.encode(processor, *sample("red", "blue")),
        family.encode(processor, *sample("green", "red")),
    ]
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (2, 8, 3, SIZE, SIZE)
    assert batch["pixel_attention_mask"].shape == (2, 8, SIZE, SIZE)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    groups = {family.module_group(n) for n, _ in model.named_parameters()}
    assert groups == {"vision", "projector", "language"}


def test_placeholder_expands_to_one_image_per_frame(tiny):
    family, model, processor = tiny
    enc = family.encode(processor, *sample("red", "blue"))
    tok = processor.tokenizer
    ids = enc["input_ids"].tolist()
    # 8 frames squared to 64 px: 16-px patches, 4x4 a frame, pixel-shuffled 2x2 -> 4 tokens a frame
    assert processor.image_seq_len == model.model.image_seq_len == 4
    assert ids.count(model.config.image_token_id) == ids.count(tok.convert_tokens_to_ids("<image>")) == 8 * 4
    assert ids.count(tok.convert_tokens_to_ids("<global-img>")) == 8
    assert ids.count(tok.convert_tokens_to_ids("<fake_token_around_image>")) == 2 * 8
    frame = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    assert tok.decode(enc["input_ids"]).startswith("<|begin_of_text|>User:" + frame * 8 + "Which colour")
    assert enc["pixel_values"].shape == (1, 8, 3, SIZE, SIZE)


def test_labels_cover_the_answer_only(tiny):
    family, _, processor = tiny
    tok = processor.tokenizer
    enc = family.encode(processor, *sample("green", "red"))
    kept = enc["labels"][enc["labels"] != IGNORE]
    # The template writes "Assistant: green": the answer's token carries its leading space.
    assert tok.decode(kept) == " green<end_of_utterance>"
    everything = family.labels(processor, enc["input_ids"], "all")
    kept = everything[everything != IGNORE]
    text = tok.decode(kept)
    assert "Which colour comes first?" in text and "Assistant: green<end_of_utterance>" in text
    visual = {tok.convert_tokens_to_ids(t) for t in ("<image>", "<fake_token_around_image>", "<global-img>")}
    assert not visual & set(kept.tolist())
    assert len(kept) == len(enc["input_ids"]) - 8 * (4 + 3)


def test_learns_which_colour_comes_first(tiny):
    """Far above chance (3 of 12) only if frames arrive in order and the labels are the answer."""
    loss, answers, right = learn_colour_order(*tiny, frames=FRAMES, size=SIZE, steps=80)
    assert loss < 0.5 and right >= 9, answers


def test_clips_of_different_lengths_batch_like_single_clips(tiny):
    """A T2Vid clip of 2 frames beside a video clip of 8: the short one is padded with empty images,
    which the model skips, so each sample's logits equal those it gets alone."""
    family, model, processor = tiny
    pad = processor.tokenizer.pad_token_id
    short = family.encode(processor, clip("red", "blue", 2, SIZE), sample("red", "blue")[1])
    long = family.encode(processor, *sample("green", "red"))
    batch = collate([short, long], pad)
    assert batch["pixel_values"].shape[:2] == (2, 8)
    model.eval()
    with torch.no_grad():
        together = model(**batch).logits
        for i, one in enumerate([short, long]):
            alone = model(**collate([one], pad)).logits[0]
            n = alone.shape[0]
            assert torch.allclose(together[i, :n], alone, atol=1e-4)


def test_trains_in_the_vidtune_loop(tiny, tmp_path):
    """The DeepSpeed loop (ZeRO-2) on clips of mixed lengths: finite losses, falling, model saved."""
    from transformers import AutoModelForImageTextToText

    from vidtune.train.loop import LoopConfig, train_loop

    family, model, processor = tiny
    # a fresh model: the module's one has already learned the task in the learning test
    family.build_tiny(
        tmp_path / "base", [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    )
    rng = random.Random(3)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    samples = [
        family.encode(processor, clip(a, b, rng.choice([2, 4]), SIZE), sample(a, b)[1])
        for a, b in (rng.choice(pairs) for _ in range(24))
    ]
    cfg = LoopConfig(
        model_path=str(tmp_path / "base"),
        output_dir=str(tmp_path / "out"),
        family="idefics3",
        steps=12,
        micro_batch=4,
        lr=3e-3,
        log_every=100,
    )
    result = train_loop(cfg, samples, processor.tokenizer.pad_token_id, log=lambda s: None)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    assert (
        type(AutoModelForImageTextToText.from_pretrained(tmp_path / "out")).__name__
        == model.__class__.__name__
    )
