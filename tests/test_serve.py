"""The Serve app over real HTTP on 127.0.0.1: a tiny Qwen2-VL trained on 12 generated videos ("which
colour comes first?") is served on a local Ray; the openai client, httpx and curl-style raw requests
check answers, streaming, batching, usage counts, auth, load shedding and every bad-input error."""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from vidtune.config import SamplingConfig
from vidtune.data.decode import make_reader
from vidtune.data.videogen import COLORS, VideoSpec, color_sequence, write_video
from vidtune.models.family import collate, get_family

pytestmark = pytest.mark.slow

QUESTION = "Which colour comes first?"
PAIRS = [(a, b) for a in COLORS for b in COLORS if a != b]
SAMPLING = SamplingConfig(strategy="uniform", frames=8)
MAX_PIXELS = 112 * 112
KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def video_body(url: str, **extra) -> dict:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": url}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def train_tiny(root: Path, videos: dict[tuple[str, str], Path]) -> Path:
    """A tiny Qwen2-VL that learned the first colour of each video, from frames decoded as the server
    decodes them; saved with the settings the server reads."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("qwen2-vl")
    names = list(COLORS)
    path = family.build_tiny(root / "model", [f"{QUESTION} {a} {b}" for a in names for b in names] * 5)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    reader = make_reader("pyav")
    samples = [
        family.encode(
            processor,
            reader.read(str(v), SAMPLING, MAX_PIXELS).frames,
            [{"role": "user", "content": f"<video>\n{QUESTION}"}, {"role": "assistant", "content": a}],
        )
        for (a, _), v in videos.items()
    ]
    torch.manual_seed(0)
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        model(**collate(rng.sample(samples, 8), processor.tokenizer.pad_token_id)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    settings = {"family": "qwen2-vl", "sampling": SAMPLING.model_dump(), "max_pixels": MAX_PIXELS}
    (path / "vidtune.json").write_text(json.dumps(settings))
    return path


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    """Two apps on one Serve: ``/`` (batching up to 8, tight media limits) and ``/strict`` (an API key,
    one request at a time, one queued)."""
    from ray import serve

    from vidtune.serving.app import AppArgs, application, resolve, start

    root = tmp_path_factory.mktemp("serve")
    media = root / "media"
    media.mkdir()
    videos = {}
    for a, b in PAIRS:
        videos[(a, b)] = media / f"{a}-{b}.mp4"
        spec = VideoSpec(frames=48, fps=30, width=160, height=120, colors=color_sequence((a, b)))
        write_video(videos[(a, b)], spec)
    write_video(media / "long.mp4", VideoSpec(frames=150, fps=30, width=64, height=48))  # 5 s
    (media / "big.mp4").write_bytes(os.urandom(int(1.2 * 2**20)))
    (media / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    (root / "outside.mp4").write_bytes(videos[PAIRS[0]].read_bytes())
    (media / "link.mp4").symlink_to(root / "outside.mp4")
    model = train_tiny(root, videos)

    port = _free_port()
    cpus = {"num_cpus": 0.25}
    common = dict(model=str(model), port=port, ray_actor_options=cpus, ingress_actor_options=cpus)
    main = resolve(
        AppArgs(
            **common,
            allowed_roots=[str(media)],
            max_batch_size=8,
            batch_wait_s=0.2,
            max_video_mb=1,
            max_duration_s=3,
            fetch_timeout_s=1,
            max_frames=16,
        )
    )
    url = start(main)
    os.environ["VIDTUNE_TEST_KEY"] = KEY
    strict = resolve(
        AppArgs(
            **common,
            app_name="strict",
            route_prefix="/strict",
            api_key_env="VIDTUNE_TEST_KEY",
            allowed_schemes=["data"],
            max_batch_size=1,
            max_ongoing_requests=1,
            max_queued_requests=1,
        )
    )
    serve.run(application(strict), name="strict", route_prefix="/strict", blocking=False)
    yield {
        "url": url,
        "strict": f"{url}/strict",
        "media": media,
        "root": root,
        "videos": videos,
        "model": model,
    }
    serve.delete("strict")
    serve.delete("vidtune")


def direct_answer(model_path: Path, video: Path) -> tuple[str, int]:
    """The model's greedy answer and prompt length without the server: what the server must agree with."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family = get_family("qwen2-vl")
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    frames = make_reader("pyav").read(str(video), SAMPLING, MAX_PIXELS).frames
    question = [{"role": "user", "content": f"<video>\n{QUESTION}"}]
    inputs = family.encode(processor, frames, question, labels=None, add_generation_prompt=True)
    return family.generate(model, processor, frames, question, 4), int(inputs["input_ids"].shape[0])


