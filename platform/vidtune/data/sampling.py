"""Frame sampling: which frame indices of a video become a clip.

Pure functions of the video's frame count and rate, so that prepare, eval and serve pick identical frames
for identical settings, and tests can state the expected indices exactly.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from vidtune.config import SamplingConfig


def uniform_indices(num_frames: int, n: int) -> list[int]:
    """T2Vid's rule: split the video into ``n`` equal segments and keep the middle frame of each.

    A video with fewer than ``n`` frames gives each of its frames once: repeating frames would tell the
    model about motion that never happened.
    """
    if num_frames <= 0:
        return []
    if num_frames <= n:
        return list(range(num_frames))
    return [min(num_frames - 1, int((i + 0.5) * num_frames / n)) for i in range(n)]


def fps_indices(num_frames: int, native_fps: float, fps: float, max_frames: int) -> list[int]:
    """One frame every ``1/fps`` seconds from the start; spread uniformly over them past ``max_frames``."""
    if num_frames <= 0 or native_fps <= 0:
        return []
    step = native_fps / fps
    picks: list[int] = []
    t = 0.0
    while round(t) < num_frames:
        idx = int(round(t))
        if not picks or idx != picks[-1]:
            picks.append(idx)
        t += step
    if len(picks) > max_frames:
        picks = [picks[i] for i in uniform_indices(len(picks), max_frames)]
    return picks


def snap_to_keyframes(indices: Sequence[int], keyframes: Sequence[int]) -> list[int]:
    """Each index moved to the keyframe at or before it (what a decoder reaches without decoding forward)."""
    if not keyframes:
        return list(indices)
    keys = sorted(keyframes)
    return [keys[max(0, bisect.bisect_right(keys, i) - 1)] for i in indices]


def sample_indices(cfg: SamplingConfig, num_frames: int, native_fps: float) -> list[int]:
    """The frame indices the sampling settings choose (before any keyframe snapping)."""
    if cfg.strategy == "uniform":
        return uniform_indices(num_frames, cfg.frames)
    return fps_indices(num_frames, native_fps, cfg.fps, cfg.max_frames)
