"""Needle in a Video Haystack (NIAVH, from the VideoLLaMB paper): long-context retrieval in video.

A *needle* (a caption, a picture or a short clip) is put into a *haystack* video for about a second, at
a grid of context lengths (seconds of haystack) and depths (where the needle starts, as a fraction of
the video), with a question only the needle answers. A model that keeps the whole video in view answers
every cell; one that forgets the middle, or the start of long videos, shows it in the accuracy heatmap.

* :func:`make_haystack` builds a haystack of an exact length from the user's videos (concatenated,
  looped, brought to one size and frame rate);
* :func:`insert_needle` writes the haystack with the needle over (text, image) or in place of (clip) the
  frames whose timestamps fall in ``[start, start + seconds)``;
* :func:`generate_grid` does both for every (length, depth) and returns one :class:`NeedleItem` each,
  with the open question and a seeded multiple-choice form;
* :func:`accuracy_grid` and :func:`heatmap` turn graded answers into the paper's heatmap.

Videos are decoded and encoded with PyAV one frame at a time, so a long haystack never sits in memory.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import av
import numpy as np

from vidtune.data.decode import VideoDecodeError, fit_pixels, probe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Frame times are i / fps in floating point; a needle edge that lands exactly on a frame must cover it.
EPS = 1e-6
# Options are lettered A, B, C, ... as in Video-MME and MVBench.
LETTERS = string.ascii_uppercase
BANNER_BG = (255, 255, 255)
BANNER_FG = (0, 0, 0)
# An image needle fills at most this share of the frame's width and height, so the haystack stays visible
# around it: the needle is something *in* the scene, while a clip needle is the cut to another scene.
IMAGE_SHARE = 0.75
# Keep re-encoding loss small: haystack frames outside the needle should come out as they went in.
CRF = "18"

Frame = np.ndarray  # RGB, uint8, (height, width, 3)


@dataclass(frozen=True)
class Needle:
    """What is hidden in the haystack, and the question whose answer it is."""

    kind: Literal["text", "image", "clip"]
    text: str | None = None  # kind "text": a caption drawn as a banner over the frames
    image: str | None = None  # kind "image": a picture pasted over the frames (scaled to fit, centred)
    clip: str | None = None  # kind "clip": a short video whose frames replace the haystack's frames
    answer: str = ""  # the open answer, e.g. "LANTERN" or "a red square"
    distractors: tuple[str, ...] = ()  # wrong options for the multiple-choice form
    question: str = "What is the secret word shown in the video?"
    seconds: float = 1.0  # how long the needle is on screen

    def __post_init__(self) -> None:
        payload = {"text": self.text, "image": self.image, "clip": self.clip}
        if self.kind not in payload:
            raise ValueError(f"unknown needle kind '{self.kind}', choose from {sorted(payload)}")
        if not payload[self.kind]:
            raise ValueError(f"a '{self.kind}' needle needs its `{self.kind}` set")
        if self.seconds <= 0:
            raise ValueError(f"needle seconds must be positive, got {self.seconds}")


@dataclass
class NeedleItem:
    """One generated video of the grid, with its question in both forms."""

    id: str  # e.g. "niavh-L30-D50"
    video: str
    length_s: float  # context length (seconds of haystack)
    depth: float  # 0.0 .. 1.0: where the needle starts, as a fraction of the video
    needle_start: float  # seconds
    needle_end: float  # seconds
    question: str
    answer: str
    options: list[str]
    answer_letter: str


def needle_times(length_s: float, depth: float, seconds: float) -> tuple[float, float]:
    """(start, end) of the needle in seconds: depth 0 starts at 0, depth 1 ends with the video.

    A needle longer than the video covers all of it.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if length_s <= 0:
        raise ValueError(f"length must be positive, got {length_s}")
    seconds = min(seconds, length_s)
    start = depth * (length_s - seconds)
    return start, start + seconds


