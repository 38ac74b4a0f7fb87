"""``vidtune bench serve``: the Serve app's requests/s and latency, batching on and off, and HTTP's cost.

In one run, on one model and one request (a generated video sent as a ``data:`` URL, as a remote client
sends it, with a question and a fixed ``max_tokens``):

- ``direct``: what a user would call without a server: decode the request's video, encode it and
  ``generate`` in this process, one request after another (one thread, like a one-CPU replica);
- ``serve, batching off``: the app with ``max_batch_size: 1`` (one ``generate`` call per request);
- ``serve, batching on``: the app with ``max_batch_size: 32``.

The app is driven over HTTP at concurrency 1, 8 and 32 (an asyncio client keeping that many requests in
flight); each row gives requests/s and p50 / p99 latency. The ratios: batching on over off at the same
concurrency, and at concurrency 1 the HTTP path's latency over the direct call's (its overhead).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from vidtune.bench.decode import _table

TARGET_BATCHING = 3.0  # batching on / off requests/s at concurrency 32
TARGET_OVERHEAD = 0.10  # HTTP latency over the direct call at concurrency 1


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def build_bench_model(work: Path, frames: int, max_pixels: int) -> tuple[Path, Path]:
    """A tiny Qwen2-VL with its serving settings, and a 4 s test video."""
    from vidtune.data.videogen import COLORS, VideoSpec, color_sequence, write_video
    from vidtune.models.family import get_family

    names = list(COLORS)
    corpus = [f"Which colour comes first? {a} {b}" for a in names for b in names] * 5
    model = get_family("qwen2-vl").build_tiny(work / "model", corpus)
    settings = {
        "family": "qwen2-vl",
        "sampling": {"strategy": "uniform", "frames": frames},
        "max_pixels": max_pixels,
    }
    (model / "vidtune.json").write_text(json.dumps(settings))
    video = work / "video.mp4"
    write_video(
        video, VideoSpec(frames=120, fps=30, width=320, height=240, colors=color_sequence(("red", "blue")))
    )
    return model, video


def request_body(video: Path, max_tokens: int) -> dict[str, Any]:
    from vidtune.serving.stage import data_url

    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": data_url(video)}},
                    {"type": "text", "text": "Which colour comes first?"},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def direct_latencies(model: Path, body: dict[str, Any], requests: int) -> list[float]:
    """The same request answered in this process: decode, encode, generate; one thread."""
    import torch

    from vidtune.serving.api import ChatRequest
    from vidtune.serving.engine import Engine, Generation
    from vidtune.serving.media import MediaLimits
    from vidtune.serving.prompt import clip_of

    torch.set_num_threads(1)
    engine = Engine(model, use_gpu=False)
    request = ChatRequest(**body)
    limits = MediaLimits()
    out = []
    for i in range(requests + 2):
        started = time.perf_counter()
        clip = clip_of(request, engine.settings.sampling, engine.settings.max_pixels, limits)
        row = Generation(engine.encode(clip.messages, clip.frames), request.max_tokens)
        engine.run([row])
        if i >= 2:  # the first calls warm up
            out.append(time.perf_counter() - started)
    return out


async def _drive(
    url: str, body: dict[str, Any], concurrency: int, requests: int
) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                r.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


async def _healthz(url: str, n: int = 40) -> float:
    """The p50 round trip of ``GET /healthz``: the Serve HTTP path's fixed cost, with no model work."""
    import httpx

    async with httpx.AsyncClient() as client:
        times = []
        for _ in range(n + 5):
            started = time.perf_counter()
            await client.get(f"{url}/healthz")
            times.append(time.perf_counter() - started)
    return _percentile(times[5:], 0.5)


def http_rows(
    url: str, body: dict[str, Any], label: str, levels: list[int], requests_per_level: dict[int, int]
) -> list[dict[str, Any]]:
    asyncio.run(_drive(url, body, 2, 4))  # warm up the replica and the connection pool
    rows = []
    for c in levels:
        seconds, lat = asyncio.run(_drive(url, body, c, requests_per_level[c]))
        rows.append(
            {
                "path": label,
                "concurrency": c,
                "requests": len(lat),
                "requests_per_s": len(lat) / seconds,
                "p50_s": _percentile(lat, 0.5),
                "p99_s": _percentile(lat, 0.99),
            }
        )
        print(f"  {label} at concurrency {c}: {rows[-1]['requests_per_s']:.2f} requests/s", flush=True)
    return rows


