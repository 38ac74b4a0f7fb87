"""Sampling and decoding: the right frames come back, from either backend, and bad videos say why."""

import numpy as np
import pytest

from vidtune.config import SamplingConfig
from vidtune.data.decode import VideoDecodeError, fit_pixels, make_reader
from vidtune.data.sampling import fps_indices, snap_to_keyframes, uniform_indices
from vidtune.data.videogen import COLORS, VideoSpec, frame_index_of, write_video


def test_uniform_is_the_middle_of_each_segment():
    # 240 frames, 24 segments of 10: the middles are 5, 15, 25, ...
    assert uniform_indices(240, 24) == list(range(5, 240, 10))
    assert uniform_indices(90, 8) == [5, 16, 28, 39, 50, 61, 73, 84]
    assert uniform_indices(5, 8) == [0, 1, 2, 3, 4]
    assert uniform_indices(0, 8) == []


def test_fps_sampling_and_cap():
    assert fps_indices(90, 30.0, 2.0, 64) == [0, 15, 30, 45, 60, 75]
    capped = fps_indices(3000, 30.0, 1.0, 10)
    assert len(capped) == 10 and capped == sorted(capped)
    assert snap_to_keyframes([5, 16, 31, 59], [0, 15, 30, 45]) == [0, 15, 30, 45]


def test_fit_pixels_keeps_aspect_under_budget():
    w, h = fit_pixels(1280, 720, 448 * 448)
    assert w * h <= 448 * 448 and abs(w / h - 16 / 9) < 0.02
    assert fit_pixels(160, 120, 448 * 448) == (160, 120)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("strategy", ["uniform", "fps"])
def test_exact_frames_are_the_sampled_ones(video_dir, backend, strategy):
    cfg = SamplingConfig(strategy=strategy, frames=8, fps=4.0, max_frames=32)
    clip = make_reader(backend).read(str(video_dir / "b.mp4"), cfg, 80 * 60)
    expected = uniform_indices(120, 8) if strategy == "uniform" else fps_indices(120, 30.0, 4.0, 32)
    assert clip.indices == expected
    assert [frame_index_of(f, 160) for f in clip.frames] == expected  # read from the pixels
    assert clip.frames[0].shape == (60, 80, 3)
    assert clip.times == pytest.approx([i / 30 for i in expected], abs=1e-3)
    # b.mp4 is green then yellow: the frames come in order
    first, last = clip.frames[0][-10:, :].mean(axis=(0, 1)), clip.frames[-1][-10:, :].mean(axis=(0, 1))
    assert np.abs(first - COLORS["green"]).max() < 30 and np.abs(last - COLORS["yellow"]).max() < 30


@pytest.mark.parametrize(
    ("frames", "gop", "most"),
    [
        (300, 250, 375),  # a short clip with a long GOP: within 1.25x of decoding it once (was 4x)
        (1200, 30, 8 * 30),  # a long video with short GOPs: at most one GOP per sampled frame
    ],
)
def test_exact_reader_decodes_only_what_it_needs(tmp_path, frames, gop, most):
    """Cost grows with the frames kept, not with the video: counted in decoded frames, not seconds."""
    spec = VideoSpec(frames=frames, fps=30, width=64, height=48, keyframe_interval=gop)
    path = write_video(tmp_path / "v.mp4", spec)
    clip = make_reader("pyav").read(str(path), SamplingConfig(frames=8), 10**6)
    assert [frame_index_of(f, 64) for f in clip.frames] == uniform_indices(frames, 8)
    assert clip.decoded <= most


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_keyframe_snapping_returns_keyframes(video_dir, backend):
    clip = make_reader(backend).read(
        str(video_dir / "a.mp4"), SamplingConfig(frames=6, snap_keyframes=True), 10**6
    )
    assert clip.indices == snap_to_keyframes(uniform_indices(90, 6), list(range(0, 90, 15)))
    assert [frame_index_of(f, 160) for f in clip.frames] == clip.indices


def test_pyav_reads_from_a_file_object(video_dir):
    with open(video_dir / "c.mp4", "rb") as f:
        clip = make_reader("pyav").read(f, SamplingConfig(frames=4), 10**6)
    assert [frame_index_of(f, 160) for f in clip.frames] == uniform_indices(60, 4)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing.mp4", "missing"), ("corrupt.mp4", "undecodable"), ("truncated.mp4", "truncated")],
)
def test_bad_videos_raise_with_a_reason(video_dir, backend, name, reason):
    with pytest.raises(VideoDecodeError) as err:
        make_reader(backend).read(str(video_dir / name), SamplingConfig(frames=8), 10**6)
    if backend == "decord" and name == "truncated.mp4":
        reason = "undecodable"  # decord reads the whole packet index on open, so a cut file fails there
    assert err.value.reason.startswith(reason)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_a_segment_is_sampled_within_its_start_and_end(video_dir, backend):
    """MVBench's segment tasks: frames come from [start, end) only (a.mp4 is 90 frames at 30 fps)."""
    reader = make_reader(backend)
    clip = reader.read(str(video_dir / "a.mp4"), SamplingConfig(frames=4), 160 * 120, (1.0, 2.0))
    expected = [30 + i for i in uniform_indices(30, 4)]
    assert clip.indices == expected and [frame_index_of(f, 160) for f in clip.frames] == expected
    tail = reader.read(str(video_dir / "a.mp4"), SamplingConfig(frames=4), 160 * 120, (2.5, None))
    assert min(tail.indices) >= 75 and max(tail.indices) < 90
    with pytest.raises(VideoDecodeError, match="outside the video"):
        reader.read(str(video_dir / "a.mp4"), SamplingConfig(frames=4), 160 * 120, (5.0, 6.0))