def depths_grid(steps: int) -> list[float]:
    """``steps`` evenly spaced depths from 0 to 1 (one step: the middle)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps == 1:
        return [0.5]
    # Rounded so ids and table keys read 0.3, not 0.30000000000000004.
    return [round(i / (steps - 1), 6) for i in range(steps)]


def covers(index: int, fps: float, start: float, end: float) -> bool:
    """Whether frame ``index`` (shown at ``index / fps`` s) is inside the needle's ``[start, end)``."""
    t = index / fps
    return start - EPS <= t < end - EPS


# --- decoding and encoding -------------------------------------------------------------------------


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _timeline(paths: list[str]) -> Iterator[tuple[float, float, Any]]:
    """The videos' frames played one after another, looping for ever: (start s, end s, av frame)."""
    offset = 0.0
    while True:
        played = 0
        for path in paths:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate)
                n = 0
                for frame in container.decode(stream):
                    yield offset + n / fps, offset + (n + 1) / fps, frame
                    n += 1
            offset += n / fps
            played += n
        if not played:
            # Looping videos with no frames would never yield one.
            raise VideoDecodeError("no video frames in any haystack video")


def _resampled(paths: list[str], fps: float, size: tuple[int, int]) -> Iterator[Frame]:
    """Frames of the looping timeline at ``fps``: each the source frame on screen at that moment."""
    w, h = size
    timeline = _timeline(paths)
    try:
        t0, t1, frame = next(timeline)
        rgb: Frame | None = None
        j = 0
        while True:
            t = j / fps
            while t1 <= t + EPS:
                t0, t1, frame = next(timeline)
                rgb = None
            if rgb is None:
                # Converted only when used: a lower output rate skips source frames without the cost.
                rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
            yield rgb
            j += 1
    finally:
        timeline.close()


@contextmanager
def _encoder(path: Path, fps: float, width: int, height: int) -> Iterator[Callable[[Frame], None]]:
    """An H.264 writer; yields ``write(rgb)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": CRF}

        def write(rgb: Frame) -> None:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)

        yield write
        for packet in stream.encode():
            container.mux(packet)


def _even(n: int) -> int:
    # yuv420p halves the chroma planes: odd sizes do not encode.
    return max(2, n // 2 * 2)


def make_haystack(
    haystacks: list[str],
    length_s: float,
    out: Path,
    fps: float | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Write a haystack of exactly ``length_s`` seconds (``round(length_s * fps)`` frames) to ``out``.

    The videos play one after another and loop until the length is reached. Every frame is resized to
    the first video's size (under ``max_pixels``) and the whole is re-encoded at one rate: ``fps``, or
    the first video's; a video at another rate is resampled (frames repeated or skipped by timestamp).
    """
    if not haystacks:
        raise ValueError("no haystack videos given")
    metas = [probe(p) for p in haystacks]  # fail on a missing or broken video before writing anything
    first = metas[0]
    fps = float(_rate(fps or first.fps))
    w, h = fit_pixels(first.width, first.height, max_pixels) if max_pixels else (first.width, first.height)
    w, h = _even(w), _even(h)
    frames = round(length_s * fps)
    if frames < 1:
        raise ValueError(f"a {length_s} s haystack at {fps:g} fps has no frames")
    out = Path(out)
    source = _resampled([str(p) for p in haystacks], fps, (w, h))
    try:
        with _encoder(out, fps, w, h) as write:
            for _ in range(frames):
                write(next(source))
    finally:
        source.close()
    return out


# --- drawing the needle -----------------------------------------------------------------------------


def _font(text: str, size: int) -> Any:
    try:
        from vidtune.data import fonts

        return fonts.load(fonts.face_for(text), size)
    except ImportError:
        # The font packages are an install extra; Pillow's own font still draws Latin text.
        from PIL import ImageFont

        return ImageFont.load_default(size=size)