def test_openai_client_gets_the_answer_for_a_video_data_url(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served['url']}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["model"]
    right = 0
    for (first, _), video in list(served["videos"].items())[:6]:
        out = client.chat.completions.create(model="model", **video_body(data_url(video)))
        right += out.choices[0].message.content.strip() == first
    assert right >= 5  # the model learned the first colour; chance is 1 in 4

    video = served["videos"][PAIRS[0]]
    out = client.chat.completions.create(model="model", **video_body(data_url(video)))
    expected, prompt_tokens = direct_answer(served["model"], video)
    assert out.choices[0].message.content.strip() == expected
    assert out.choices[0].finish_reason == "stop"
    # Usage counts every token the model read: the visual tokens of the 8 frames besides the text.
    assert out.usage.prompt_tokens == prompt_tokens and prompt_tokens > 40
    assert 1 <= out.usage.completion_tokens <= 4
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_local_path_images_and_text_only_requests(served):
    media, (first, _) = served["media"], PAIRS[3]
    video = served["videos"][PAIRS[3]]
    by_path = httpx.post(f"{served['url']}/v1/chat/completions", json=video_body(video.name), timeout=60)
    assert by_path.status_code == 200 and by_path.json()["choices"][0]["message"]["content"].strip() == first

    # The same clip sent as 8 images: frames of a clip, in order.
    import io

    from PIL import Image

    frames = make_reader("pyav").read(str(media / video.name), SAMPLING, MAX_PIXELS).frames
    parts = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        parts.append({"type": "image_url", "image_url": {"url": url}})
    body = video_body("x")
    body["messages"][0]["content"] = parts + [{"type": "text", "text": QUESTION}]
    images = httpx.post(f"{served['url']}/v1/chat/completions", json=body, timeout=60)
    assert images.status_code == 200 and images.json()["choices"][0]["message"]["content"].strip() == first

    text_only = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "temperature": 0}
    r = httpx.post(f"{served['url']}/v1/chat/completions", json=text_only, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_streaming_gives_the_same_answer_in_chunks_then_done(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served['url']}/v1", api_key="unused")
    body = video_body(data_url(served["videos"][PAIRS[5]]), max_tokens=6, model="model")
    whole = client.chat.completions.create(**body).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **body))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1

    with httpx.stream("POST", f"{served['url']}/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_concurrent_requests_are_batched_and_all_answered(served):
    url = f"{served['url']}/v1/chat/completions"
    before = httpx.get(f"{served['url']}/stats").json()["batch_sizes"]
    items = list(served["videos"].items()) + list(served["videos"].items())[:4]  # 16 requests
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(lambda kv: httpx.post(url, json=video_body(kv[1].name), timeout=120), items)
        )
    assert [r.status_code for r in responses] == [200] * 16
    answers = [r.json()["choices"][0]["message"]["content"].strip() for r in responses]
    assert sum(a == first for a, ((first, _), _) in zip(answers, items, strict=True)) >= 13
    after = httpx.get(f"{served['url']}/stats").json()["batch_sizes"]
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert sum(size * n for size, n in new.items()) == 16
    assert max(new) >= 4, new  # 16 requests within the 0.2 s window share generate calls


