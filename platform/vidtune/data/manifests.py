"""Video instruction manifests in the formats users already have, read into one record shape.

Accepted, in JSON (an array) or JSONL:

* LLaVA: ``{"id", "video", "conversations": [{"from": "human"|"gpt", "value"}]}`` with ``<video>``;
* ShareGPT / LLaMA-Factory: ``{"messages" | "conversations": [{"role", "content"} | {"from", "value"}],
  "videos": [path]}``.

A line that cannot become a sample is never dropped silently: it comes back as a :class:`ManifestError`
with its file and line number, for the errors table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vidtune.data.schema import PLACEHOLDER
from vidtune.storage import open_uri, resolve

ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
# Placeholders other tools write for the same thing.
ALIASES = ("<image>", "<Video>", "<VIDEO>")


@dataclass
class ManifestRecord:
    id: str
    video: str
    messages: list[dict[str, str]]
    origin: str  # file:line, so any later error can point back at the manifest


@dataclass
class ManifestError:
    origin: str
    reason: str
    id: str = ""


def _messages(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversation is missing or empty")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} is not an object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in ROLE_NAMES:
            raise ValueError(f"turn {i} has unknown role {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"turn {i} has no text content")
        out.append({"role": ROLE_NAMES[role], "content": content})
    return out


def _place_video(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Exactly one ``<video>``, in the first user turn (prepended there when the manifest has none)."""
    for m in messages:
        for alias in ALIASES:
            m["content"] = m["content"].replace(alias, PLACEHOLDER)
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise ValueError("no user turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn")
    total = sum(m["content"].count(PLACEHOLDER) for m in messages)
    first = users[0]
    if total == 0:
        first["content"] = f"{PLACEHOLDER}\n{first['content']}"
    elif total > 1 or first["content"].count(PLACEHOLDER) != 1:
        raise ValueError(
            f"expected one {PLACEHOLDER} placeholder in the first user turn, found {total} in all"
        )
    return messages


def parse_sample(obj: Any, fmt: str = "auto") -> tuple[str, str, list[dict[str, str]]]:
    """(id, video path, messages) of one manifest entry; ``ValueError`` says what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    if fmt == "auto":
        fmt = "sharegpt" if "messages" in obj or "videos" in obj else "llava"
    if fmt == "llava":
        video, turns = obj.get("video"), obj.get("conversations")
    else:
        turns = obj.get("messages", obj.get("conversations"))
        videos = obj.get("videos", obj.get("video"))
        if isinstance(videos, list):
            if len(videos) != 1:
                raise ValueError(f"expected one video per sample, got {len(videos)}")
            videos = videos[0]
        video = videos
    if not isinstance(video, str) or not video.strip():
        raise ValueError("no video path")
    sample_id = obj.get("id")
    if sample_id is None:
        raise ValueError("no id")
    return str(sample_id), video, _place_video(_messages(turns))


def _json_entries(text: str) -> Iterator[tuple[int, Any]]:
    """(line, entry) for a JSON array, with the line where each entry starts."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        obj, pos = decoder.raw_decode(text, pos)
        yield line, obj


def entries_of(uri: str, endpoint_url: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line, entry) of a JSON array or JSONL file; an entry that cannot be read is a ``ValueError``
    in its place (invalid JSON, or a JSONL line that is not UTF-8), so one bad line costs one row.
    A JSON array that does not parse as a whole raises, naming its file and line."""
    with open_uri(uri, "rb", endpoint_url) as f:
        raw = f.read()
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if raw.lstrip().startswith(b"["):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{uri}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            yield from list(_json_entries(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{uri}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        return
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield n, ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        except json.JSONDecodeError as exc:
            yield n, ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})")


def read_manifest(
    uri: str, *, fmt: str = "auto", video_root: str | None = None, endpoint_url: str | None = None
) -> Iterator[ManifestRecord | ManifestError]:
    """Every entry of one manifest, as a record or an error; a file that cannot be read at all raises."""
    for n, obj in entries_of(uri, endpoint_url):
        origin = f"{uri}:{n}"
        if isinstance(obj, ValueError):
            yield ManifestError(origin, str(obj))
            continue
        try:
            sample_id, video, messages = parse_sample(obj, fmt)
        except ValueError as exc:
            got_id = str(obj.get("id", "")) if isinstance(obj, dict) else ""
            yield ManifestError(origin, str(exc), got_id)
            continue
        yield ManifestRecord(sample_id, resolve(video, video_root), messages, origin)
