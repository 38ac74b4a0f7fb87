"""Video decoding: read only the frames a clip keeps, behind one interface with two backends.

``pyav`` seeks to the keyframe before each sampled frame and decodes forward to it (the default: the
decode benchmark measured it fastest, see README); ``decord`` uses its batch API. Both resize under a
pixel budget and return RGB arrays, and both turn every way a video can be bad (missing, empty,
truncated, undecodable, no frames) into a :class:`VideoDecodeError` with a short reason.
"""

from __future__ import annotations

import io
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from vidtune.config import SamplingConfig
from vidtune.data.sampling import sample_indices, snap_to_keyframes


class VideoDecodeError(Exception):
    """A video that cannot give the frames asked of it; ``reason`` is what the errors table records."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class VideoMeta:
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str = ""

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


@dataclass
class Clip:
    """Sampled frames (RGB, resized) with their indices and times in seconds."""

    frames: list[np.ndarray]
    indices: list[int]
    times: list[float]
    meta: VideoMeta
    requested: list[int] = field(default_factory=list)
    decoded: int | None = None  # frames the decoder produced to get these (None: backend cannot tell)


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most ``max_pixels``, in even numbers."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


Source = str | IO[bytes]
Segment = tuple[float | None, float | None]
Picked = dict[int, tuple[int, np.ndarray]]  # wanted index -> (index actually taken, RGB frame)


class FrameReader(ABC):
    """A decoder backend. ``read`` samples and decodes one video; ``source`` is a local path or a
    seekable binary file object (an s3fs or HTTP file reads only the byte ranges it needs)."""

    name: str

    def __init__(self, threads: int = 1):
        # One decode thread by default: a Ray task holds one CPU, and oversubscribing cores makes every
        # task slower (the benchmark's figures are per core).
        self.threads = threads

    @abstractmethod
    def read(
        self, source: Source, sampling: SamplingConfig, max_pixels: int, segment: Segment | None = None
    ) -> Clip:
        """``segment`` (start, end) in seconds, either may be None: sample within it only (MVBench's
        segment tasks ask about one part of a video)."""

    @staticmethod
    def _choose(sampling: SamplingConfig, meta: VideoMeta, segment: Segment | None = None) -> list[int]:
        if meta.num_frames <= 0:
            raise VideoDecodeError("no video frames")
        if segment is None or segment == (None, None):
            return sample_indices(sampling, meta.num_frames, meta.fps)
        start, end = segment
        lo = max(0, int(round((start or 0) * meta.fps)))
        hi = min(meta.num_frames, int(math.ceil(end * meta.fps))) if end is not None else meta.num_frames
        if hi <= lo:
            raise VideoDecodeError(f"segment {start}-{end}s is outside the video ({meta.duration:.2f}s)")
        return [lo + i for i in sample_indices(sampling, hi - lo, meta.fps)]


class PyAVReader(FrameReader):
    """Seek to the keyframe before each wanted frame, decode forward to it; stay in a GOP when we can."""

    name = "pyav"

    def _open(self, source: Source) -> Any:
        import av

        try:
            container = av.open(source, mode="r")
        except FileNotFoundError:
            raise VideoDecodeError("missing: no such file") from None
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"undecodable: {exc.strerror or exc}") from None
        if not container.streams.video:
            container.close()
            raise VideoDecodeError("no video stream")
        return container

    @staticmethod
    def _meta(container: Any) -> VideoMeta:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames = int(stream.frames or 0)
        if frames <= 0 and fps:
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / 1_000_000
            frames = int(round(seconds * fps))
        cc = stream.codec_context
        return VideoMeta(num_frames=frames, fps=fps, width=cc.width, height=cc.height, codec=cc.name or "")

    def read(
        self, source: Source, sampling: SamplingConfig, max_pixels: int, segment: Segment | None = None
    ) -> Clip:
        import av

        container = self._open(source)
        try:
            meta = self._meta(container)
            wanted = self._choose(sampling, meta, segment)
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self.threads
            size = fit_pixels(meta.width, meta.height, max_pixels)
            try:
                if sampling.snap_keyframes:
                    got, decoded = self._keyframes(container, stream, meta, wanted, size)
                else:
                    got, decoded = self._exact(container, stream, meta, wanted, size)
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(f"undecodable: {exc.strerror or exc}") from None
        finally:
            container.close()
        indices = [got[i][0] for i in wanted]
        return Clip(
            frames=[got[i][1] for i in wanted],
            indices=indices,
            times=[round(i / meta.fps, 4) for i in indices],
            meta=meta,
            requested=wanted,
            decoded=decoded,
        )

    @staticmethod
    def _index(frame: Any, start: float, fps: float) -> int:
        return int(round((float(frame.time) - start) * fps))

    @staticmethod
    def _start(stream: Any) -> float:
        return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0

    def _seek(self, container: Any, stream: Any, index: int, fps: float, start: float) -> None:
        pts = int((start + index / fps) / stream.time_base)
        container.seek(pts, stream=stream, backward=True, any_frame=False)

    @staticmethod
    def _forward(live: bool, pos: int, target: int, last_key: int | None, gop: int | None) -> bool:
        """Decode forward from ``pos`` to ``target`` rather than seek?

        With the GOP known: exactly when the target is inside the current GOP (a seek would decode from
        its keyframe, at or before ``pos``). Unknown: when the step ahead is no longer than what was
        decoded since the last keyframe. If a keyframe does lie between, that wastes at most the step;
        if none does (short clips with long GOPs), it saves decoding the GOP's start again per frame.
        """
        if not live or last_key is None or target <= pos:
            return False
        if gop is not None:
            return target < last_key + gop
        return target - pos <= pos - last_key

    def _exact(self, container, stream, meta, wanted, size) -> tuple[Picked, int]:
        w, h = size
        start = self._start(stream)
        out: Picked = {}
        targets = sorted(set(wanted))
        frames = None  # the live decode iterator
        pos = -1  # index of the last decoded frame
        last_key = None  # the last keyframe decoded
        run_key = None  # the last keyframe of the current decode run (reset by a seek)
        # Smallest spacing of two keyframes decoded one after the other. Keyframes reached by separate
        # seeks are not consecutive, so they say nothing about the GOP and are not used.
        gop: int | None = None
        decoded = 0
        for target in targets:
            if not self._forward(frames is not None, pos, target, last_key, gop):
                self._seek(container, stream, target, meta.fps, start)
                frames = container.decode(stream)
                pos, run_key = -1, None
            found = None
            for frame in frames:
                decoded += 1
                idx = self._index(frame, start, meta.fps)
                if frame.key_frame:
                    if run_key is not None and idx > run_key:
                        gop = min(gop or idx - run_key, idx - run_key)
                    last_key = run_key = idx
                if pos == -1 and idx > target:
                    # The seek landed past the target (a container with a sparse index): start over.
                    container.seek(0, stream=stream, backward=True)
                    frames = container.decode(stream)
                    pos = -2
                    continue
                pos = idx
                if idx >= target:
                    found = frame
                    break
            if found is None:
                raise VideoDecodeError(
                    f"truncated: frame {target} of {meta.num_frames} is missing (video ends at frame {pos})"
                )
            rgb = found.to_ndarray(format="rgb24", width=w, height=h)
            out[target] = (pos, rgb)
        return out, decoded

    def _keyframes(self, container, stream, meta, wanted, size) -> tuple[Picked, int]:
        w, h = size
        start = self._start(stream)
        # The decoder drops every non-key frame: after a seek, the first frame out is the keyframe.
        stream.codec_context.skip_frame = "NONKEY"
        out: Picked = {}
        cache: dict[int, np.ndarray] = {}
        for target in sorted(set(wanted)):
            self._seek(container, stream, target, meta.fps, start)
            frame = next(iter(container.decode(stream)), None)
            if frame is None:
                raise VideoDecodeError(f"truncated: no keyframe at or before frame {target}")
            idx = self._index(frame, start, meta.fps)
            if idx not in cache:
                cache[idx] = frame.to_ndarray(format="rgb24", width=w, height=h)
            out[target] = (idx, cache[idx])
        return out, len(set(wanted))


class DecordReader(FrameReader):
    """decord's ``get_batch``: one call for all sampled frames (it seeks internally)."""

    name = "decord"

    def read(
        self, source: Source, sampling: SamplingConfig, max_pixels: int, segment: Segment | None = None
    ) -> Clip:
        import decord

        if not isinstance(source, str):
            source = io.BytesIO(source.read())
        if isinstance(source, str) and not os.path.exists(source):
            raise VideoDecodeError("missing: no such file")
        try:
            vr = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=self.threads)
        except (decord.DECORDError, RuntimeError) as exc:
            raise VideoDecodeError(f"undecodable: {str(exc).splitlines()[0][:200]}") from None
        first = vr[0].shape if len(vr) else (0, 0)
        meta = VideoMeta(num_frames=len(vr), fps=float(vr.get_avg_fps()), width=first[1], height=first[0])
        wanted = self._choose(sampling, meta, segment)
        indices = snap_to_keyframes(wanted, list(vr.get_key_indices())) if sampling.snap_keyframes else wanted
        try:
            batch = vr.get_batch(indices).asnumpy()
        except (decord.DECORDError, RuntimeError) as exc:
            raise VideoDecodeError(f"truncated: {str(exc).splitlines()[0][:200]}") from None
        w, h = fit_pixels(meta.width, meta.height, max_pixels)
        frames = [_resize(f, w, h) for f in batch]
        return Clip(frames, list(indices), [round(i / meta.fps, 4) for i in indices], meta, wanted)


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def probe(source: Source) -> VideoMeta:
    """A video's frame count, rate and size from its header, without decoding a frame."""
    reader = PyAVReader()
    container = reader._open(source)
    try:
        return reader._meta(container)
    finally:
        container.close()


READERS: dict[str, type[FrameReader]] = {"pyav": PyAVReader, "decord": DecordReader}
DEFAULT_BACKEND = "pyav"  # fastest for exact frames in `vidtune bench decode` (README: Performance)


def make_reader(backend: str = "auto", threads: int = 1) -> FrameReader:
    name = DEFAULT_BACKEND if backend == "auto" else backend
    if name not in READERS:
        raise ValueError(f"unknown decoder backend '{backend}', choose from {sorted(READERS)} or 'auto'")
    return READERS[name](threads=threads)
