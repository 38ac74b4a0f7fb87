"""A chat request as a vidtune clip: messages with one ``<video>`` placeholder, and the frames for it.

The model was trained on clips (one video, or a T2Vid image sequence, per sample), so a request carries
one ``video_url``, or any number of ``image_url`` parts read as a clip's frames in order, or neither.
The placeholder goes where the first visual part is; text parts around it keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vidtune.config import SamplingConfig
from vidtune.data.schema import PLACEHOLDER
from vidtune.serving.api import APIError, ChatRequest, ImagePart, TextPart, VideoPart
from vidtune.serving.media import MediaLimits, fetch, image_frame, video_frames


@dataclass
class Clip:
    messages: list[dict[str, str]]
    frames: list[np.ndarray]


def clip_of(
    request: ChatRequest,
    sampling: SamplingConfig,
    max_pixels: int,
    limits: MediaLimits,
) -> Clip:
    """Fetch and decode the request's visual parts; raises :class:`APIError` naming the bad part."""
    messages: list[dict[str, str]] = []
    visual: list[tuple[str, Any]] = []  # (param, part)
    visual_message: int | None = None
    for i, m in enumerate(request.messages):
        parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        pieces: list[str] = []
        for j, part in enumerate(parts):
            param = f"messages[{i}].content" + ("" if isinstance(m.content, str) else f"[{j}]")
            if isinstance(part, TextPart):
                if PLACEHOLDER in part.text:
                    raise APIError(
                        400,
                        f"{param}: text may not contain {PLACEHOLDER}; send the video as a video_url part",
                        param=param,
                    )
                pieces.append(part.text)
                continue
            if m.role != "user":
                raise APIError(400, f"{param}: only user messages may carry videos or images", param=param)
            if visual_message not in (None, i):
                raise APIError(400, f"{param}: put the video (or the images) in one message", param=param)
            if visual_message is None:
                pieces.append(PLACEHOLDER)
            visual_message = i
            visual.append((param, part))
        messages.append({"role": m.role, "content": _join(pieces)})
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "messages: the last message must be the user's", param="messages")
    kinds = {type(p) for _, p in visual}
    if len(kinds) > 1:
        raise APIError(400, "a request carries one video_url or image_url parts, not both", param="messages")
    videos = [(param, p) for param, p in visual if isinstance(p, VideoPart)]
    if len(videos) > 1:
        raise APIError(400, f"{videos[1][0]}: one video per request", param=videos[1][0])
    frames: list[np.ndarray] = []
    if videos:
        param, part = videos[0]
        frames = video_frames(fetch(part.video_url.url, limits, param), sampling, max_pixels, limits, param)
    else:
        for param, part in visual:
            assert isinstance(part, ImagePart)
            frames.append(image_frame(fetch(part.image_url.url, limits, param), max_pixels, param))
        frames = _same_size(frames)
    return Clip(messages, frames)


def _join(pieces: list[str]) -> str:
    """Text parts joined by newlines; the placeholder on its own line, as in the training records."""
    return "\n".join(p.strip("\n") for p in pieces if p.strip() or p == PLACEHOLDER)


def _same_size(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Images read as one clip: every frame at the first one's size (video processors need one size)."""
    if len(frames) < 2:
        return frames
    from PIL import Image

    h, w = frames[0].shape[:2]
    return [f if f.shape[:2] == (h, w) else np.asarray(Image.fromarray(f).resize((w, h))) for f in frames]
