"""The Ray Serve deployment: a FastAPI ingress speaking OpenAI's chat-completions API.

Each replica loads the model once. A request is validated, its video fetched and decoded in a worker
thread (never on the event loop), encoded, and handed to :meth:`VideoLLMServer.answer`, which
``@serve.batch`` calls with every request that arrived within ``batch_wait_s`` (up to
``max_batch_size``): one ``generate`` call answers them all. Replicas scale by ``num_replicas`` or
autoscaling; past ``max_ongoing_requests`` a replica takes no more and past ``max_queued_requests`` the
proxy answers 503, so load sheds instead of piling up.

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
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field
from ray import serve
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


@serve.deployment(name="VideoLLM")
@serve.ingress(api)
class VideoLLMServer:
    def __init__(self, args: dict[str, Any]):
        from vidtune.serving.engine import Engine, fetch_model
        from vidtune.serving.media import MediaLimits

        self.args = AppArgs(**args)
        folder = fetch_model(self.args.model, self.args.tracking_uri, self.args.s3_endpoint_url)
        self.engine = Engine(folder)
        self.limits = MediaLimits.of(self.args, self.args.s3_endpoint_url)
        self.model_id = self.args.name or model_name(self.args.model)
        self.created = int(time.time())
        self.batch_sizes: Counter[int] = Counter()
        self.answer.set_max_batch_size(self.args.max_batch_size)
        self.answer.set_batch_wait_timeout_s(self.args.batch_wait_s)

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
    def stats(self) -> dict[str, Any]:
        """Batches this replica ran, by size: how well concurrent requests were batched."""
        return {"batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def answer(self, rows: list[Any]) -> list[Any]:
        self.batch_sizes[len(rows)] += 1
        await asyncio.to_thread(self.engine.run, rows)
        return rows

    @api.post("/v1/chat/completions")
    async def chat(
        self,
        body: ChatRequest,
        request: Request,
        authorization: str | None = Header(None),
    ) -> Any:
        from vidtune.serving.engine import Generation
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
        clip = await asyncio.to_thread(clip_of, body, sampling, max_pixels, self.limits)
        inputs = await asyncio.to_thread(self.engine.encode, clip.messages, clip.frames)
        row = Generation(inputs, max_tokens, body.temperature, body.top_p, body.seed, body.stops)
        cid = completion_id()
        if not body.stream:
            await self.answer(row)
            return completion(
                cid, self.model_id, row.text, row.finish_reason, row.prompt_tokens, row.completion_tokens
            )

        queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        row.on_text = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
        task = asyncio.create_task(self.answer(row))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events():
            yield _sse(chunk(cid, self.model_id, {"role": "assistant", "content": ""}))
            while (piece := await queue.get()) is not None:
                yield _sse(chunk(cid, self.model_id, {"content": piece}))
            await task
            yield _sse(chunk(cid, self.model_id, {}, row.finish_reason))
            if include_usage:
                yield _sse(
                    chunk(
                        cid,
                        self.model_id,
                        {},
                        usage_=usage(row.prompt_tokens, row.completion_tokens),
                        choices=False,
                    )
                )
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    def _sampling(self, body: ChatRequest) -> tuple[Any, int]:
        """The model's frame sampling and pixel budget, with the request's overrides inside the limits."""
        settings = self.engine.settings
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


def deployment_options(args: AppArgs) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "ray_actor_options": args.ray_actor_options,
        "max_ongoing_requests": max(args.max_ongoing_requests, args.max_batch_size),
        "max_queued_requests": args.max_queued_requests,
    }
    if args.autoscaling is not None:
        opts["autoscaling_config"] = args.autoscaling.model_dump()
    else:
        opts["num_replicas"] = args.num_replicas
    return opts


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
    return VideoLLMServer.options(**deployment_options(args)).bind(args.model_dump(mode="json"))


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