def _wrap(text: str, font: Any, width: float) -> list[str] | None:
    """Greedy word wrap to ``width`` pixels; None when one word alone is wider."""
    lines: list[str] = []
    for word in text.split():
        if font.getlength(word) > width:
            return None
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def text_banner(text: str, width: int, height: int) -> tuple[int, Frame]:
    """The caption as a full-width banner centred vertically: (top row, RGB band).

    The font is as large as lets the wrapped text fit in half the frame's height, so a caption reads on
    a small frame and does not hide a large one. The banner leaves the frame's top rows (where generated
    videos draw their frame index) uncovered unless the caption needs them.
    """
    from PIL import Image, ImageDraw

    pad = max(2, height // 40)
    largest = max(8, min(48, height // 10))
    for size in range(largest, 4, -1):
        font = _font(text, size)
        lines = _wrap(text, font, width - 2 * pad)
        ascent, descent = font.getmetrics()
        band = (len(lines) if lines else 1) * (ascent + descent) + 2 * pad
        if lines is not None and band <= height // 2:
            break
    lines = lines or [text]
    band = min(band, height)
    img = Image.new("RGB", (width, band), BANNER_BG)
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(lines):
        x = (width - font.getlength(line)) / 2
        draw.text((x, pad + k * (ascent + descent)), line, font=font, fill=BANNER_FG)
    return (height - band) // 2, np.asarray(img)


def _image_overlay(path: str, width: int, height: int) -> Callable[[Frame], Frame]:
    from PIL import Image

    with Image.open(path) as src:
        img = src.convert("RGBA")
    scale = min(width * IMAGE_SHARE / img.width, height * IMAGE_SHARE / img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    rgba = np.asarray(img.resize((w, h), Image.LANCZOS)).astype(np.float32)
    rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255.0  # a transparent background shows the haystack
    y0, x0 = (height - h) // 2, (width - w) // 2

    def paste(frame: Frame) -> Frame:
        frame = frame.copy()
        region = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        frame[y0 : y0 + h, x0 : x0 + w] = np.rint(region * (1 - alpha) + rgb * alpha).astype(np.uint8)
        return frame

    return paste


def insert_needle(haystack: Path, needle: Needle, depth: float, out: Path) -> tuple[float, float]:
    """Write ``out``: the haystack with the needle on the frames whose timestamps are in [start, end).

    Text is a white banner with the caption in black across the middle; an image is pasted centred,
    scaled to fit in three quarters of the frame (its transparency kept); a clip's frames, resized to
    the haystack's size and resampled to its rate (looped if shorter than the needle), replace the
    haystack's. Returns (start, end) in seconds.
    """
    meta = probe(str(haystack))
    fps = meta.fps
    start, end = needle_times(meta.num_frames / fps, depth, needle.seconds)
    w, h = meta.width, meta.height
    clip: Iterator[Frame] | None = None
    if needle.kind == "text":
        top, band = text_banner(needle.text or "", w, h)

        def draw(frame: Frame) -> Frame:
            frame = frame.copy()
            frame[top : top + band.shape[0]] = band
            return frame

    elif needle.kind == "image":
        draw = _image_overlay(str(needle.image), w, h)
    else:
        probe(str(needle.clip))  # a broken clip fails here, not halfway through the haystack
        clip = _resampled([str(needle.clip)], fps, (w, h))

        def draw(frame: Frame) -> Frame:
            return next(clip)

    out = Path(out)
    try:
        with av.open(str(haystack)) as container, _encoder(out, fps, w, h) as write:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                rgb = frame.to_ndarray(format="rgb24")
                write(draw(rgb) if covers(i, fps, start, end) else rgb)
    finally:
        if clip is not None:
            clip.close()
    return start, end


# --- the grid -------------------------------------------------------------------------------------


def _options(needle: Needle, key: str) -> tuple[list[str], str]:
    """The answer and distractors in an order seeded by ``key``, and the answer's letter."""
    seen = {needle.answer.strip().casefold()}
    wrong = []
    for d in needle.distractors:
        # A distractor equal to the answer would make two options right.
        if d.strip().casefold() not in seen:
            seen.add(d.strip().casefold())
            wrong.append(d)
    options = [needle.answer, *wrong]
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    # A string seed hashes the same in every process (unlike hash()), so a grid regenerates identically.
    random.Random(key).shuffle(options)
    return options, LETTERS[options.index(needle.answer)]


def generate_grid(
    haystacks: list[str],
    needle: Needle,
    lengths: list[float],
    depths: list[float],
    out_dir: str | Path,
    seed: int = 0,
    max_pixels: int | None = None,
) -> list[NeedleItem]:
    """One needle video per (length, depth), lengths outer; haystacks are built once per length.

    Files: ``out_dir/haystack-L{length}.mp4`` and ``out_dir/niavh-L{length}-D{depth %}.mp4``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[NeedleItem] = []
    for length in lengths:
        hay = make_haystack(haystacks, length, out_dir / f"haystack-L{length:g}.mp4", max_pixels=max_pixels)
        for depth in depths:
            item_id = f"niavh-L{length:g}-D{round(depth * 100)}"
            video = out_dir / f"{item_id}.mp4"
            start, end = insert_needle(hay, needle, depth, video)
            options, letter = _options(needle, f"{seed}/{item_id}")
            items.append(
                NeedleItem(
                    id=item_id,
                    video=str(video),
                    length_s=float(length),
                    depth=float(depth),
                    needle_start=start,
                    needle_end=end,
                    question=needle.question,
                    answer=needle.answer,
                    options=options,
                    answer_letter=letter,
                )
            )
    return items


# --- scoring --------------------------------------------------------------------------------------


def accuracy_grid(results: list[dict]) -> tuple[list[float], list[float], np.ndarray]:
    """(lengths, depths, mean accuracy [length x depth]) from dicts with length_s, depth and right.

    A cell with no result is NaN, so a missing run is not mistaken for a wrong answer.
    """
    # Rounded keys: the same depth computed two ways must land in one cell.
    lengths = sorted({round(float(r["length_s"]), 6) for r in results})
    depths = sorted({round(float(r["depth"]), 6) for r in results})
    total = np.zeros((len(lengths), len(depths)))
    count = np.zeros((len(lengths), len(depths)))
    li = {v: i for i, v in enumerate(lengths)}
    di = {v: i for i, v in enumerate(depths)}
    for r in results:
        i, j = li[round(float(r["length_s"]), 6)], di[round(float(r["depth"]), 6)]
        total[i, j] += bool(r["right"])
        count[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return lengths, depths, matrix


def heatmap(results: list[dict], title: str = "Needle in a Video Haystack") -> Figure:
    """Accuracy per (length, depth): lengths across, depths (%) down, 0..1 as red to green.

    The image's array is the matrix transposed, [depth x length]; each cell has its value written in it
    and an empty cell is grey.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths, depths, matrix = accuracy_grid(results)
    # A bare Figure on an Agg canvas: no pyplot, so no global state and no display is touched.
    fig = Figure(figsize=(max(4.0, 0.8 * len(lengths) + 2.5), max(3.0, 0.45 * len(depths) + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdYlGn"].copy()
    cmap.set_bad("lightgrey")
    grid = matrix.T
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for j in range(grid.shape[0]):
        for i in range(grid.shape[1]):
            v = grid[j, i]
            if not math.isnan(v):
                # Dark text on the pale middle of the colour scale, white on its saturated ends.
                color = "black" if 0.25 < v < 0.75 else "white"
                ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(lengths)), [f"{v:g}s" for v in lengths])
    ax.set_yticks(range(len(depths)), [f"{v * 100:g}%" for v in depths])
    ax.set_xlabel("Context length (seconds)")
    ax.set_ylabel("Needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="Accuracy")
    fig.tight_layout()
    return fig
