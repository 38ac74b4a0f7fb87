"""The videos and images a request names: fetched under limits, decoded as the model was trained.

A URL is a ``data:`` URL (base64), ``http(s)://``, ``s3://``, or a local path (``file://`` or bare)
inside one of the configured allowed roots. Every failure is an :class:`APIError` that names the content
part (``messages[0].content[1]``): 403 for a forbidden scheme or a path outside the roots (symlinks are
resolved first, so a link out of a root is refused), 413 over the size or duration limit, 400 for
anything unreadable. Runs in a worker thread: fetching and decoding never block the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidtune.config import SamplingConfig, ServeConfig
from vidtune.serving.api import APIError

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,", re.I)
SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


@dataclass
class MediaLimits:
    allowed_roots: list[Path] = field(default_factory=list)
    allowed_schemes: frozenset[str] = frozenset({"data", "http", "https", "s3", "file"})
    max_bytes: int = 64 * 2**20
    max_duration_s: float = 3600.0
    fetch_timeout_s: float = 10.0
    endpoint_url: str | None = None

    @classmethod
    def of(cls, cfg: ServeConfig, endpoint_url: str | None = None) -> MediaLimits:
        return cls(
            allowed_roots=[Path(r).expanduser().resolve() for r in cfg.allowed_roots],
            allowed_schemes=frozenset(cfg.allowed_schemes),
            max_bytes=int(cfg.max_video_mb * 2**20),
            max_duration_s=cfg.max_duration_s,
            fetch_timeout_s=cfg.fetch_timeout_s,
            endpoint_url=endpoint_url,
        )


def scheme_of(url: str) -> str:
    """``data``, ``http``, ``https``, ``s3``, ``file`` (also for bare paths) or whatever else it says."""
    m = SCHEME.match(url)
    if m is None or (len(m["scheme"]) == 1 and url[1:3] in (":\\", ":/")):  # C:\... is a path
        return "file"
    return m["scheme"].lower()


def _too_big(size: int, limits: MediaLimits, param: str) -> APIError:
    return APIError(
        413,
        f"{param}: {size / 2**20:.1f} MB is over the {limits.max_bytes / 2**20:g} MB limit",
        param=param,
        code="too_large",
    )


def fetch(url: str, limits: MediaLimits, param: str) -> bytes:
    """The bytes behind ``url``, or an :class:`APIError` saying why not."""
    scheme = scheme_of(url)
    if scheme not in limits.allowed_schemes:
        allowed = ", ".join(sorted(limits.allowed_schemes)) or "none"
        raise APIError(
            403,
            f"{param}: URL scheme '{scheme}' is not allowed (allowed: {allowed})",
            param=param,
            code="forbidden_scheme",
        )
    if scheme == "data":
        data = _data_url(url, limits, param)
    elif scheme in ("http", "https"):
        data = _http(url, limits, param)
    elif scheme == "s3":
        data = _s3(url, limits, param)
    else:
        data = _local(url, limits, param)
    if not data:
        raise APIError(400, f"{param}: empty file (0 bytes)", param=param, code="empty_media")
    return data


def _data_url(url: str, limits: MediaLimits, param: str) -> bytes:
    m = DATA_URL.match(url)
    if m is None or not m["b64"]:
        raise APIError(400, f"{param}: expected a base64 data URL (data:video/mp4;base64,...)", param=param)
    payload = url[m.end() :]
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise _too_big(len(payload) * 3 // 4, limits, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: the data URL is not valid base64", param=param) from None


def _http(url: str, limits: MediaLimits, param: str) -> bytes:
    import httpx

    try:
        with (
            httpx.Client(timeout=limits.fetch_timeout_s, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise APIError(
                    400,
                    f"{param}: fetching {url} gave HTTP {response.status_code}",
                    param=param,
                    code="fetch_failed",
                )
            declared = int(response.headers.get("content-length") or 0)
            if declared > limits.max_bytes:
                raise _too_big(declared, limits, param)
            buf = bytearray()
            for piece in response.iter_bytes():
                buf += piece
                if len(buf) > limits.max_bytes:
                    raise _too_big(len(buf), limits, param)
            return bytes(buf)
    except httpx.TimeoutException:
        raise APIError(
            400,
            f"{param}: fetching {url} timed out after {limits.fetch_timeout_s:g}s",
            param=param,
            code="fetch_failed",
        ) from None
    except httpx.HTTPError as exc:
        raise APIError(
            400,
            f"{param}: could not fetch {url} ({type(exc).__name__}: {exc})",
            param=param,
            code="fetch_failed",
        ) from None


def _s3(url: str, limits: MediaLimits, param: str) -> bytes:
    from vidtune.storage import filesystem

    try:
        fs, path = filesystem(url, limits.endpoint_url)
        size = fs.size(path)
        if size > limits.max_bytes:
            raise _too_big(size, limits, param)
        return fs.cat_file(path)
    except FileNotFoundError:
        raise APIError(400, f"{param}: no such object {url}", param=param, code="fetch_failed") from None
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 — any store error is the request's URL, not the server
        raise APIError(
            400,
            f"{param}: could not fetch {url} ({type(exc).__name__}: {exc})",
            param=param,
            code="fetch_failed",
        ) from None


def local_path(url: str, limits: MediaLimits, param: str) -> Path:
    """The file a local URL names, if it is inside an allowed root once links and ``..`` are resolved.
    Relative paths are relative to the first root."""
    if not limits.allowed_roots:
        raise APIError(
            403, f"{param}: local paths are not allowed on this server", param=param, code="forbidden_path"
        )
    raw = Path(url.removeprefix("file://")).expanduser()
    path = (raw if raw.is_absolute() else limits.allowed_roots[0] / raw).resolve()
    if not any(path.is_relative_to(root) for root in limits.allowed_roots):
        raise APIError(
            403, f"{param}: {url} is outside the allowed roots", param=param, code="forbidden_path"
        )
    return path


def _local(url: str, limits: MediaLimits, param: str) -> bytes:
    path = local_path(url, limits, param)
    if not path.is_file():
        raise APIError(400, f"{param}: no such file {url}", param=param, code="fetch_failed")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise _too_big(size, limits, param)
    return path.read_bytes()


def video_frames(
    data: bytes, sampling: SamplingConfig, max_pixels: int, limits: MediaLimits, param: str
) -> list[np.ndarray]:
    """Frames sampled from an encoded video with the model's sampling rule (seeking, not decoding all)."""
    from vidtune.data.decode import VideoDecodeError, make_reader, probe

    try:
        meta = probe(io.BytesIO(data))
        if meta.duration > limits.max_duration_s:
            raise APIError(
                413,
                f"{param}: the video is {meta.duration:.0f}s long, over the {limits.max_duration_s:g}s limit",
                param=param,
                code="too_long",
            )
        return make_reader("pyav").read(io.BytesIO(data), sampling, max_pixels).frames
    except VideoDecodeError as exc:
        raise APIError(
            400, f"{param}: the video cannot be decoded ({exc.reason})", param=param, code="invalid_video"
        ) from None


def image_frame(data: bytes, max_pixels: int, param: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from vidtune.data.decode import fit_pixels

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise APIError(
            400, f"{param}: the image cannot be decoded ({exc})", param=param, code="invalid_image"
        ) from None
    w, h = fit_pixels(rgb.width, rgb.height, max_pixels)
    return np.asarray(rgb.resize((w, h), Image.Resampling.BICUBIC) if (w, h) != rgb.size else rgb)
