"""T2Vid: long text rendered as a sequence of frames (Sparrow, arXiv 2411.19951).

A document is cut into chunks of about ``words_per_frame`` words, keeping the original characters exactly
(the chunk is a slice of the source, never re-joined tokens). Each chunk is set on a white canvas in
black, greedy word wrap inside the side margins, the block centred vertically. Text never leaves the
canvas silently: a chunk that does not fit shrinks its font (down to ``min_font_size``) and, past that,
continues on an extra frame. Chinese, Japanese and Korean have no spaces, so each of their characters
counts as a word and lines may break between any two of them.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vidtune.data import fonts

_CJK = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
)
TOKEN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


@dataclass(frozen=True)
class RenderSettings:
    width: int = 448
    height: int = 448
    font_size: int = 20
    min_font_size: int = 12
    margin: int = 20  # left and right; also the least space kept above and below the block
    line_spacing: float = 1.0  # of the font's ascent + descent (Noto Sans: 1.36 em): 115 words fit at size 20
    png_compress_level: int = 1  # lossless either way; level 1 is several times faster than 6


@dataclass
class Rendered:
    frames: list[bytes]  # PNG, one per frame
    chunks: list[str]  # the source text of each chunk (a chunk may span several frames)
    words: int
    font: str
    font_sizes: list[int] = field(default_factory=list)  # per frame
    lines: list[list[str]] = field(default_factory=list)  # per frame, the text of each line


def tokens(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word; a CJK character is a word of its own."""
    return [m.span() for m in TOKEN.finditer(text)]


def chunk_text(text: str, words_per_frame: int = 115) -> list[str]:
    """Chunks of ``words_per_frame`` words, each an exact slice of ``text`` (nothing re-joined)."""
    spans = tokens(text)
    out = []
    for i in range(0, len(spans), words_per_frame):
        group = spans[i : i + words_per_frame]
        out.append(text[group[0][0] : group[-1][1]])
    return out


@dataclass
class Word:
    advance: float  # where the next word starts, from this one's origin
    right: int  # the rightmost inked pixel, from this one's origin
    glyphs: tuple[object, tuple[int, int]] | None = None  # rendered mask and its offset, once drawn


