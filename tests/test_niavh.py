"""Needle in a Video Haystack: needles land on exactly the right frames, and the heatmap shows the grid.

Haystacks are generated videos whose frames carry their index as a code and a colour per segment, so
every frame read back from a needle video can be compared with the frame it must be (or must cover).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidtune.data.decode import probe
from vidtune.data.videogen import VideoSpec, color_sequence, frame_index_of, render_frame, write_video
from vidtune.eval.niavh import (
    IMAGE_SHARE,
    Needle,
    accuracy_grid,
    depths_grid,
    generate_grid,
    heatmap,
    insert_needle,
    make_haystack,
    needle_times,
)

FPS = 10
W, H = 96, 72
MAGENTA = (255, 0, 255)  # in no haystack, so a needle pixel cannot pass for a haystack one
SOURCE = VideoSpec(frames=30, fps=FPS, width=W, height=H, colors=color_sequence(["red", "green", "blue"]))
NOISE = 8  # mean abs difference two H.264 encodes of the same flat frame stay under


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    return str(write_video(tmp_path_factory.mktemp("hay") / "source.mp4", SOURCE))


def frames_of(path: str | Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def in_needle(i: int, start: float, end: float) -> bool:
    t = i / FPS
    return start - 1e-6 <= t < end - 1e-6


def test_needle_times_span_the_video_from_start_to_end():
    assert needle_times(10, 0.0, 1.0) == (0.0, 1.0)
    assert needle_times(10, 0.5, 1.0) == (4.5, 5.5)
    assert needle_times(10, 1.0, 1.0) == (9.0, 10.0)
    assert needle_times(0.5, 0.5, 1.0) == (0.0, 0.5)  # a needle longer than the video covers all of it
    with pytest.raises(ValueError):
        needle_times(10, 1.5, 1.0)
    assert depths_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_needle_needs_its_payload():
    with pytest.raises(ValueError, match="text"):
        Needle("text", image="x.png")


def test_haystack_concatenates_loops_and_resamples(tmp_path, source):
    short = VideoSpec(frames=20, fps=20, width=128, height=96, colors=(MAGENTA,))
    other = str(write_video(tmp_path / "other.mp4", short))  # 1 s at 20 fps, larger
    hay = make_haystack([source, other], 5.0, tmp_path / "hay.mp4")

    meta = probe(str(hay))
    assert (meta.num_frames, meta.fps, meta.width, meta.height) == (50, FPS, W, H)
    frames = frames_of(hay)
    # 3 s of the first video, 1 s of the second at 10 fps (every other frame), then the first again.
    expected = list(range(30)) + list(range(0, 20, 2)) + list(range(10))
    assert [frame_index_of(f, W) for f in frames] == expected
    assert all(diff(frames[i][H // 2 :], render_frame(SOURCE, i)[H // 2 :]) < NOISE for i in range(30))
    assert np.abs(frames[35][H // 2, W // 2].astype(int) - MAGENTA).max() < 20

    small = make_haystack([source], 1.0, tmp_path / "small.mp4", max_pixels=48 * 36)
    assert (probe(str(small)).width, probe(str(small)).height) == (48, 36)


@pytest.fixture
def picture(tmp_path) -> str:
    path = tmp_path / "needle.png"
    Image.new("RGB", (60, 30), MAGENTA).save(path)  # 2:1, so scaling to fit keeps a margin above/below
    return str(path)


def check_text(frame: np.ndarray) -> None:
    band = frame[H // 2 - 4 : H // 2 + 4]
    white = (band.min(axis=2) > 200).mean()
    dark = (band.max(axis=2) < 90).mean()
    assert white > 0.5, "no white banner across the middle"
    assert dark > 0.02, "no caption drawn on the banner"


def check_image(frame: np.ndarray) -> None:
    centre = frame[H // 2 - 4 : H // 2 + 4, W // 2 - 4 : W // 2 + 4].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - MAGENTA).max() < 20, "the picture is not pasted at the centre"
    magenta = np.abs(frame.astype(int) - MAGENTA).max(axis=2) < 40
    cols, rows = np.flatnonzero(magenta[H // 2]), np.flatnonzero(magenta[:, W // 2])
    # Scaled to fit the frame's share with its 2:1 shape kept, and centred both ways.
    assert abs(len(cols) - IMAGE_SHARE * W) <= 3 and abs(len(rows) - IMAGE_SHARE * W / 2) <= 3
    assert abs(cols[0] - (W - 1 - cols[-1])) <= 2 and abs(rows[0] - (H - 1 - rows[-1])) <= 2


@pytest.mark.parametrize("kind", ["text", "image"])
def test_grid_puts_the_needle_on_exactly_its_frames(tmp_path, source, picture, kind):
    if kind == "text":
        needle = Needle("text", text="The secret word is LANTERN", answer="LANTERN", distractors=("HARBOR",))
        check = check_text
    else:
        needle = Needle("image", image=picture, answer="a magenta rectangle", question="What was shown?")
        check = check_image
    items = generate_grid([source], needle, [2.0, 4.0], [0.0, 0.5, 1.0], tmp_path / "grid")

    assert [(it.length_s, it.depth) for it in items] == [(L, d) for L in (2.0, 4.0) for d in (0.0, 0.5, 1.0)]
    assert [it.id for it in items][:2] == ["niavh-L2-D0", "niavh-L2-D50"]
    for it in items:
        assert probe(it.video).num_frames == round(it.length_s * FPS)
        assert math.isclose(probe(it.video).duration, it.length_s)
        frames = frames_of(it.video)
        assert len(frames) == round(it.length_s * FPS)
        inside = [i for i in range(len(frames)) if in_needle(i, it.needle_start, it.needle_end)]
        assert len(inside) == FPS  # one second of needle
        assert inside == list(range(inside[0], inside[0] + FPS))
        assert inside[0] == round(it.depth * (len(frames) - FPS))  # depth 0 at the start, 1 at the end
        for i, frame in enumerate(frames):
            truth = render_frame(SOURCE, i % SOURCE.frames)  # the haystack loops the 3 s source
            # The needle leaves the index code visible: each frame is still the haystack frame it replaced.
            assert frame_index_of(frame, W) == i % SOURCE.frames, (it.id, i)
            if i in inside:
                assert diff(frame, truth) > 20, (it.id, i)
                check(frame)
                # Only the middle is covered: the bottom rows are still the haystack.
                assert diff(frame[-6:], truth[-6:]) < NOISE, (it.id, i)
            else:
                assert diff(frame, truth) < NOISE, (it.id, i)


def test_clip_needle_replaces_exactly_its_frames_and_plays(tmp_path, source):
    spec = VideoSpec(frames=3, fps=5, width=64, height=48, colors=(MAGENTA,))  # 0.6 s: loops in a 1 s needle
    clip = str(write_video(tmp_path / "clip.mp4", spec))
    hay = make_haystack([source], 3.0, tmp_path / "hay.mp4")
    needle = Needle("clip", clip=clip, answer="magenta", question="What colour flashed on screen?")

    start, end = insert_needle(hay, needle, 0.5, tmp_path / "out.mp4")

    assert (start, end) == (1.0, 2.0)
    frames = frames_of(tmp_path / "out.mp4")
    assert len(frames) == 30
    for i, frame in enumerate(frames):
        if 10 <= i < 20:
            k = i - 10
            assert np.abs(frame[H // 2, W // 2].astype(int) - MAGENTA).max() < 20, i
            # The clip plays at its own rate (each frame twice at 10 fps) and starts over after 0.6 s.
            assert frame_index_of(frame, spec.width) == (k // 2) % 3, i
        else:
            assert diff(frame, render_frame(SOURCE, i)) < NOISE, i


def test_multiple_choice_options_are_seeded(tmp_path, source):
    needle = Needle(
        "text",
        text="The secret word is LANTERN",
        answer="LANTERN",
        distractors=("HARBOR", "lantern", "MEADOW", "HARBOR"),  # a duplicate and the answer in disguise
        seconds=0.5,
    )
    depths = [0.0, 0.25, 0.5, 0.75, 1.0]
    first = generate_grid([source], needle, [1.0], depths, tmp_path / "a", seed=3)
    again = generate_grid([source], needle, [1.0], depths, tmp_path / "b", seed=3)
    other = generate_grid([source], needle, [1.0], depths, tmp_path / "c", seed=4)

    for it in first:
        assert sorted(it.options) == ["HARBOR", "LANTERN", "MEADOW"]
        assert it.options["ABC".index(it.answer_letter)] == "LANTERN"
    assert [it.options for it in first] == [it.options for it in again]
    assert [it.options for it in first] != [it.options for it in other]
    assert len({tuple(it.options) for it in first}) > 1  # seeded per item, not one order for the grid


RESULTS = [
    {"length_s": 10, "depth": 0.0, "right": True},
    {"length_s": 10, "depth": 0.0, "right": False},
    {"length_s": 10, "depth": 1.0, "right": True},
    {"length_s": 30, "depth": 0.0, "right": False},
    {"length_s": 30, "depth": 0.5, "right": True},
    {"length_s": 30, "depth": 1.0, "right": True},
    {"length_s": 30, "depth": 1.0, "right": True},
    {"length_s": 30, "depth": 1.0, "right": False},
]


def test_accuracy_grid_averages_per_cell():
    lengths, depths, matrix = accuracy_grid(RESULTS)
    assert lengths == [10, 30]
    assert depths == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(matrix, [[0.5, np.nan, 1.0], [0.0, 1.0, 2 / 3]])


def test_heatmap_draws_the_grid(tmp_path):
    fig = heatmap(RESULTS, title="NIAVH test")
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 1
    assert images[0].get_array().shape == (3, 2)  # depths down, lengths across
    ax = images[0].axes
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.50", "0.67", "1.00", "1.00"]  # none for NaN
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10s", "30s"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0%", "50%", "100%"]
    assert ax.get_title() == "NIAVH test"

    path = tmp_path / "heatmap.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100
