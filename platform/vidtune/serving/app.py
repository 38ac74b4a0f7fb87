"""The Ray Serve application: a FastAPI ingress speaking OpenAI's chat-completions API, and the model.

Two deployments, as Serve composes models: ``VideoLLMServer`` (the ingress, CPU replicas) validates and
authorizes a request, fetches and decodes its video and encodes the prompt in worker threads (never on
the event loop); ``Generator`` (the model replicas, on GPUs on a cluster) answers the encoded requests,
``@serve.batch`` grouping those that arrive within ``batch_wait_s`` (up to ``max_batch_size``) into one
``generate`` call. Decoding then scales with CPU replicas and never takes the model's time. Model replicas
scale by ``num_replicas`` or autoscaling; past ``max_ongoing_requests`` an ingress replica takes no more
and past ``max_queued_requests`` the proxy answers 503, so load sheds instead of piling up.

``build_app`` is the application builder ``serve run`` / ``serve deploy`` call with a config file's
``args`` (see ``serve/``); ``vidtune serve`` calls it with a job file's ``serve`` section.
"""

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from vidtune.config import ServeConfig
from vidtune.serving.api import APIError, ChatRequest, chunk, completion, completion_id, error_body, usage


class AppArgs(ServeConfig):
    """The deployment's arguments: the ``serve`` section plus where the model's registry and store are.
    ``api_key_sha256`` is filled from ``api_key_env`` by :func:`build_app`; the key itself never
    travels to the replicas or shows in Serve's config."""

    tracking_uri: str | None = None
    s3_endpoint_url: str | None = None
    version: str | None = None
    api_key_sha256: str | None = Field(None, repr=False)


api = FastAPI(title="vidtune", description="OpenAI-compatible chat completions for a fine-tuned video LLM")


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(
            error_body(
                f"the body is not valid JSON: {errors[0].get('msg')}",
                "invalid_request_error",
                code="invalid_json",
            ),
            status_code=400,
        )
    where = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors]
    message = "; ".join(f"{w or 'body'}: {e.get('msg')}" for w, e in zip(where, errors, strict=True))
    return JSONResponse(error_body(message, "invalid_request_error", param=where[0] or None), status_code=422)


@api.exception_handler(HTTPException)
async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)


@api.exception_handler(Exception)
async def _crash(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), status_code=500)


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def result(row: Any) -> dict[str, Any]:
    return {
        "text": row.text,
        "finish_reason": row.finish_reason,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
    }


