"""The wire format: OpenAI chat-completion requests, responses, stream chunks and errors.

Requests are validated by these models before any video is fetched. Fields OpenAI clients send that
vidtune does not use (``user``, ``logprobs: false``, ...) are accepted and ignored, as other
OpenAI-compatible servers do; two vidtune extensions, ``frames`` and ``max_pixels``, override the
model's frame sampling for one request (``extra_body`` in the ``openai`` client).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class APIError(Exception):
    """An error answered as JSON in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class URLRef(_Open):
    url: str = Field(min_length=1)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: URLRef


class VideoPart(_Open):
    type: Literal["video_url"]
    video_url: URLRef


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(_Open):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


class ChatRequest(_Open):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    frames: PositiveInt | None = Field(None, description="vidtune: frames sampled from each video")
    max_pixels: PositiveInt | None = Field(None, description="vidtune: pixel budget per frame")

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(
    cid: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        if choices
        else [],
    }
    if usage_ is not None:
        out["usage"] = usage_
    return out