def test_bad_inputs_get_their_status_and_an_openai_error_body(served):
    url, media = f"{served['url']}/v1/chat/completions", served["media"]
    silent = socket.socket()  # accepts connections, never answers: the fetch must time out
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    hang = f"http://127.0.0.1:{silent.getsockname()[1]}/video.mp4"
    empty_video = media / "empty.mp4"
    empty_video.write_bytes(b"")
    part = "messages[0].content[0]"
    cases = [
        (video_body(data_url(media / "corrupt.mp4")), 400, "invalid_video", part),
        (video_body(empty_video.name), 400, "empty_media", part),
        (video_body("data:video/mp4;base64,"), 400, "empty_media", part),
        (video_body("data:video/mp4;base64,@@not-base64@@"), 400, None, part),
        (video_body("big.mp4"), 413, "too_large", part),
        (video_body("long.mp4"), 413, "too_long", part),
        (video_body("/etc/hostname"), 403, "forbidden_path", part),
        (video_body("../outside.mp4"), 403, "forbidden_path", part),
        (video_body(f"file://{media}/../outside.mp4"), 403, "forbidden_path", part),
        (video_body("link.mp4"), 403, "forbidden_path", part),
        (video_body("ftp://example.com/v.mp4"), 403, "forbidden_scheme", part),
        (video_body(hang), 400, "fetch_failed", part),
        (video_body(f"http://127.0.0.1:{_free_port()}/v.mp4"), 400, "fetch_failed", part),
        (video_body("missing.mp4"), 400, "fetch_failed", part),
        (video_body("a.mp4", frames=17), 400, None, "frames"),
        (video_body("a.mp4", max_tokens=5000), 400, None, "max_tokens"),
        (video_body("a.mp4", model="someone-else"), 404, "model_not_found", "model"),
        ({"messages": [{"role": "user"}]}, 422, None, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 422, None, "temperature"),
        ({"messages": []}, 422, None, "messages"),
    ]
    try:
        for body, status, code, param in cases:
            r = httpx.post(url, json=body, timeout=30)
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error", r.text
            assert error["param"] == param and (code is None or error["code"] == code), r.text
        assert (
            "timed out after 1s"
            in httpx.post(url, json=video_body(hang), timeout=30).json()["error"]["message"]
        )
    finally:
        silent.close()
    bad_json = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    # After all of it the server still answers.
    ok = httpx.post(url, json=video_body(served["videos"][PAIRS[0]].name), timeout=60)
    assert ok.status_code == 200