@serve.deployment(name="Generator")
class Generator:
    """The model: batched ``generate`` on the replica's device (a GPU when it is given one).

    Requests arrive encoded from the ingress, so this replica spends its time generating, not decoding
    video; ``@serve.batch`` groups the requests that arrive within ``batch_wait_s``."""

    def __init__(self, args: dict[str, Any]):
        from vidtune.serving.engine import Engine, fetch_model

        self.args = AppArgs(**args)
        self.engine = Engine(fetch_model(self.args.model, self.args.tracking_uri, self.args.s3_endpoint_url))
        self.batch_sizes: Counter[int] = Counter()
        self.answer.set_max_batch_size(self.args.max_batch_size)
        self.answer.set_batch_wait_timeout_s(self.args.batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def answer(self, rows: list[Any]) -> list[Any]:
        self.batch_sizes[len(rows)] += 1
        if any(r.on_text is not None for r in rows):
            # A streaming row needs this loop free to send its text as it comes: generate in a thread.
            await asyncio.to_thread(self.engine.run, rows)
        else:
            # Otherwise block this replica's user loop, as Serve's batching examples do: requests that
            # arrive meanwhile wait whole in Serve's queue and make up the next batch. Generating in a
            # thread instead left the loop fighting the GIL for every arrival: batches of 1-3 at
            # concurrency 32 on CPU, against 30 this way (`vidtune bench serve`).
            self.engine.run(rows)
        return rows

    async def generate(self, inputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        from vidtune.serving.engine import Generation

        row = Generation(inputs, **params)
        await self.answer(row)
        return result(row)

    async def stream(
        self, inputs: dict[str, Any], params: dict[str, Any]
    ) -> AsyncIterator[str | dict[str, Any]]:
        """The answer's text as it is produced, then the :func:`result` dict."""
        from vidtune.serving.engine import Generation

        queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        row = Generation(
            inputs, **params, on_text=lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
        )
        task = asyncio.create_task(self.answer(row))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        while (piece := await queue.get()) is not None:
            yield piece
        await task
        yield result(row)

    def stats(self) -> dict[str, Any]:
        import torch

        return {
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "device": self.engine.device,
            "torch_threads": torch.get_num_threads(),
        }


@serve.deployment(name="VideoLLM")
@serve.ingress(api)
class VideoLLMServer:
    """The HTTP ingress: validates, authorizes, fetches and decodes the video, encodes the prompt (on
    CPU, in worker threads), and hands the encoded request to the :class:`Generator`."""

    def __init__(self, generator: DeploymentHandle, args: dict[str, Any]):
        from vidtune.serving.engine import Preprocessor, fetch_model
        from vidtune.serving.media import MediaLimits

        self.generator = generator
        self.args = AppArgs(**args)
        folder = fetch_model(
            self.args.model, self.args.tracking_uri, self.args.s3_endpoint_url, weights=False
        )
        self.pre = Preprocessor(folder)
        self.limits = MediaLimits.of(self.args, self.args.s3_endpoint_url)
        self.model_id = self.args.name or model_name(self.args.model)
        self.created = int(time.time())

    def _authorize(self, authorization: str | None) -> None:
        if self.args.api_key_sha256 is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.args.api_key_sha256):
            raise APIError(
                401, "a valid API key is needed: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_id, "version": self.args.version}

    @api.get("/v1/models")
    def models(self, authorization: str | None = Header(None)) -> dict[str, Any]:
        self._authorize(authorization)
        card = {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "vidtune"}
        return {"object": "list", "data": [card]}

    @api.get("/stats")
    async def stats(self) -> dict[str, Any]:
        """Batches a generator replica ran, by size: how well concurrent requests were batched."""
        return await self.generator.stats.remote()

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, authorization: str | None = Header(None)) -> Any:
        from vidtune.serving.prompt import clip_of

        self._authorize(authorization)
        if body.model not in (None, "", self.model_id, self.args.model):
            raise APIError(
                404,
                f"model '{body.model}' is not served here (this is '{self.model_id}')",
                param="model",
                code="model_not_found",
            )
        sampling, max_pixels = self._sampling(body)
        max_tokens = body.max_completion_tokens or body.max_tokens or self.args.default_max_tokens
        if max_tokens > self.args.max_tokens:
            raise APIError(
                400,
                f"max_tokens {max_tokens} is over this server's {self.args.max_tokens}",
                param="max_tokens",
            )
        started = time.perf_counter()
        clip = await asyncio.to_thread(clip_of, body, sampling, max_pixels, self.limits)
        decoded = time.perf_counter()
        inputs = await asyncio.to_thread(self.pre.encode, clip.messages, clip.frames)
        encoded = time.perf_counter()
        params = {
            "max_tokens": max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
            "stops": body.stops,
        }
        cid = completion_id()
        if not body.stream:
            out = await self.generator.generate.remote(inputs, params)
            answer = completion(
                cid,
                self.model_id,
                out["text"],
                out["finish_reason"],
                out["prompt_tokens"],
                out["completion_tokens"],
            )
            # Where the time went, for browsers' dev tools and `vidtune bench serve` (W3C Server-Timing).
            timing = {
                "media": decoded - started,
                "encode": encoded - decoded,
                "generate": time.perf_counter() - encoded,
            }
            header = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items())
            return JSONResponse(answer, headers={"Server-Timing": header})

        pieces = self.generator.options(stream=True).stream.remote(inputs, params)
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            yield _sse(chunk(cid, self.model_id, {"role": "assistant", "content": ""}))
            async for piece in pieces:
                if isinstance(piece, str):
                    yield _sse(chunk(cid, self.model_id, {"content": piece}))
                    continue
                yield _sse(chunk(cid, self.model_id, {}, piece["finish_reason"]))
                if include_usage:
                    counts = usage(piece["prompt_tokens"], piece["completion_tokens"])
                    yield _sse(chunk(cid, self.model_id, {}, usage_=counts, choices=False))
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    def _sampling(self, body: ChatRequest) -> tuple[Any, int]:
        """The model's frame sampling and pixel budget, with the request's overrides inside the limits."""
        settings = self.pre.settings
        sampling, max_pixels = settings.sampling, settings.max_pixels
        if body.frames is not None:
            if body.frames > self.args.max_frames:
                raise APIError(
                    400, f"frames {body.frames} is over this server's {self.args.max_frames}", param="frames"
                )
            key = "frames" if sampling.strategy == "uniform" else "max_frames"
            sampling = sampling.model_copy(update={key: body.frames})
        if body.max_pixels is not None:
            if body.max_pixels > self.args.max_pixels:
                raise APIError(
                    400,
                    f"max_pixels {body.max_pixels} is over this server's {self.args.max_pixels}",
                    param="max_pixels",
                )
            max_pixels = body.max_pixels
        return sampling, max_pixels


