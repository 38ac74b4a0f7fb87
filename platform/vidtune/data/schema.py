"""The clip record: the one Parquet schema every stage reads and writes (see docs/data.md).

A row is one training or eval sample. ``validate`` runs on every write, so a stage that produces a wrong
column fails where it is written, not three stages later in a training worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("video", "t2vid", "image")
ROLES = ("system", "user", "assistant")
PLACEHOLDER = "<video>"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

CLIP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("frames", pa.list_(pa.binary())),
        ("frame_times", pa.list_(pa.float64())),
        ("messages", pa.list_(MESSAGE)),
        ("meta", pa.string()),
    ]
)

EVAL_COLUMNS = [("options", pa.list_(pa.string())), ("answer", pa.string()), ("task", pa.string())]
EVAL_SCHEMA = pa.schema(list(CLIP_SCHEMA) + [pa.field(n, t) for n, t in EVAL_COLUMNS])

# One row per input that did not become a clip. `where` is a manifest line (file:line) or a video path.
ERRORS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)


class SchemaError(ValueError):
    pass


def _check_row(row: dict[str, Any]) -> str | None:
    if not row.get("id"):
        return "empty id"
    if row.get("kind") not in KINDS:
        return f"kind {row.get('kind')!r} is not one of {KINDS}"
    n_frames, n_times = row.get("n_frames") or 0, row.get("n_times") or 0
    if not n_frames:
        return "no frames"
    if n_frames != n_times:
        return f"{n_frames} frames but {n_times} frame_times"
    messages = row.get("messages") or []
    if not messages:
        return "no messages"
    for m in messages:
        if m.get("role") not in ROLES:
            return f"message role {m.get('role')!r} is not one of {ROLES}"
    users = [m for m in messages if m["role"] == "user"]
    if not users or users[0]["content"].count(PLACEHOLDER) != 1:
        return f"the first user turn must hold exactly one {PLACEHOLDER} placeholder"
    if any(PLACEHOLDER in m["content"] for m in messages if m is not users[0]):
        return f"only the first user turn may hold {PLACEHOLDER}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    try:
        json.loads(row.get("meta") or "{}")
    except ValueError:
        return "meta is not JSON"
    return None


def validate(table: pa.Table, schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    """Cast ``table`` to ``schema`` and check every row; a :class:`SchemaError` names the first bad one."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"missing columns {missing}")
    try:
        table = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"columns do not match the clip schema: {exc}") from None
    # Frame counts come from list lengths so that checking never copies the encoded frames.
    small = table.select(["id", "kind", "messages", "meta"])
    small = small.append_column("n_frames", pc.list_value_length(table["frames"]))
    small = small.append_column("n_times", pc.list_value_length(table["frame_times"]))
    for row in small.to_pylist():
        problem = _check_row(row)
        if problem:
            raise SchemaError(f"row {row.get('id')!r}: {problem}")
    return table


def to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def first_user_text(messages: list[dict[str, str]]) -> str:
    """The instruction: the first user turn without its placeholder (what diversity metrics embed)."""
    for m in messages:
        if m["role"] == "user":
            return m["content"].replace(PLACEHOLDER, "").strip()
    return ""


def decode_frames(frames: Iterable[bytes]) -> list[Any]:
    """A row's stored frames (JPEG or PNG bytes) as RGB uint8 arrays, in order."""
    import io

    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in frames]
