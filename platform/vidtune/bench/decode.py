"""``vidtune bench decode``: sampled frames per second per core, vidtune's readers against the alternatives.

What is measured: for ``frames`` frames sampled uniformly (T2Vid's rule, :func:`uniform_indices`) from
generated 30 fps H.264 videos, the wall-clock time to reach those frames and turn them into RGB arrays
resized under ``max_pixels = 448*448``. Every method produces the same arrays of the same size, so the
figures differ only in how each method gets to the frames:

- ``pyav-sequential``: decode every frame in order and keep the sampled ones (LLaMA-Factory's loop);
- ``decord``: decord's ``get_batch`` (vidtune's ``decord`` backend);
- ``pyav-seek-limit``: seek to the keyframe before each sampled frame and decode forward to it, written
  plainly here as the reference: without GOP tricks no exact reader can decode fewer frames;
- ``vidtune-exact``: vidtune's default reader (PyAV, seek and decode forward, staying inside a GOP);
- ``vidtune-keyframes``: the same with ``snap_keyframes``: keyframes only, not the exact frames;
- ``read_videos``: ``ray.data.read_videos(path)`` (one row per decoded frame, full size) filtered to the
  sampled indices, which are then resized; ``read_videos+resize`` passes ``resize=`` so that decord scales
  every frame in the decoder instead (read_videos' best case: far less data through the object store).

Why: a fine-tuning set keeps 16-32 frames of videos that have thousands, so decoding every frame spends
nearly all the time on frames that are thrown away. The benchmark shows how much of that vidtune's reader
recovers, how close it comes to the seek limit, what keyframe snapping buys on top, and whether decode
tasks scale with Ray workers. Long videos with sparse keyframes are where the methods differ most, hence
the 60 s / 300 s durations and the 2 s / 8 s keyframe spacings.

The generated videos carry each frame's index in the picture (:mod:`vidtune.data.videogen`), so every
method's frames are read back and checked: a fast method that returns the wrong frames shows up as
incorrect, never as a win. In-process methods decode with one thread, so their figures are per core.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidtune.config import SamplingConfig
from vidtune.data.decode import _resize, fit_pixels, make_reader
from vidtune.data.sampling import uniform_indices
from vidtune.data.videogen import VideoSpec, frame_index_of, write_video

FPS = 30
MAX_PIXELS = 448 * 448
KEYFRAME_INTERVALS = (60, 240)  # a keyframe every 2 s and every 8 s at 30 fps
REPEATS = 3  # the median of 3 runs for the fast methods
SCALING_VIDEOS = 24  # enough work that one worker runs for seconds, not a start-up blip

# The figures the README promises; each is printed next to its measurement.
TARGET_EXACT_VS_SEQUENTIAL = 15.0
TARGET_EXACT_VS_READ_VIDEOS = 25.0
TARGET_KEYFRAMES_VS_SEQUENTIAL = 40.0
TARGET_EXACT_OVER_LIMIT = 1.25
TARGET_SCALING = 1.8

Frames = list[tuple[int, np.ndarray]]  # (index the method says it returned, RGB array), in sampled order
DecodeFn = Callable[[str, int, int], Frames]


@dataclass(frozen=True)
class BenchVideo:
    path: Path
    spec: VideoSpec

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seconds(self) -> int:
        return round(self.spec.frames / self.spec.fps)

    @property
    def gop(self) -> int:
        return self.spec.keyframe_interval


@dataclass(frozen=True)
class Method:
    name: str
    fn: DecodeFn
    keyframes: bool = False  # returns the keyframe at or before each sampled frame instead of the frame
    repeats: int = REPEATS
    in_process: bool = True  # False: the work runs in Ray workers, this process's CPU time means nothing


# --------------------------------------------------------------------------------------------- methods


def pyav_sequential(path: str, frames: int, max_pixels: int) -> Frames:
    """LLaMA-Factory's way: decode the whole stream in order, keep the frames whose index was sampled."""
    import av

    out: Frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # per-core figures, like every in-process method here
        wanted = set(uniform_indices(int(stream.frames), frames))
        last = max(wanted)
        w, h = fit_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out.append((index, frame.to_ndarray(format="rgb24", width=w, height=h)))
            if index >= last:
                # LLaMA-Factory decodes to the end; stopping at the last sampled frame flatters the
                # baseline a little, so the speedups below are, if anything, understated.
                break
    return out


