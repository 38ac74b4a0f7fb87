"""Contact sheets: a few clips as rows of thumbnails, so a person sees at a glance what was decoded."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def _thumb(data: bytes, size: int) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((size, size))
    return img


def contact_sheet(clips: Sequence[dict], *, columns: int = 8, thumb: int = 128, pad: int = 6) -> Image.Image:
    """One row per clip (``id``, ``frames`` as encoded bytes, ``frame_times``): up to ``columns``
    frames spread over the clip, each labelled with its time, the row with the clip's id."""
    font = ImageFont.load_default(size=12)
    label_h = 16
    row_h = label_h + thumb + label_h + pad
    width = pad + columns * (thumb + pad)
    sheet = Image.new("RGB", (width, max(1, len(clips)) * row_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, clip in enumerate(clips):
        frames, times = clip["frames"], clip["frame_times"]
        y = pad + r * row_h
        draw.text((pad, y), f"{clip['id']}  ({len(frames)} frames)", fill="black", font=font)
        n = min(columns, len(frames))
        picks = [int(i * len(frames) / n) for i in range(n)] if n else []
        for c, k in enumerate(picks):
            img = _thumb(frames[k], thumb)
            x = pad + c * (thumb + pad)
            sheet.paste(img, (x, y + label_h))
            draw.text((x, y + label_h + img.height + 2), f"{times[k]:.2f}s", fill="dimgray", font=font)
    return sheet