def _screen(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlapping glyph coverage merged as FreeType text rendering in Pillow merges it:
    a + b - a*b/255, with Pillow's rounded division by 255 (uint16 holds every intermediate)."""
    x = a * b + 128
    return a + b - (((x >> 8) + x) >> 8)


@dataclass
class Glyph:
    advance: float
    right: int  # rightmost ink, from the pen position
    mask: np.ndarray  # FreeType's rendering of the character alone
    offset: tuple[int, int]


class WordCache:
    """Words of one font, measured and drawn from per-character glyphs rendered once.

    FreeType rasterising every glyph of every line again costs more than everything else together. With
    basic layout (no kerning, hinted whole-pixel advances) a word is its characters' glyphs placed at the
    summed advances and merged as Pillow merges overlapping glyphs: exactly Pillow's own rendering of
    the word (the tests and ``vidtune bench synth`` compare pixels), from a few hundred cached glyphs.
    """

    def __init__(self, font: ImageFont.FreeTypeFont):
        self.font = font
        self.words: dict[str, Word] = {}
        self.chars: dict[str, Glyph] = {}
        self.space = font.getlength(" ")

    def _char(self, ch: str) -> Glyph:
        g = self.chars.get(ch)
        if g is None:
            core, offset = self.font.getmask2(ch, mode="L")
            w, h = core.size
            # uint16: _screen's products fit without overflow
            mask = np.frombuffer(bytes(core), np.uint8).reshape(h, w).astype(np.uint16)
            g = self.chars[ch] = Glyph(self.font.getlength(ch), self.font.getbbox(ch)[2], mask, offset)
        return g

    def __getitem__(self, text: str) -> Word:
        word = self.words.get(text)
        if word is None:
            pen, right = 0.0, 0
            for ch in text:
                g = self._char(ch)
                right = max(right, int(pen) + g.right)
                pen += g.advance
            word = self.words[text] = Word(pen, right)
        return word

    def glyphs(self, text: str) -> tuple[object, tuple[int, int]]:
        """The word's mask (a Pillow core image) and offset, as ``font.getmask2(text)`` would give."""
        word = self[text]
        if word.glyphs is None:
            placed, pen = [], 0.0
            for ch in text:
                g = self._char(ch)
                if g.mask.size:
                    placed.append((g.mask, int(pen) + g.offset[0], g.offset[1]))
                pen += g.advance
            if not placed:
                word.glyphs = self.font.getmask2(text, mode="L")
                return word.glyphs
            x0, y0 = min(p[1] for p in placed), min(p[2] for p in placed)
            x1 = max(x + m.shape[1] for m, x, _ in placed)
            y1 = max(y + m.shape[0] for m, _, y in placed)
            out = np.zeros((y1 - y0, x1 - x0), np.uint16)
            for m, x, y in placed:
                view = out[y - y0 : y - y0 + m.shape[0], x - x0 : x - x0 + m.shape[1]]
                view[...] = _screen(view, m) if view.any() else m
            word.glyphs = (Image.fromarray(out.astype(np.uint8)).im, (x0, y0))
        return word.glyphs


@lru_cache(maxsize=64)
def words_for(face: fonts.FontFace, size: int) -> WordCache:
    return WordCache(fonts.load(face, size))


Line = list[tuple[str, int]]  # (word, x) pairs


def _pieces(word: str, cache: WordCache, max_width: int) -> list[str]:
    """A word wider than the line, cut into pieces that fit (a URL, a long number)."""
    out, cur = [], ""
    for ch in word:
        if cur and cache[cur + ch].right > max_width:
            out.append(cur)
            cur = ""
        cur += ch
    return out + ([cur] if cur else [])


def wrap(text: str, cache: WordCache, max_width: int) -> list[tuple[str, Line]]:
    """Greedy word wrap by the words' real ink: a line never reaches past ``max_width``.

    A space goes between words only where the source had whitespace (CJK characters join directly).
    Returns each line's text and its words with their x positions.
    """
    lines: list[tuple[str, Line]] = []
    text_out, line, pen = "", [], 0.0
    prev_end = None
    for start, end in tokens(text):
        word = text[start:end]
        gap = prev_end is not None and start > prev_end
        prev_end = end
        pieces = _pieces(word, cache, max_width) if cache[word].right > max_width else [word]
        for piece in pieces:
            w = cache[piece]
            x = pen + (cache.space if gap and line else 0.0)
            if line and round(x) + w.right > max_width:
                lines.append((text_out, line))
                text_out, line, x = "", [], 0.0
            text_out += (" " if gap and text_out else "") + piece
            line.append((piece, round(x)))
            pen = x + w.advance
            gap = False  # pieces of one word join without a space
    if line:
        lines.append((text_out, line))
    return lines


def _line_height(font: ImageFont.FreeTypeFont, spacing: float) -> int:
    ascent, descent = font.getmetrics()
    return int(round((ascent + descent) * spacing))


def _draw(lines: list[Line], cache: WordCache, s: RenderSettings) -> bytes:
    img = Image.new("L", (s.width, s.height), 255)
    draw = ImageDraw.Draw(img)
    lh = _line_height(cache.font, s.line_spacing)
    top = (s.height - lh * len(lines)) // 2
    for i, line in enumerate(lines):
        y = top + i * lh
        for word, x in line:
            mask, offset = cache.glyphs(word)
            # What ImageDraw.text does for a string, with the glyphs rendered once per word.
            draw.draw.draw_bitmap((s.margin + x + offset[0], y + offset[1]), mask, 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=s.png_compress_level)
    return buf.getvalue()


def layout_chunk(
    chunk: str, face: fonts.FontFace, s: RenderSettings
) -> list[tuple[list[tuple[str, Line]], int]]:
    """Pages (lines, font size) for one chunk: the largest size from ``font_size`` down to
    ``min_font_size`` at which it fits one frame, else pages at the smallest size."""
    max_width = s.width - 2 * s.margin
    for size in range(s.font_size, s.min_font_size - 1, -1):
        cache = words_for(face, size)
        lines = wrap(chunk, cache, max_width)
        per_page = max(1, (s.height - 2 * s.margin) // _line_height(cache.font, s.line_spacing))
        if len(lines) <= per_page or size == s.min_font_size:
            return [(lines[i : i + per_page], size) for i in range(0, len(lines), per_page)] or [([], size)]
    raise AssertionError("unreachable")


def render_document(
    text: str, settings: RenderSettings = RenderSettings(), words_per_frame: int = 115
) -> Rendered:
    """All frames of a document, in reading order."""
    chunks = chunk_text(text, words_per_frame)
    face = fonts.face_for(text)
    frames, sizes, lines_out = [], [], []
    for chunk in chunks:
        for lines, size in layout_chunk(chunk, face, settings):
            frames.append(_draw([words for _, words in lines], words_for(face, size), settings))
            sizes.append(size)
            lines_out.append([t for t, _ in lines])
    return Rendered(frames, chunks, len(tokens(text)), face.name, sizes, lines_out)
