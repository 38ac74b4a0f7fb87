"""Model families: a tiny Qwen2-VL built offline and loaded through from_pretrained; placeholder
expansion and label masking checked on the tokens; and the model learns a task that needs the frames in
order (which colour comes first), through the same encode and collate path training uses."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vidtune.data.videogen import COLORS
from vidtune.models.family import IGNORE, collate, get_family

NAMES = list(COLORS)
QUESTION = "<video>\nWhich colour comes first?"


def clip(first: str, second: str, frames: int = 8, size: int = 112) -> list[np.ndarray]:
    return [
        np.full((size, size, 3), COLORS[first if i < frames // 2 else second], np.uint8)
        for i in range(frames)
    ]


def sample(first: str, second: str) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    return clip(first, second), [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first},
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("qwen2-vl")
    corpus = [f"Which colour comes first? {a} {b}" for a in NAMES for b in NAMES] * 5
    path = family.build_tiny(tmp_path_factory.mktemp("tiny") / "qwen2vl", corpus)
    return family, AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_tiny_model_loads_back_and_has_a_finite_loss(tiny):
    family, model, processor = tiny
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    enc = family.encode(processor, *sample("red", "blue"))
    out = model(**collate([enc], processor.tokenizer.pad_token_id))
    assert torch.isfinite(out.loss)
    groups = {family.module_group(n) for n, _ in model.named_parameters()}
    assert groups == {"vision", "projector", "language"}


def test_placeholder_expands_to_the_video_tokens(tiny):
    family, model, processor = tiny
    enc = family.encode(processor, *sample("red", "blue"))
    video_id = model.config.video_token_id
    # 8 frames of 112x112: temporal patches 8/2, 112/14 = 8 patches a side, merged 2x2 -> 4*4*4 tokens
    assert enc["video_grid_thw"].tolist() == [[4, 8, 8]]
    assert int((enc["input_ids"] == video_id).sum()) == 4 * 8 * 8 // 4


def test_clips_of_different_lengths_batch(tiny):
    """A 2-frame T2Vid clip beside an 8-frame video clip: Qwen2-VL takes the patches of both in one
    batch (the demo's mix has both kinds)."""
    family, model, processor = tiny
    short = family.encode(processor, clip("red", "blue", 2), sample("red", "blue")[1])
    batch = collate(
        [short, family.encode(processor, *sample("green", "red"))], processor.tokenizer.pad_token_id
    )
    assert batch["video_grid_thw"].tolist() == [[1, 8, 8], [4, 8, 8]]
    assert torch.isfinite(model(**batch).loss)


def test_labels_cover_the_answer_only(tiny):
    family, _, processor = tiny
    enc = family.encode(processor, *sample("green", "red"))
    kept = enc["labels"][enc["labels"] != IGNORE]
    assert processor.tokenizer.decode(kept) == "green<|im_end|>"
    everything = family.labels(processor, enc["input_ids"], "all")
    text = processor.tokenizer.decode(everything[everything != IGNORE])
    assert "Which colour comes first?" in text and "green" in text and "<|video_pad|>" not in text


PAIRS = [(a, b) for a in NAMES for b in NAMES if a != b]


def learn_colour_order(family, model, processor, *, frames: int = 8, size: int = 112, steps: int = 60):
    """Train on 96 "which colour comes first" clips through ``encode`` and ``collate`` (AdamW, lr 3e-3,
    batches of 8), then answer all 12 ordered pairs. Returns (last loss, answers, right answers)."""
    torch.manual_seed(0)
    rng = random.Random(0)

    def messages(first: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first}]

    train = [
        family.encode(processor, clip(a, b, frames, size), messages(a))
        for a, b in (rng.choice(PAIRS) for _ in range(96))
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**collate(rng.sample(train, 8), processor.tokenizer.pad_token_id)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    question = [{"role": "user", "content": QUESTION}]
    answers = [family.generate(model, processor, clip(a, b, frames, size), question, 4) for a, b in PAIRS]
    right = sum(ans.strip() == a for ans, (a, _) in zip(answers, PAIRS, strict=True))
    return float(loss.detach()), answers, right


def test_learns_which_colour_comes_first(tiny):
    """Far above chance (3 of 12) only if frames arrive in order and the labels are the answer."""
    loss, answers, right = learn_colour_order(*tiny)
    assert loss < 0.5 and right >= 9, answers
