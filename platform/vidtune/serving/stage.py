"""The serve stage (``vidtune serve JOB.yaml``): start the app from the job's ``serve`` section.

The stage pins the model version, starts the app on the job's Ray, records what it serves in its MLflow
run (the model URI and version, the URL, batching and limits), sends the section's ``example`` request
through HTTP and prints its answer with a ``curl`` line to copy. It then keeps serving until Ctrl-C when
``serve.block`` says so, or by default when run from a terminal; the MLflow run stays open as long.
"""

from __future__ import annotations

import base64
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidtune.config import JobConfig, ServeConfig
from vidtune.serving.media import scheme_of

STAGE = "serve"


@dataclass
class ServeResult:
    url: str
    model: str
    version: str | None
    model_id: str
    replicas: str
    example: dict[str, Any] | None
    curl: str | None
    block: bool
    app_name: str = "vidtune"

    def hold(self, echo: Any = print) -> None:
        """Keep serving until Ctrl-C (when blocking), then take the app down."""
        from ray import serve

        if self.block:
            echo(f"serving {self.model_id} at {self.url} until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        serve.delete(self.app_name)


def example_request(example: Any, model_id: str) -> dict[str, Any]:
    """The OpenAI chat body for the section's example (a local video is named by its absolute path)."""
    video = example.video
    if scheme_of(video) == "file":
        video = str(Path(video.removeprefix("file://")).expanduser().resolve())
    return {
        "model": model_id,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video}},
                    {"type": "text", "text": example.question},
                ],
            }
        ],
        "max_tokens": example.max_tokens,
        "temperature": 0,
    }


def curl_line(url: str, body: dict[str, Any], api_key_env: str | None) -> str:
    auth = f' -H "Authorization: Bearer ${api_key_env}"' if api_key_env else ""
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f"-d {shlex.quote(json.dumps(body))}"
    )


def data_url(path: str | Path, mime: str = "video/mp4") -> str:
    """A local file as a base64 ``data:`` URL, the way to send a video the server cannot read itself."""
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def serve_stage(job: JobConfig, tracker: Any) -> ServeResult:
    import os

    import httpx
    import mlflow

    from vidtune.cluster import ensure_ray
    from vidtune.serving.app import AppArgs, resolve, start

    cfg: ServeConfig = job.section(STAGE)
    args = resolve(
        AppArgs(
            **cfg.model_dump(),
            tracking_uri=mlflow.get_tracking_uri(),
            s3_endpoint_url=job.storage.endpoint_url,
        )
    )
    replicas = (
        f"{cfg.autoscaling.min_replicas}-{cfg.autoscaling.max_replicas} (autoscaling)"
        if cfg.autoscaling
        else str(cfg.num_replicas)
    )
    tracker.params(
        {
            "model": cfg.model,
            "model_uri": args.model,
            "model_version": args.version,
            "model_id": args.name,
            "replicas": replicas,
            "max_batch_size": cfg.max_batch_size,
            "batch_wait_s": cfg.batch_wait_s,
            "max_ongoing_requests": cfg.max_ongoing_requests,
            "max_queued_requests": cfg.max_queued_requests,
            "ray_actor_options": json.dumps(cfg.ray_actor_options),
            "auth": "bearer" if cfg.api_key_env else "none",
        }
    )
    tracker.tags({"vidtune.serves": args.model})
    ensure_ray(job.ray)
    url = start(args)
    tracker.params({"url": url})

    example = curl = None
    if cfg.example is not None:
        body = example_request(cfg.example, args.name)
        headers = {"Authorization": f"Bearer {os.environ[cfg.api_key_env]}"} if cfg.api_key_env else {}
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
        seconds = time.perf_counter() - started
        answer = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"the example request failed ({response.status_code}): {answer}")
        example = {
            "request": body,
            "response": answer,
            "answer": answer["choices"][0]["message"]["content"],
            "seconds": round(seconds, 3),
        }
        tracker.json(example, "example.json")
        tracker.metrics(
            {"example_latency_s": seconds, "example_prompt_tokens": answer["usage"]["prompt_tokens"]}
        )
        curl = curl_line(url, body, cfg.api_key_env)
    block = cfg.block if cfg.block is not None else sys.stdin.isatty()
    return ServeResult(url, args.model, args.version, args.name, replicas, example, curl, block, cfg.app_name)