def model_name(uri: str) -> str:
    """A readable model id: the registered name, or the folder's name."""
    if uri.startswith("models:/"):
        return uri.removeprefix("models:/").split("/")[0]
    return uri.rstrip("/").rsplit("/", 1)[-1] or "model"


def generator_options(args: AppArgs) -> dict[str, Any]:
    """The model replicas: as many, and with the resources, the section says; they take every request
    the ingress replicas hold, so that batches can fill."""
    opts: dict[str, Any] = {
        "ray_actor_options": args.ray_actor_options,
        "max_ongoing_requests": max(args.max_ongoing_requests * args.ingress_replicas, args.max_batch_size),
    }
    if args.autoscaling is not None:
        opts["autoscaling_config"] = args.autoscaling.model_dump()
    else:
        opts["num_replicas"] = args.num_replicas
    return opts


def ingress_options(args: AppArgs) -> dict[str, Any]:
    """The HTTP replicas: past ``max_ongoing_requests`` each and ``max_queued_requests`` waiting at the
    proxy, requests get 503."""
    return {
        "num_replicas": args.ingress_replicas,
        "ray_actor_options": args.ingress_actor_options,
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
    }


def resolve(args: dict[str, Any] | AppArgs) -> AppArgs:
    """The arguments as the replicas get them: ``models:/NAME/latest`` pinned to its current version
    (every replica serves the same one), the tracking URI and allowed roots made absolute, and the API
    key read from ``api_key_env`` and replaced by its hash (the key never reaches Serve's config or the
    replicas)."""
    import mlflow

    from vidtune.serving.engine import resolve_model
    from vidtune.tracking import absolute_tracking_uri

    a = args if isinstance(args, AppArgs) else AppArgs(**args)
    # Replicas run in other directories and on other nodes: a relative sqlite path must not move.
    tracking_uri = absolute_tracking_uri(a.tracking_uri or mlflow.get_tracking_uri())
    uri, version = resolve_model(a.model, tracking_uri)
    updates: dict[str, Any] = {
        "tracking_uri": tracking_uri,
        "model": uri,
        "version": version,
        "name": a.name or model_name(a.model),
        "allowed_roots": [os.path.abspath(os.path.expanduser(r)) for r in a.allowed_roots],
    }
    if a.api_key_env:
        key = os.environ.get(a.api_key_env)
        if not key:
            raise ValueError(f"serve.api_key_env names {a.api_key_env}, which is not set in this environment")
        updates["api_key_sha256"] = hashlib.sha256(key.encode()).hexdigest()
    return a.model_copy(update=updates)


def application(args: AppArgs) -> serve.Application:
    """The deployment bound to resolved arguments (see :func:`resolve`)."""
    raw = args.model_dump(mode="json")
    generator = Generator.options(**generator_options(args)).bind(raw)
    return VideoLLMServer.options(**ingress_options(args)).bind(generator, raw)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application builder for ``serve run`` / ``serve deploy``
    (``import_path: vidtune.serving.app:build_app``, the ``serve`` section's keys as ``args``)."""
    return application(resolve(args))


def start(args: AppArgs) -> str:
    """Run the app on the connected Ray cluster (resolved ``args``) and return its base URL."""
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(args), name=args.app_name, route_prefix=args.route_prefix, blocking=False)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return f"http://{host}:{args.port}{args.route_prefix.rstrip('/')}"