def pyav_seek_limit(path: str, frames: int, max_pixels: int) -> Frames:
    """The reference seek-and-decode: for every sampled frame, seek to the keyframe before it and decode
    forward to it. No reuse of a GOP between frames, so it is what any exact reader can do without tricks."""
    import av

    out: Frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        tb = float(stream.time_base)
        fps = float(stream.average_rate)
        start = int(stream.start_time or 0)
        w, h = fit_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
        for target in uniform_indices(int(stream.frames), frames):
            container.seek(start + int(round(target / fps / tb)), backward=True, stream=stream)
            for frame in container.decode(stream):
                index = int(round((frame.pts - start) * tb * fps))
                if index >= target:
                    out.append((index, frame.to_ndarray(format="rgb24", width=w, height=h)))
                    break
    return out


def _reader_frames(backend: str, path: str, sampling: SamplingConfig, max_pixels: int) -> Frames:
    clip = make_reader(backend).read(path, sampling, max_pixels)
    return list(zip(clip.indices, clip.frames, strict=True))


def decord_batch(path: str, frames: int, max_pixels: int) -> Frames:
    return _reader_frames("decord", path, SamplingConfig(frames=frames), max_pixels)


def vidtune_exact(path: str, frames: int, max_pixels: int) -> Frames:
    return _reader_frames("pyav", path, SamplingConfig(frames=frames), max_pixels)


def vidtune_keyframes(path: str, frames: int, max_pixels: int) -> Frames:
    return _reader_frames("pyav", path, SamplingConfig(frames=frames, snap_keyframes=True), max_pixels)


def _keep_row(row: dict[str, Any], wanted: frozenset[int]) -> bool:
    return int(row["frame_index"]) in wanted


def ray_read_videos(path: str, frames: int, max_pixels: int, *, resize_in_decoder: bool = False) -> Frames:
    """``ray.data.read_videos`` has no frame selection: it decodes every frame into a row; we filter."""
    import av
    import ray.data

    # The frame count comes from the container, as a user of read_videos would have to get it.
    with av.open(path) as container:
        stream = container.streams.video[0]
        num_frames = int(stream.frames)
        w, h = fit_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
    wanted = frozenset(uniform_indices(num_frames, frames))
    ds = ray.data.read_videos(path, resize=(h, w) if resize_in_decoder else None)
    ds = ds.filter(functools.partial(_keep_row, wanted=wanted))
    rows = sorted(ds.take_all(), key=lambda r: int(r["frame_index"]))
    # The same resize as decord's backend, so the kept frames end up exactly like every other method's.
    return [(int(r["frame_index"]), _resize(np.asarray(r["frame"]), w, h)) for r in rows]


IN_PROCESS_METHODS = (
    Method("pyav-sequential", pyav_sequential, repeats=1),
    Method("decord", decord_batch),
    Method("pyav-seek-limit", pyav_seek_limit),
    Method("vidtune-exact", vidtune_exact),
    Method("vidtune-keyframes", vidtune_keyframes, keyframes=True),
)
READ_VIDEOS = (
    Method("read_videos", ray_read_videos, repeats=1, in_process=False),
    Method(
        "read_videos+resize",
        functools.partial(ray_read_videos, resize_in_decoder=True),
        repeats=1,
        in_process=False,
    ),
)


# ---------------------------------------------------------------------------------------------- videos


