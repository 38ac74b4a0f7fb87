"""``vidtune bench serve``: the Serve app's requests/s and latency, batching on and off, and HTTP's cost.

In one run, on one model and one request (a generated video sent as a ``data:`` URL, as a remote client
sends it, with a question and a fixed ``max_tokens``):

- ``direct``: what a user would call without a server: decode the request's video, encode it and
  ``generate`` in this process, one request after another (one thread, like a one-CPU replica);
- ``serve, batching off``: the app with ``max_batch_size: 1`` (one ``generate`` call per request);
- ``serve, batching on``: the app with ``max_batch_size: 32``.

The app is driven over HTTP at concurrency 1, 8 and 32 (an asyncio client keeping that many requests in
flight); each row gives requests/s and p50 / p99 latency. The ratios: batching on over off at the same
concurrency, and at concurrency 1 the HTTP path's p50 over the direct call's (its overhead), the two
taken in turn so that both see the same machine.
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


class DirectCall:
    """The same request answered in this process: decode, encode, generate; one thread, like a
    one-CPU replica."""

    def __init__(self, model: Path, body: dict[str, Any]):
        import torch

        from vidtune.serving.api import ChatRequest
        from vidtune.serving.engine import Engine
        from vidtune.serving.media import MediaLimits

        torch.set_num_threads(1)
        self.engine = Engine(model, use_gpu=False)
        self.request = ChatRequest(**body)
        self.limits = MediaLimits()
        for _ in range(2):  # warm up
            self()

    def __call__(self) -> float:
        from vidtune.serving.engine import Generation
        from vidtune.serving.prompt import clip_of

        started = time.perf_counter()
        settings = self.engine.settings
        clip = clip_of(self.request, settings.sampling, settings.max_pixels, self.limits)
        row = Generation(self.engine.encode(clip.messages, clip.frames), self.request.max_tokens)
        self.engine.run([row])
        return time.perf_counter() - started


def in_turn(calls: dict[str, Any], n: int) -> dict[str, list[float]]:
    """Latencies of several ways to answer the same request, taken in turn (one of each, ``n`` times),
    so that all see the same machine: on a shared 2-core box timings drift by 10-20% over a minute,
    more than the differences being measured."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            out[name].append(call())
    return out


def http_call(client: Any, url: str, body: dict[str, Any]) -> Any:
    def call() -> float:
        started = time.perf_counter()
        client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
        return time.perf_counter() - started

    return call


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

    direct = DirectCall(model, body)
    rows: list[dict[str, Any]] = []

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=local_cpus(), include_dashboard=False, log_to_driver=False)
    # Both apps up at once (one model replica each), so that concurrency 1 can be measured in turn.
    apps = {"serve, batching off": 1, "serve, batching on": 32}
    urls = {}
    for label, batch in apps.items():
        args = resolve(
            AppArgs(
                model=str(model),
                port=port,
                app_name=f"bench-{batch}",
                route_prefix=f"/b{batch}",
                max_batch_size=batch,
                batch_wait_s=0.01,
                max_ongoing_requests=64,
                max_queued_requests=-1,
                ray_actor_options={"num_cpus": 1},
                ingress_actor_options={"num_cpus": 0.5},
            )
        )
        urls[label] = start(args)
        asyncio.run(_drive(urls[label], body, 2, 4))  # warm up

    import httpx

    with httpx.Client(timeout=600) as client:
        calls = {"direct": direct, **{label: http_call(client, url, body) for label, url in urls.items()}}
        c1 = in_turn(calls, per_level[1])
    for label, lat in c1.items():
        rows.append(
            {
                "path": label,
                "concurrency": 1,
                "requests": len(lat),
                "requests_per_s": len(lat) / sum(lat),
                "p50_s": _percentile(lat, 0.5),
                "p99_s": _percentile(lat, 0.99),
            }
        )
    print("  concurrency 1, in turn: " + ", ".join(f"{r['path']} {r['p50_s'] * 1000:.0f} ms" for r in rows))
    for label, url in urls.items():
        rows += http_rows(url, body, label, [c for c in levels if c > 1], per_level)
    healthz = asyncio.run(_healthz(urls["serve, batching off"]))
    # How full the batches got: small batches mean the model was never behind the requests.
    stats = httpx.get(f"{urls['serve, batching on']}/stats").json()
    batches = {int(k): v for k, v in stats["batch_sizes"].items()}
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
