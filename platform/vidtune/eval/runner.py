"""Answering eval clips: Ray Data batch inference on a pool of model replicas, or any OpenAI-compatible
endpoint (the vidtune Serve app, or another server).

Both runners read the same eval clips (frames decoded once, with the model's sampling) and ask the same
question, so a model graded locally and through its endpoint gets the same scores: the endpoint runner
sends the stored frames themselves as ``image_url`` parts, which the Serve app reads as the clip's
frames, rather than the video (which it would decode again, from different bytes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from vidtune.data.schema import PLACEHOLDER


def question_of(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to the last user turn: what the model is asked (the reference answer, the
    last assistant turn, is left out)."""
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]


class Answerer:
    """Ray Data's callable class: one model per actor, a batch of clips answered by one ``generate``."""

    def __init__(self, model: str, max_new_tokens: int = 16, use_gpu: bool | None = None):
        from vidtune.serving.engine import Engine

        self.engine = Engine(model, use_gpu=use_gpu)
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        from vidtune.data.schema import decode_frames
        from vidtune.serving.engine import Generation

        rows = batch.to_pylist()
        gens = [
            Generation(
                self.engine.encode(question_of(r["messages"]), decode_frames(r["frames"])),
                self.max_new_tokens,
            )
            for r in rows
        ]
        self.engine.run(gens)
        return pa.table({"id": [r["id"] for r in rows], "output": [g.text for g in gens]})


def run_replicas(
    dataset: Any,
    model: str,
    *,
    replicas: int = 1,
    num_gpus: float = 0,
    num_cpus: float = 1,
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> dict[str, str]:
    """Answer every clip of a Ray dataset on ``replicas`` model actors; returns ``{id: output}``."""
    answered = dataset.select_columns(["id", "frames", "messages"]).map_batches(
        Answerer,
        fn_constructor_kwargs={"model": model, "max_new_tokens": max_new_tokens, "use_gpu": num_gpus > 0},
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=replicas,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
    )
    return {r["id"]: r["output"] for r in answered.take_all()}


def chat_body(row: dict[str, Any], model: str | None, max_new_tokens: int) -> dict[str, Any]:
    """The OpenAI request for one clip: its stored frames as images where the placeholder is, greedy."""
    messages = []
    for m in question_of(row["messages"]):
        if PLACEHOLDER not in m["content"]:
            messages.append(m)
            continue
        before, after = m["content"].split(PLACEHOLDER, 1)
        parts: list[dict[str, Any]] = [{"type": "text", "text": before}] if before.strip() else []
        parts += [
            {
                "type": "image_url",
                "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(f).decode()},
            }
            for f in row["frames"]
        ]
        parts += [{"type": "text", "text": after.lstrip("\n")}] if after.strip() else []
        messages.append({"role": m["role"], "content": parts})
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_new_tokens, "temperature": 0}
    if model:
        body["model"] = model
    return body


def run_endpoint(
    rows: Iterable[dict[str, Any]],
    base_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    max_new_tokens: int = 16,
    timeout_s: float = 300,
) -> dict[str, str]:
    """Answer clips through an OpenAI-compatible ``base_url`` (``http://host:8000/v1``), ``concurrency``
    requests in flight (the server batches them); returns ``{id: output}``."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=timeout_s, headers=headers) as client:

        def ask(row: dict[str, Any]) -> tuple[str, str]:
            r = client.post(
                f"{base_url.rstrip('/')}/chat/completions", json=chat_body(row, model, max_new_tokens)
            )
            if r.status_code != 200:
                raise RuntimeError(f"{base_url} answered {r.status_code} for {row['id']}: {r.text[:300]}")
            return row["id"], r.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(concurrency) as pool:
            return dict(pool.map(ask, rows))