def run_serve_bench(
    frames: int = 8,
    max_pixels: int = 224 * 224,
    max_tokens: int = 64,
    quick: bool = False,
    port: int = 8011,
    json_out: str | None = None,
) -> dict[str, Any]:
    import ray
    from ray import serve

    from vidtune.cluster import local_cpus
    from vidtune.serving.app import AppArgs, resolve, start

    work = Path(tempfile.mkdtemp(prefix="vidtune-bench-serve-"))
    model, video = build_bench_model(work, frames, max_pixels)
    body = request_body(video, max_tokens)
    levels = [1, 8, 32]
    per_level = {1: 8, 8: 32, 32: 64} if quick else {1: 20, 8: 64, 32: 128}
    print(
        f"bench serve: tiny Qwen2-VL, {frames} frames of at most {max_pixels} pixels from a 4 s "
        f"320x240 video sent as a data: URL, max_tokens {max_tokens}, greedy"
    )

    direct = direct_latencies(model, body, per_level[1])
    rows = [
        {
            "path": "direct",
            "concurrency": 1,
            "requests": len(direct),
            "requests_per_s": len(direct) / sum(direct),
            "p50_s": _percentile(direct, 0.5),
            "p99_s": _percentile(direct, 0.99),
        }
    ]
    print(f"  direct: {rows[0]['requests_per_s']:.2f} requests/s", flush=True)

    if not ray.is_initialized():
        ray.init(num_cpus=local_cpus(), include_dashboard=False, log_to_driver=False)
    for label, batch in (("serve, batching off", 1), ("serve, batching on", 32)):
        args = resolve(
            AppArgs(
                model=str(model),
                port=port,
                max_batch_size=batch,
                batch_wait_s=0.01,
                max_ongoing_requests=64,
                max_queued_requests=-1,
                ray_actor_options={"num_cpus": 1},
            )
        )
        url = start(args)
        rows += http_rows(url, body, label, levels, per_level)
        if batch == 1:
            healthz = asyncio.run(_healthz(url))
        else:
            import httpx

            # How full the batches got: small batches mean the model was never behind the requests.
            batches = {int(k): v for k, v in httpx.get(f"{url}/stats").json()["batch_sizes"].items()}
        serve.delete(args.app_name)
    serve.shutdown()

    def row(path: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["path"] == path and r["concurrency"] == c)

    table = []
    for r in rows:
        off = row("serve, batching off", r["concurrency"]) if r["path"] != "direct" else None
        table.append(
            [
                r["path"],
                r["concurrency"],
                f"{r['requests_per_s']:.2f}",
                f"{r['p50_s'] * 1000:.0f}",
                f"{r['p99_s'] * 1000:.0f}",
                f"{r['requests_per_s'] / off['requests_per_s']:.2f}x" if off else "-",
            ]
        )
    print(_table(["path", "concurrency", "requests/s", "p50 ms", "p99 ms", "vs batching off"], table))
    batching = (
        row("serve, batching on", 32)["requests_per_s"] / row("serve, batching off", 32)["requests_per_s"]
    )
    overhead = row("serve, batching off", 1)["p50_s"] / row("direct", 1)["p50_s"] - 1
    overhead_on = row("serve, batching on", 1)["p50_s"] / row("direct", 1)["p50_s"] - 1
    print(
        f"batching at concurrency 32: {batching:.2f}x the unbatched requests/s "
        f"(target >= {TARGET_BATCHING:g}x)\n"
        f"HTTP overhead at concurrency 1: {overhead:+.1%} of the direct call's p50 with batching off, "
        f"{overhead_on:+.1%} with batching on (its {0.01 * 1000:.0f} ms batch wait included; target < "
        f"{TARGET_OVERHEAD:.0%})\n"
        f"the HTTP path's fixed cost (GET /healthz round trip, p50): {healthz * 1000:.1f} ms\n"
        f"batch sizes with batching on (size: batches): {dict(sorted(batches.items()))}, mean "
        f"{sum(k * v for k, v in batches.items()) / max(1, sum(batches.values())):.1f} requests a batch"
    )
    report = {
        "frames": frames,
        "max_pixels": max_pixels,
        "max_tokens": max_tokens,
        "rows": rows,
        "batching_ratio_c32": batching,
        "http_overhead_c1": overhead,
        "http_overhead_c1_batching_on": overhead_on,
        "healthz_p50_s": healthz,
        "batch_sizes": batches,
    }
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report