def test_api_key_is_required_when_configured(served):
    url = f"{served['strict']}/v1/chat/completions"
    body = video_body(data_url(served["videos"][PAIRS[0]]))
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{served['strict']}/v1/models").status_code == 401
    right = httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert right.status_code == 200
    # This app allows data: URLs only: a local path is a forbidden scheme here, even inside a root.
    path = httpx.post(url, json=video_body("a.mp4"), headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert path.status_code == 403 and path.json()["error"]["code"] == "forbidden_scheme"


def test_a_saturated_replica_answers_503_instead_of_queueing(served):
    """``/strict`` takes one request at a time and queues one: a burst of 12 gets 503s, fast."""
    url = f"{served['strict']}/v1/chat/completions"
    body = video_body(data_url(served["videos"][PAIRS[0]]), max_tokens=4)
    headers = {"Authorization": f"Bearer {KEY}"}
    barrier = threading.Barrier(12)

    def post(_):
        barrier.wait()
        return httpx.post(url, json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(12) as pool:
        codes = [r.status_code for r in pool.map(post, range(12))]
    assert set(codes) <= {200, 503} and codes.count(503) >= 4 and codes.count(200) >= 1, codes


def test_serve_stage_pins_the_latest_registered_version_and_records_it(served, make_job, tmp_path):
    """``vidtune serve`` on ``models:/NAME/latest``: the replica downloads the pinned version from the
    registry, the example request is answered over HTTP, and the MLflow run says what was served."""
    import mlflow

    from vidtune.stages import run_stage
    from vidtune.train.stage import register

    job = make_job(
        serve={
            "model": "models:/colours/latest",
            "port": served["url"].rsplit(":", 1)[1].split("/")[0],
            "app_name": "stage",
            "route_prefix": "/stage",
            "ray_actor_options": {"num_cpus": 0.25},
            "ingress_actor_options": {"num_cpus": 0.25},
            "allowed_roots": [str(served["media"])],
            "block": False,
            "example": {"video": str(served["videos"][PAIRS[7]]), "question": QUESTION, "max_tokens": 4},
        }
    )
    mlflow.set_tracking_uri(job.tracking.uri)
    mlflow.set_experiment("registry")
    for _ in range(2):  # versions 1 and 2: latest is 2
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(served["model"]), "model")
            register("colours", run.info.run_id)

    printed = []
    result = run_stage(job, "serve", echo=printed.append)
    assert result.version == "2" and result.model == "models:/colours/2"
    assert result.example["answer"].strip() == PAIRS[7][0]
    assert result.curl.startswith(f"curl -s {served['url']}/stage/v1/chat/completions")
    assert "answer: " in printed[0] and "curl -s" in printed[0]

    run = mlflow.search_runs(experiment_names=["t"], output_format="list")[0]
    assert run.data.params["model_version"] == "2" and run.data.params["model_uri"] == "models:/colours/2"
    assert run.data.tags["vidtune.serves"] == "models:/colours/2"
    assert run.data.metrics["example_prompt_tokens"] > 40
    # The stage took its app down when it returned (not blocking): the route is gone.
    assert httpx.get(f"{served['url']}/stage/healthz").status_code == 404


def test_replica_runner_and_endpoint_runner_give_the_same_answers(served):
    """``vidtune eval``'s two runners on one model: Ray Data actors holding the model, and the OpenAI
    endpoint fed the stored frames; the same clips must get the same answers."""
    import ray

    from vidtune.data.pipelines import encode_jpeg
    from vidtune.eval.runner import run_endpoint, run_replicas

    rows = []
    for (first, second), video in list(served["videos"].items())[:8]:
        frames = make_reader("pyav").read(str(video), SAMPLING, MAX_PIXELS).frames
        rows.append(
            {
                "id": f"{first}-{second}",
                "frames": [encode_jpeg(f, 90) for f in frames],
                "messages": [
                    {"role": "user", "content": f"<video>\n{QUESTION}"},
                    {"role": "assistant", "content": first},
                ],
            }
        )
    local = run_replicas(
        ray.data.from_items(rows), str(served["model"]), num_cpus=0.25, batch_size=4, max_new_tokens=4
    )
    remote = run_endpoint(rows, f"{served['url']}/v1", model="model", concurrency=4, max_new_tokens=4)
    assert local == remote and len(local) == 8
    assert sum(local[r["id"]].strip() == r["messages"][1]["content"] for r in rows) >= 6


def test_eval_stage_grades_a_local_model_and_its_endpoint_alike(served, make_job, tmp_path):
    """``vidtune eval`` on a multiple-choice set in the generic JSONL format and a small NIAVH grid, for
    the model loaded by Ray Data actors and for the same model behind its endpoint: same scores, tables
    printed, per-item outputs and the heatmaps in MLflow."""
    import mlflow

    from vidtune.stages import run_stage

    names = list(COLORS)
    mc = tmp_path / "mc.jsonl"
    lines = [
        {
            "id": f"{a}-{b}",
            "video": v.name,
            "question": QUESTION,
            "options": names,
            "answer": a,
            "category": a,
        }
        for (a, b), v in list(served["videos"].items())[:6]
    ]
    lines[0].update(start=0.5, end=1.0)  # a segment, as MVBench gives: frames 15-29 of the 48
    mc.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "broken"\n')
    job = make_job(
        eval={
            "models": [
                {"name": "local", "model": str(served["model"])},
                {"name": "endpoint", "endpoint": f"{served['url']}/v1", "served_model": "model"},
            ],
            "benchmarks": [
                {
                    "name": "colours-mc",
                    "format": "mc",
                    "annotations": str(mc),
                    "video_root": str(served["media"]),
                }
            ],
            "niavh": {
                "haystacks": [str(v) for v in list(served["videos"].values())[:2]],
                "needle": {
                    "text": "The secret word is LANTERN",
                    "answer": "LANTERN",
                    "distractors": ["ANCHOR", "BEACON"],
                },
                "lengths": [2, 3],
                "depths": 2,
            },
            "num_cpus": 0.25,
            "batch_size": 4,
            "max_new_tokens": 6,
        }
    )
    printed = []
    result = run_stage(job, "eval", echo=printed.append)
    local, endpoint = result.scores["local"], result.scores["endpoint"]
    for suite in ("colours-mc", "niavh"):
        assert local[suite].rows() == endpoint[suite].rows()
    assert local["colours-mc"].total == 6 and local["niavh"].total == 4  # 2 lengths x 2 depths
    assert result.suites[0].skipped and "mc.jsonl:7" in result.suites[0].skipped[0][0]
    assert "colours-mc: 6 items, 1 rows skipped" in printed[0] and "depth=100%" in printed[0]

    from vidtune.data.shards import read_dataset
    from vidtune.storage import Storage

    clips = {
        r["id"]: json.loads(r["meta"]) for r in read_dataset(Storage(job.storage), "colours-mc").take_all()
    }
    segment = clips[lines[0]["id"]]
    assert segment["segment"] == [0.5, 1.0] and all(15 <= i < 30 for i in segment["frame_indices"])
    assert max(clips[lines[1]["id"]]["frame_indices"]) > 30  # the others sample the whole video

    run = mlflow.search_runs(experiment_names=["t"], output_format="list")[0]
    assert run.data.metrics["local.colours-mc.accuracy"] == local["colours-mc"].accuracy
    assert "endpoint.niavh.niavh.length.2s.accuracy" in run.data.metrics
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)}
    assert {"niavh-local.png", "niavh-endpoint.png", "skipped-colours-mc.json"} <= artifacts
    results = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/results/local-colours-mc.json")
    assert {r["id"] for r in results} == {r["id"] for r in lines} and all("output" in r for r in results)
