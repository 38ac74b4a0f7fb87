"""The per-row text state behind every answer: incremental detokenizing, stop strings, token limits and
what a streaming client receives, checked token by token against the tokenizer's own decoding."""

from __future__ import annotations

import pytest
import torch

from vidtune.models.tiny import train_tokenizer
from vidtune.serving.engine import Generation

TEXT = "The ferry leaves at nine. Café crème costs 3€; 中文 too 😀, then the answer: red."


@pytest.fixture(scope="module")
def tok():
    # Trained without the accented, CJK and emoji text: those characters split into byte tokens.
    return train_tokenizer(
        ["The ferry leaves at nine, then the answer"] * 20, ["<|endoftext|>", "<|im_end|>"]
    )


def run(tok, tokens, **kw):
    pieces = []
    row = Generation({"input_ids": torch.zeros(3, dtype=torch.long)}, on_text=pieces.append, **kw)
    eos = {tok.convert_tokens_to_ids("<|im_end|>")}
    for t in tokens:
        row.push(t, tok, eos)
    if not row.done:
        row.finish("length", tok)
    return row, pieces


def test_incremental_text_equals_decoding_everything(tok):
    tokens = tok.encode(TEXT, add_special_tokens=False)
    assert len(tokens) > 30  # multi-byte characters are split over several byte-level tokens
    row, pieces = run(tok, tokens, max_tokens=1000)
    assert row.text == tok.decode(tokens) == TEXT
    assert "".join(pieces) == TEXT and row.completion_tokens == len(tokens)
    assert all("\ufffd" not in p for p in pieces)  # no half characters on the wire


def test_end_of_turn_stops_and_is_not_counted_in_the_text(tok):
    tokens = tok.encode("red", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")] + [5, 6]
    row, pieces = run(tok, tokens, max_tokens=50)
    assert (row.text, row.finish_reason, "".join(pieces)) == ("red", "stop", "red")


def test_stop_string_cuts_the_text_and_streaming_never_shows_it(tok):
    tokens = tok.encode(TEXT, add_special_tokens=False)
    row, pieces = run(tok, tokens, max_tokens=1000, stops=["nine", "zzz"])
    assert row.text == "The ferry leaves at " and row.finish_reason == "stop"
    assert "".join(pieces) == row.text
    assert row.completion_tokens < len(tokens)


def test_max_tokens_ends_with_length(tok):
    tokens = tok.encode(TEXT, add_special_tokens=False)
    row, pieces = run(tok, tokens, max_tokens=7)
    assert row.finish_reason == "length" and row.completion_tokens == 7
    assert row.text == tok.decode(tokens[:7]) and "".join(pieces) == row.text
