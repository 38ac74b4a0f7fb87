"""Shared fixtures: a local Ray, a real S3 API (moto server on 127.0.0.1), generated videos and jobs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidtune.config import validate_job
from vidtune.data.videogen import VideoSpec, color_sequence, write_video

# S3 credentials come from the environment, as on a cluster; set before Ray starts so its workers inherit
# them (the moto server accepts any key).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from vidtune.cluster import local_cpus

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=local_cpus(), include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback; credentials through the environment, as on a real cluster."""
    port = _free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def bucket(s3_endpoint):
    import uuid

    import boto3

    name = f"vt-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


# Videos whose frames carry their index: (name, frames, keyframe interval, colours).
VIDEOS = [
    ("a.mp4", 90, 15, ("red", "blue")),
    ("b.mp4", 120, 30, ("green", "yellow")),
    ("c.mp4", 60, 10, ("blue", "red")),
]


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for name, frames, gop, colors in VIDEOS:
        write_video(
            root / name,
            VideoSpec(
                frames=frames,
                fps=30,
                width=160,
                height=120,
                keyframe_interval=gop,
                colors=color_sequence(colors),
            ),
        )
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    (root / "empty.mp4").write_bytes(b"")
    # Index first, then cut: opens fine, ends before its header says (a broken download).
    write_video(
        root / "whole.mp4",
        VideoSpec(frames=120, fps=30, width=160, height=120, keyframe_interval=30),
        faststart=True,
    )
    full = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(full[: len(full) // 2])
    return root


def llava_entry(i: str, video: str, answer: str = "red") -> dict:
    return {
        "id": i,
        "video": video,
        "conversations": [
            {"from": "human", "value": "<video>\nWhich colour comes first?"},
            {"from": "gpt", "value": answer},
        ],
    }


@pytest.fixture()
def make_job(tmp_path):
    """Build a validated job from sections; storage and MLflow live in the test's folder."""

    def make(**sections):
        raw = {
            "name": "t",
            "storage": {"root": str(tmp_path / "data")},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        }
        raw.update(sections)
        return validate_job(raw)

    return make
