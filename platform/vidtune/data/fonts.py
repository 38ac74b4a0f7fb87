"""Fonts for rendering text into frames, shipped as Python packages (no system font is assumed).

Noto Sans covers Latin, Greek and Cyrillic; Noto Sans CJK covers Chinese, Japanese and Korean (and Latin
too). A text is set in the first font whose character map holds every character of it, so a Chinese
document renders as glyphs, never as boxes, and English keeps its usual face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from PIL import ImageFont


@dataclass(frozen=True)
class FontFace:
    name: str
    path: str


def _faces() -> list[FontFace]:
    import fontpkg_noto_sans
    import noto_cjk_sans_jp_regular

    return [
        FontFace("noto-sans", str(Path(fontpkg_noto_sans.ROOT) / "files" / "NotoSans[wdth,wght].ttf")),
        FontFace("noto-sans-cjk", str(noto_cjk_sans_jp_regular.FONT_PATH)),
    ]


FACES: list[FontFace] = _faces()


@cache
def codepoints(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True, fontNumber=0) as font:
        return frozenset(font.getBestCmap() or {})


def face_for(text: str) -> FontFace:
    """The first face that has a glyph for every visible character of ``text`` (else the widest one)."""
    needed = {ord(c) for c in text if not c.isspace()}
    for face in FACES:
        if needed <= codepoints(face.path):
            return face
    return max(FACES, key=lambda f: len(needed & codepoints(f.path)))


@lru_cache(maxsize=64)
def load(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    # Basic layout (no HarfBuzz shaping) is several times faster and exact for the scripts these faces
    # cover: Latin, Greek, Cyrillic and CJK need no contextual shaping.
    font = ImageFont.truetype(face.path, size, layout_engine=ImageFont.Layout.BASIC)
    if "wght" in face.path:
        try:
            font.set_variation_by_name("Regular")  # a variable font's default instance may not be Regular
        except (OSError, ValueError):
            pass
    return font


def missing(face: FontFace, text: str) -> set[str]:
    """Characters of ``text`` the face has no glyph for (what would render as boxes)."""
    cmap = codepoints(face.path)
    return {c for c in text if not c.isspace() and ord(c) not in cmap}