def video_set(workdir: str | Path, quick: bool) -> list[BenchVideo]:
    """The benchmark's videos (not yet written): 720p 60 s / 300 s, or 360p 10 s / 20 s for a smoke run."""
    width, height, durations = (640, 360, (10, 20)) if quick else (1280, 720, (60, 300))
    out = []
    for seconds in durations:
        for gop in KEYFRAME_INTERVALS:
            spec = VideoSpec(frames=seconds * FPS, fps=FPS, width=width, height=height, keyframe_interval=gop)
            out.append(BenchVideo(Path(workdir) / f"v{height}p-{seconds}s-g{gop}.mp4", spec))
    return out


def _frame_count(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames)
    except (OSError, IndexError, av.error.FFmpegError):
        return -1


def ensure_videos(videos: Sequence[BenchVideo]) -> None:
    """Write the videos that are not cached yet; a cached file must have the expected frame count."""
    for video in videos:
        if video.path.exists() and _frame_count(video.path) == video.spec.frames:
            print(f"  cached     {video.path}")
            continue
        spec = video.spec
        print(
            f"  generating {video.path} ({spec.width}x{spec.height}, {spec.frames} frames, "
            f"keyframe every {video.gop}) ...",
            end="",
            flush=True,
        )
        started = time.perf_counter()
        # Written under another name first, so an interrupted run never leaves a truncated file that a
        # later run would take for a cached one.
        partial = video.path.with_name(video.path.stem + ".partial.mp4")
        write_video(partial, spec, codec="libx264", preset="ultrafast")
        os.replace(partial, video.path)
        print(f" {time.perf_counter() - started:.1f} s", flush=True)


# ----------------------------------------------------------------------------------------- measurement


