"""T2Vid rendering, checked on the pixels: text stays inside the margins, frames are never blank, chunks
follow the word count, long words and long documents neither crash nor overflow, CJK renders as glyphs."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from vidtune.data import fonts
from vidtune.data.longqa import ASK_FOR_BOTH, LongQA, read_longqa, split_longalpaca
from vidtune.data.manifests import ManifestError
from vidtune.data.t2vid import RenderSettings, chunk_text, render_document, tokens

WORDS = (
    "the river carried old boats past the mill while children counted them from the bridge; "
    "nobody knew where they went, but everyone said they'd return before winter"
).split()


def prose(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def ink(png: bytes) -> np.ndarray:
    """Where the text is: pixels darker than mid-grey."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 128


def assert_inside(png: bytes, s: RenderSettings) -> None:
    mask = ink(png)
    assert mask.any(), "blank frame"
    rows, cols = np.nonzero(mask)
    assert cols.min() >= s.margin and cols.max() < s.width - s.margin, (cols.min(), cols.max())
    assert rows.min() >= 0 and rows.max() < s.height


def test_chunks_are_exact_slices_by_word_count():
    text = "Don't stop, world! " * 200 + "  The end.\n"
    chunks = chunk_text(text, 115)
    assert len(chunks) == -(-len(tokens(text)) // 115)
    assert all(c in text for c in chunks)  # nothing re-joined: no spaces before punctuation, no split "Don't"
    assert chunks[0].startswith("Don't stop, world! Don't")
    assert [t for c in chunks for t in c.split()] == text.split()


def test_frames_follow_chunks_and_stay_inside_margins():
    s = RenderSettings()
    doc = render_document(prose(1000), s)
    assert len(doc.frames) == len(doc.chunks) == 9 and doc.words == 1000
    for png in doc.frames:
        assert Image.open(io.BytesIO(png)).size == (448, 448)
        assert_inside(png, s)
    # the block is centred vertically: as much white above the text as below (within a line)
    rows = np.nonzero(ink(doc.frames[0]).any(axis=1))[0]
    assert abs(rows.min() - (s.height - 1 - rows.max())) <= 30
    # each frame's lines hold the chunk's words in order
    assert " ".join(doc.lines[0]).split() == doc.chunks[0].split()


def test_identical_text_gives_identical_pixels():
    text = prose(300, seed=3)
    assert render_document(text).frames == render_document(text).frames


def test_a_long_word_is_cut_not_overflowing():
    s = RenderSettings()
    doc = render_document("start " + "x" * 400 + " https://example.org/" + "a/b" * 80 + " end", s)
    for png in doc.frames:
        assert_inside(png, s)
    assert doc.lines[0][0].startswith("start")


def test_overflowing_chunk_shrinks_then_continues_on_a_new_frame():
    s = RenderSettings()
    long_words = " ".join("internationalisation" for _ in range(115))  # far more than one frame holds
    doc = render_document(long_words, s)
    assert len(doc.chunks) == 1 and len(doc.frames) > 1
    assert doc.font_sizes[0] == s.min_font_size
    assert sum(len(" ".join(lines).split()) for lines in doc.lines) == 115  # no word lost
    for png in doc.frames:
        assert_inside(png, s)


def test_chinese_renders_as_glyphs():
    text = "北京是中华人民共和国的首都，也是全国的政治、文化中心。" * 10 + " Beijing."
    doc = render_document(text)
    face = next(f for f in fonts.FACES if f.name == doc.font)
    assert not fonts.missing(face, text)
    assert doc.font == "noto-sans-cjk"
    assert_inside(doc.frames[0], RenderSettings())
    # every CJK character is a word: 270 + 1 words -> 3 chunks of 115
    assert doc.words == 271 and len(doc.chunks) == 3
    assert fonts.face_for("plain English").name == "noto-sans"


def test_longalpaca_split():
    doc, q = split_longalpaca(
        "Below is a paper. Memorize the paper and answer my question after the paper.\n The paper begins. \n"
        "Deep nets are deep.\nThey learn.\n Now the paper ends. \nWhat do they do?"
    )
    assert doc == "Deep nets are deep.\nThey learn." and q == "What do they do?"
    with pytest.raises(ValueError, match="marker"):
        split_longalpaca("just a question")


def test_longqlora_rows_rewritten_as_the_paper_did(tmp_path):
    docs = "Document [1](Title: Rivers) The Ouse floods.\nDocument [2](Title: Novels) Emma is a novel."
    rows = [
        {
            "input": f"{docs}\nQuestion: who wrote Emma?",
            "output": ("Jane Austen wrote Emma, published in 1815. It was her fourth novel. (Document 2)"),
        },
        {
            "input": f"{docs}\n\nWhat floods?",
            "output": "According to document [1], the Ouse floods in spring.",
        },
        {"input": f"{docs}\nQuestion: what is Emma?", "output": "A novel by Jane Austen."},
        {"input": docs, "output": "The Ouse."},  # no question after the documents
        {"input": f"{docs}\nQuestion: which?", "output": "Document ID: 2"},  # nothing but the reference
    ]
    path = tmp_path / "longqlora.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = list(read_longqa(str(path), preset="longqlora"))
    emma, ouse, plain = items[:3]
    assert emma.document == docs and emma.question == f"who wrote Emma? {ASK_FOR_BOTH}"
    assert emma.answer == "Jane Austen wrote Emma, published in 1815.\nDocument ID: 2"
    assert (
        ouse.question.startswith("What floods? ")
        and ouse.answer == "The Ouse floods in spring.\nDocument ID: 1"
    )
    # an answer that names no document is kept as it was, and so is its question
    assert (plain.question, plain.answer) == ("what is Emma?", "A novel by Jane Austen.")
    assert isinstance(items[3], ManifestError) and "no question" in items[3].reason
    assert isinstance(items[4], ManifestError) and "only a document reference" in items[4].reason


def test_read_longqa_rows_and_errors(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        json.dumps({"id": "a", "context": "Some text.", "question": "Q?", "answer": "A"}).encode(),
        json.dumps({"id": "b", "context": "", "question": "Q?", "answer": "A"}).encode(),
        b'{"id": "c", "context": "caf\xe9", "question": "Q?", "answer": "A"}',  # Latin-1, not UTF-8
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")
    items = list(read_longqa(str(path)))
    assert isinstance(items[0], LongQA) and items[0].document == "Some text."
    assert (
        isinstance(items[1], ManifestError)
        and items[1].origin.endswith(":2")
        and "'context'" in items[1].reason
    )
    assert (
        isinstance(items[2], ManifestError) and items[2].origin.endswith(":3") and "UTF-8" in items[2].reason
    )


def test_word_cache_renders_exactly_what_pillow_renders():
    """Words set from cached glyphs equal Pillow's own rendering of the word, pixel for pixel, and the
    measured widths equal Pillow's (overlapping glyphs such as "ty", "fj", "AV" included)."""
    from vidtune.data.t2vid import words_for

    cache = words_for(fonts.FACES[0], 19)
    for word in ["typography", "fjord", "AVAST", "office,", "Don't", "quickly;", "T.V.", "wyvern", "(x)"]:
        core, offset = cache.font.getmask2(word, mode="L")
        mine, my_offset = cache.glyphs(word)
        assert my_offset == offset and mine.size == core.size
        assert bytes(mine) == bytes(core), word
        assert cache[word].advance == cache.font.getlength(word)
        assert cache[word].right == cache.font.getbbox(word)[2]


def test_same_pixels_as_the_papers_recipe():
    """The fast renderer is the paper's recipe (per-word measurement, greedy wrap, a line at a time),
    only faster: every frame decodes to the same pixels."""
    from vidtune.bench.synth import paper_recipe, zipf_text

    s = RenderSettings()
    for seed in range(3):
        text = zipf_text(800, seed)
        ours, theirs = render_document(text, s).frames, paper_recipe(text, s, 115)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert np.array_equal(
                np.asarray(Image.open(io.BytesIO(a)).convert("L")),
                np.asarray(Image.open(io.BytesIO(b)).convert("L")),
            )
