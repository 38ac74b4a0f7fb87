"""Generated videos with known content, for tests, benchmarks and the offline demo.

Every frame carries its own index as a row of black/white blocks (a binary code that survives H.264 and
JPEG) and a fill colour chosen per segment, so a reader can check *which* frames were sampled, not only
that some were, and a model can be taught a question whose answer lives in the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 14  # up to 16383 frames: a 300 s video at 30 fps needs 9000
Color = tuple[int, int, int]

COLORS: dict[str, Color] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}


@dataclass(frozen=True)
class VideoSpec:
    frames: int
    fps: float = 30.0
    width: int = 320
    height: int = 240
    keyframe_interval: int = 30
    colors: tuple[Color, ...] = ((90, 90, 90),)


def _block(width: int) -> int:
    return max(4, width // (INDEX_BITS + 2))


def segment_color(spec: VideoSpec, index: int) -> Color:
    """The fill colour of frame ``index``: the colours in order, each for an equal share of the frames."""
    return spec.colors[min(len(spec.colors) - 1, index * len(spec.colors) // spec.frames)]


def render_frame(spec: VideoSpec, index: int) -> np.ndarray:
    """The RGB picture of frame ``index``: its segment's colour with the index code along the top."""
    img = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
    img[:] = segment_color(spec, index)
    b = _block(spec.width)
    img[: 2 * b, : b * (INDEX_BITS + 2)] = 128  # a grey band so the code reads on any fill colour
    for bit in range(INDEX_BITS):
        on = (index >> (INDEX_BITS - 1 - bit)) & 1
        x = b * (bit + 1)
        img[b // 2 : b // 2 + b, x : x + b] = 255 if on else 0
    return img


def frame_index_of(rgb: np.ndarray, width: int | None = None) -> int:
    """Read the index code back from a (possibly resized, compressed) frame.

    ``width`` is the width the video was generated at; the code scales with the picture, so a resized
    frame reads back the same.
    """
    h, w = rgb.shape[:2]
    scale = w / (width or w)
    b = _block(width or w) * scale
    gray = rgb.astype(np.float32).mean(axis=2)
    value = 0
    for bit in range(INDEX_BITS):
        cy, cx = int(b // 2 + b / 2), int(b * (bit + 1) + b / 2)
        value = (value << 1) | int(gray[cy, cx] > 128)
    return value


def write_video(
    path: str | Path,
    spec: VideoSpec,
    *,
    codec: str = "libx264",
    preset: str = "ultrafast",
    faststart: bool = False,
) -> Path:
    """Encode ``spec`` as an H.264 (or ``codec``) file with a keyframe exactly every ``keyframe_interval``.

    ``faststart`` puts the MP4 index first, as streaming sites do; cutting such a file short leaves a
    video that opens but ends early (a truncated download).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        rate = Fraction(spec.fps).limit_denominator(1001)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = spec.width, spec.height
        stream.pix_fmt = "yuv420p"
        g = str(spec.keyframe_interval)
        if codec == "libx264":
            # Fixed GOPs (no scene-cut keyframes) so tests and benchmarks know where keyframes are.
            stream.options = {"g": g, "keyint_min": g, "sc_threshold": "0", "preset": preset, "crf": "23"}
        else:
            stream.codec_context.gop_size = spec.keyframe_interval
        for i in range(spec.frames):
            frame = av.VideoFrame.from_ndarray(render_frame(spec, i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def color_sequence(names: Sequence[str]) -> tuple[Color, ...]:
    return tuple(COLORS[n] for n in names)