def expected_indices(video: BenchVideo, frames: int, keyframes: bool) -> list[int]:
    wanted = uniform_indices(video.spec.frames, frames)
    if keyframes:
        return [i // video.gop * video.gop for i in wanted]
    return wanted


def check_frames(got: Frames, video: BenchVideo, frames: int, keyframes: bool, size: tuple[int, int]) -> str:
    """'' when ``got`` holds exactly the frames the method should return, else what is wrong."""
    expected = expected_indices(video, frames, keyframes)
    if len(got) != len(expected):
        return f"{len(got)} frames returned, expected {len(expected)}"
    w, h = size
    shapes = {rgb.shape for _, rgb in got}
    if shapes != {(h, w, 3)}:
        return f"frame shapes {sorted(shapes)}, expected {(h, w, 3)}"
    # The pictures are the ground truth: a reader's own idea of which frame it returned can be wrong too.
    seen = [frame_index_of(rgb, video.spec.width) for _, rgb in got]
    wrong = [(e, s) for e, s in zip(expected, seen, strict=True) if e != s]
    if wrong:
        return f"{len(wrong)} wrong frames (expected, got): {wrong[:4]}"
    claimed = [i for i, _ in got]
    if claimed != seen:
        return f"reported indices {claimed[:4]}... differ from the frames' own {seen[:4]}..."
    return ""


def measure(method: Method, video: BenchVideo, frames: int, max_pixels: int) -> dict[str, Any]:
    runs: list[float] = []
    cpu: list[float] = []
    got: Frames = []
    for _ in range(method.repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        got = method.fn(str(video.path), frames, max_pixels)
        runs.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
    seconds = statistics.median(runs)
    size = fit_pixels(video.spec.width, video.spec.height, max_pixels)
    problem = check_frames(got, video, frames, method.keyframes, size)
    return {
        "seconds": round(seconds, 4),
        "runs": [round(r, 4) for r in runs],
        "cpu_seconds": round(statistics.median(cpu), 4) if method.in_process else None,
        "frames_per_s": round(len(got) / seconds, 2) if seconds else None,
        "correct": not problem,
        "problem": problem or None,
        "indices": [frame_index_of(rgb, video.spec.width) for _, rgb in got],
        "keyframes_only": method.keyframes,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def bench_video(video: BenchVideo, ms: Sequence[Method], frames: int, max_pixels: int) -> dict[str, Any]:
    print(f"  measuring {video.name}:", end="", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for method in ms:
        print(f" {method.name}", end="", flush=True)
        results[method.name] = measure(method, video, frames, max_pixels)
    print(flush=True)
    w, h = fit_pixels(video.spec.width, video.spec.height, max_pixels)
    return {
        "video": video.name,
        "path": str(video.path),
        "width": video.spec.width,
        "height": video.spec.height,
        "seconds": video.seconds,
        "fps": video.spec.fps,
        "num_frames": video.spec.frames,
        "keyframe_interval": video.gop,
        "frames_sampled": frames,
        "output_size": [w, h],
        "methods": results,
        "exact_over_limit": _ratio(
            results["vidtune-exact"]["seconds"], results["pyav-seek-limit"]["seconds"]
        ),
    }


def add_speedups(r: dict[str, Any]) -> None:
    results = r["methods"]
    seq = results["pyav-sequential"]["seconds"]
    rv = results.get("read_videos", {}).get("seconds")
    for m in results.values():
        m["speedup_vs_sequential"] = _ratio(seq, m["seconds"])
        m["speedup_vs_read_videos"] = _ratio(rv, m["seconds"])


# ------------------------------------------------------------------------------------------------ Ray


def ensure_bench_ray() -> None:
    import ray
    import ray.data

    from vidtune.cluster import ensure_ray
    from vidtune.config import RayConfig

    ensure_ray(RayConfig())
    ctx = ray.data.DataContext.get_current()
    # The tables are the output; progress bars would interleave with them.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def warm_up_read_videos(workdir: Path, frames: int) -> None:
    """One read_videos run on a one-second video, so that Ray Data's first execution (worker start,
    imports) is not counted against read_videos."""
    video = BenchVideo(workdir / "warmup-1s.mp4", VideoSpec(frames=FPS, fps=FPS, keyframe_interval=FPS))
    if not video.path.exists():
        write_video(video.path, video.spec)
    ray_read_videos(str(video.path), frames, MAX_PIXELS)


def _decode_task(path: str, frames: int, max_pixels: int) -> int:
    return len(vidtune_exact(path, frames, max_pixels))


def _run_tasks(paths: Sequence[str], workers: int, frames: int, max_pixels: int) -> int:
    """At most ``workers`` one-CPU Ray tasks in flight: the decode pool of ``workers`` cores."""
    import ray

    task = ray.remote(num_cpus=1)(_decode_task)
    pending: list[Any] = []
    decoded = 0
    for path in paths:
        if len(pending) >= workers:
            done, pending = ray.wait(pending, num_returns=1)
            decoded += sum(ray.get(done))
        pending.append(task.remote(path, frames, max_pixels))
    return decoded + sum(ray.get(pending))


def _run_processes(paths: Sequence[str], workers: int, frames: int, max_pixels: int) -> int:
    """Plain OS processes, no Ray: what the machine itself allows from a second worker."""
    from multiprocessing import get_context

    with get_context("spawn").Pool(workers) as pool:
        return int(sum(pool.starmap(_decode_task, [(p, frames, max_pixels) for p in paths], chunksize=1)))


def _run_prepare(paths: Sequence[str], workers: int, frames: int, max_pixels: int) -> int:
    """The real ``vidtune prepare`` stage (Ray Data decode actors, JPEG, shard writes) with
    ``concurrency`` decoders; decoder start-up is part of what a user waits for, so it is counted."""
    import json
    import tempfile

    from vidtune.config import validate_job
    from vidtune.data.pipelines import prepare_dataset
    from vidtune.storage import Storage

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.jsonl"
        turns = [{"from": "human", "value": "<video>q"}, {"from": "gpt", "value": "a"}]
        manifest.write_text(
            "".join(
                json.dumps({"id": str(i), "video": p, "conversations": turns}) + "\n"
                for i, p in enumerate(paths)
            )
        )
        job = validate_job(
            {
                "name": "bench",
                "storage": {"root": str(Path(tmp) / "data")},
                "prepare": {
                    "sampling": {"frames": frames},
                    "max_pixels": max_pixels,
                    "concurrency": workers,
                    "contact_sheet_clips": 0,
                    "datasets": [{"name": "d", "manifest": str(manifest)}],
                },
            }
        )
        result = prepare_dataset(job.prepare.datasets[0], job.prepare, Storage(job.storage))
        return result.info.frames


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux); None where /proc/stat is missing."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def bench_scaling(
    video: BenchVideo, frames: int, max_pixels: int, count: int = SCALING_VIDEOS
) -> dict[str, Any]:
    """Videos/s with 1 and 2 workers: plain processes (the machine's limit), plain Ray tasks, and the
    real ``vidtune prepare`` stage on Ray Data."""
    ensure_bench_ray()
    paths = [str(video.path)] * count  # one file: the page cache serves it, so only decoding is measured
    out: dict[str, Any] = {"video": video.name, "videos": count, "frames_per_video": frames, "modes": {}}
    modes = (("processes", _run_processes), ("ray-tasks", _run_tasks), ("vidtune-prepare", _run_prepare))
    for mode, run in modes:
        # Warm-up: start and import in two workers, so worker start-up is not counted as decoding.
        run(paths[:2], 2, frames, max_pixels)
        per: dict[str, Any] = {}
        for workers in (1, 2):
            busy0 = _busy_cpu_seconds()
            started = time.perf_counter()
            decoded = run(paths, workers, frames, max_pixels)
            seconds = time.perf_counter() - started
            busy1 = _busy_cpu_seconds()
            per[str(workers)] = {
                "seconds": round(seconds, 3),
                # Whole-machine CPU use: shows how much of the cores Ray's own processes (driver, raylet,
                # Ray Data's executor) take from the decode workers on a small machine.
                "cores_busy": None if busy0 is None or busy1 is None else round((busy1 - busy0) / seconds, 2),
                "videos_per_s": round(count / seconds, 3),
                "frames_per_s": round(decoded / seconds, 2),
                "complete": decoded == count * min(frames, video.spec.frames),
            }
        per["speedup"] = _ratio(per["1"]["seconds"], per["2"]["seconds"])
        out["modes"][mode] = per
    return out


# ------------------------------------------------------------------------------------------- reporting


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        # Names left, numbers right: the columns then read like a spreadsheet.
        lines.append(
            "  ".join(
                c.ljust(wd) if i == 0 else c.rjust(wd)
                for i, (c, wd) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _x(v: float | None) -> str | None:
    return None if v is None else f"{v:.1f}x"


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "FAIL"


def print_video(r: dict[str, Any]) -> None:
    w, h = r["output_size"]
    print(
        f"\n{r['video']}: {r['width']}x{r['height']}, {r['seconds']} s, {r['num_frames']} frames, "
        f"keyframe every {r['keyframe_interval']} ({r['keyframe_interval'] / r['fps']:g} s); "
        f"{r['frames_sampled']} frames sampled -> {w}x{h} RGB"
    )
    rows = []
    for name, m in r["methods"].items():
        rows.append(
            [
                name,
                f"{m['seconds']:.3f}",
                None if m["cpu_seconds"] is None else f"{m['cpu_seconds']:.3f}",
                f"{m['frames_per_s']:.1f}",
                _x(m["speedup_vs_sequential"]),
                _x(m["speedup_vs_read_videos"]),
                "yes" if m["correct"] else "NO",
            ]
        )
    headers = ["method", "seconds", "cpu s", "frames/s", "vs sequential", "vs read_videos", "correct"]
    print(_table(headers, rows))
    for name, m in r["methods"].items():
        if not m["correct"]:
            print(f"  ! {name}: {m['problem']}")
    ratio = r["exact_over_limit"]
    print(
        f"vidtune-exact / pyav-seek-limit: {ratio:.2f}x "
        f"(target <= {TARGET_EXACT_OVER_LIMIT}: {_verdict(ratio <= TARGET_EXACT_OVER_LIMIT)})"
    )


def evaluate_targets(videos: Sequence[dict[str, Any]], scaling: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value; a target whose methods returned wrong frames fails."""
    g60 = sorted((v for v in videos if v["keyframe_interval"] == 60), key=lambda v: v["seconds"])
    short, long = g60[0], g60[-1]

    def speedup(v: dict[str, Any], method: str, base: str) -> tuple[float | None, bool]:
        m, b = v["methods"][method], v["methods"].get(base)
        if b is None:
            return None, True
        return _ratio(b["seconds"], m["seconds"]), m["correct"] and b["correct"]

    out = []

    def add(name: str, value: float | None, correct: bool, target: float, higher: bool) -> None:
        ok = None if value is None else correct and (value >= target if higher else value <= target)
        goal = f"{'>=' if higher else '<='} {target}"
        out.append({"target": name, "value": value, "goal": goal, "pass": ok})

    value, ok = speedup(long, "vidtune-exact", "pyav-sequential")
    add(f"vidtune-exact vs pyav-sequential ({long['video']})", value, ok, TARGET_EXACT_VS_SEQUENTIAL, True)
    for base in (m.name for m in READ_VIDEOS):
        value, ok = speedup(short, "vidtune-exact", base)
        add(f"vidtune-exact vs {base} ({short['video']})", value, ok, TARGET_EXACT_VS_READ_VIDEOS, True)
    value, ok = speedup(long, "vidtune-keyframes", "pyav-sequential")
    add(
        f"vidtune-keyframes vs pyav-sequential ({long['video']})",
        value,
        ok,
        TARGET_KEYFRAMES_VS_SEQUENTIAL,
        True,
    )
    for v in videos:
        ok = v["methods"]["vidtune-exact"]["correct"] and v["methods"]["pyav-seek-limit"]["correct"]
        add(
            f"vidtune-exact / pyav-seek-limit ({v['video']})",
            v["exact_over_limit"],
            ok,
            TARGET_EXACT_OVER_LIMIT,
            False,
        )
    for mode, per in scaling["modes"].items():
        add(
            f"1 -> 2 workers, {mode} ({scaling['video']})",
            per["speedup"],
            per["1"]["complete"] and per["2"]["complete"],
            TARGET_SCALING,
            True,
        )
    return out


def print_scaling(s: dict[str, Any]) -> None:
    print(
        f"\nScaling: vidtune-exact on {s['videos']} x {s['video']} ({s['frames_per_video']} frames each), "
        "one-CPU Ray workers, after a warm-up"
    )
    rows = []
    for mode, per in s["modes"].items():
        for workers in ("1", "2"):
            r = per[workers]
            rows.append(
                [
                    f"{mode}, {workers} worker{'s' if workers != '1' else ''}",
                    f"{r['seconds']:.2f}",
                    f"{r['videos_per_s']:.2f}",
                    f"{r['frames_per_s']:.1f}",
                    _x(per["speedup"]) if workers == "2" else "1.0x",
                    None if r["cores_busy"] is None else f"{r['cores_busy']:.2f}",
                ]
            )
    print(_table(["mode", "seconds", "videos/s", "frames/s", "speedup", "machine cores busy"], rows))


def print_summary(results: dict[str, Any]) -> None:
    names = (
        "pyav-sequential",
        "read_videos",
        "read_videos+resize",
        "decord",
        "pyav-seek-limit",
        "vidtune-exact",
        "vidtune-keyframes",
    )
    rows = []
    for v in results["videos"]:
        ms = v["methods"]
        rows.append(
            [v["video"]]
            + [f"{ms[n]['seconds']:.3f}" if n in ms else None for n in names]
            + [
                _x(ms["vidtune-exact"]["speedup_vs_sequential"]),
                _x(ms["vidtune-keyframes"]["speedup_vs_sequential"]),
            ]
        )
    m = results["machine"]
    print("\n" + "=" * 100)
    print(
        f"SUMMARY  {results['settings']['frames']} sampled frames per video, seconds per video, "
        f"one decoder thread; {m['cpus']} CPUs, {m['platform']}"
    )
    print(
        _table(
            [
                "video",
                "sequential",
                "read_videos",
                "+resize",
                "decord",
                "seek-limit",
                "exact",
                "keyframes",
                "exact/seq",
                "keyf/seq",
            ],
            rows,
        )
    )
    print()
    targets = [
        [t["target"], None if t["value"] is None else f"{t['value']:.2f}", t["goal"], _verdict(t["pass"])]
        for t in results["targets"]
    ]
    print(_table(["target", "measured", "goal", "result"], targets))
    bad = [
        f"{v['video']}:{n}" for v in results["videos"] for n, r in v["methods"].items() if not r["correct"]
    ]
    print(
        f"\nframes checked against the index drawn in each picture: "
        f"{'all correct' if not bad else 'INCORRECT ' + ', '.join(bad)}"
    )
    if results["settings"]["quick"]:
        print("(--quick: short low-resolution videos, a smoke run; the targets are for the full run)")


def machine_info() -> dict[str, Any]:
    import av
    import decord
    import ray

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "decord": decord.__version__,
        "ray": ray.__version__,
        "numpy": np.__version__,
    }


def run_decode_bench(
    workdir: str,
    *,
    frames: int = 16,
    quick: bool = False,
    read_videos: bool = True,
    json_out: str | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the videos, time every method on each, check their frames, measure Ray scaling,
    print the tables and return everything as a dict (also written to ``json_out`` when given)."""
    m = machine_info()
    print(f"machine: {m['cpus']} CPUs, {m['platform']} ({m['processor']}), Python {m['python']}")
    print(
        f"versions: av {m['av']} (FFmpeg {m['ffmpeg']}), decord {m['decord']}, ray {m['ray']}, "
        f"numpy {m['numpy']}"
    )
    print(
        f"settings: {frames} frames sampled uniformly per video, max_pixels {MAX_PIXELS} (448x448), "
        f"median of {REPEATS} runs (1 for pyav-sequential and read_videos)" + (", --quick" if quick else "")
    )

    videos = video_set(workdir, quick)
    print(f"\nvideos in {workdir}:")
    ensure_videos(videos)

    shortest = min(v.seconds for v in videos)
    print()
    # The in-process methods run before Ray starts: on a small machine Ray's own processes (workers
    # starting up, the raylet) would otherwise take CPU from the decoder being timed.
    per_video = [bench_video(video, IN_PROCESS_METHODS, frames, MAX_PIXELS) for video in videos]
    if read_videos:
        ensure_bench_ray()
        warm_up_read_videos(Path(workdir), frames)
        # read_videos decodes every frame (about 20 s a minute of 720p): on the short videos only.
        for video, r in zip(videos, per_video, strict=True):
            if video.seconds == shortest:
                print(f"  measuring {video.name}:", end="", flush=True)
                for method in READ_VIDEOS:
                    print(f" {method.name}", end="", flush=True)
                    r["methods"][method.name] = measure(method, video, frames, MAX_PIXELS)
                print(flush=True)
    for r in per_video:
        add_speedups(r)
        print_video(r)

    scaling_video = next(v for v in videos if v.seconds == shortest and v.gop == KEYFRAME_INTERVALS[0])
    print(f"\n  measuring scaling on {scaling_video.name} ...", flush=True)
    scaling = bench_scaling(scaling_video, frames, MAX_PIXELS)
    print_scaling(scaling)

    results: dict[str, Any] = {
        "machine": m,
        "settings": {
            "frames": frames,
            "max_pixels": MAX_PIXELS,
            "quick": quick,
            "repeats": REPEATS,
            "read_videos": read_videos,
            "workdir": str(workdir),
        },
        "videos": per_video,
        "scaling": scaling,
    }
    results["targets"] = evaluate_targets(per_video, scaling)
    results["all_correct"] = all(r["correct"] for v in per_video for r in v["methods"].values())
    print_summary(results)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {json_out}")
    return results
