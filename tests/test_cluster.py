"""A job submitted to a real two-node Ray cluster on 127.0.0.1, the way the README submits one.

The cluster: `ray start --head` with the dashboard (the CPU node: it advertises the `data` resource the
CPU worker group of clusters/ advertises) and a second `ray start --address` node (the stand-in for a
GPU node: CPUs, no `data`). Beside it: an `mlflow server` (sqlite) on 127.0.0.1 and a moto S3 server.
The submitter is a user's checkout: clusters/runtime-env.yaml with local values, the package, and a job
file. The README's `ray job submit` line, word for word, runs prepare, synth, mix, training on 2 workers
spread over both nodes with checkpoints on S3, and eval; one training worker is killed after the step-3
checkpoint. The job must still succeed: Ray Train replaces the worker, the run resumes from S3, and
MLflow's record holds every step once. Decoding and encoding must have run on the CPU node only. A
second submission finds every stage complete and skips it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml

from conftest import _free_port
from test_train_ray import kill_a_worker_after
from vidtune.config import StorageConfig
from vidtune.demo import write_demo_inputs, write_demo_text
from vidtune.storage import Storage, filesystem

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 12


def readme_submit_line() -> str:
    """The README's generic submission line (HEAD and NAME are the user's)."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("ray job submit --address http://HEAD:8265"):
            return line
    raise AssertionError("README.md has no `ray job submit --address http://HEAD:8265 ...` line")


def wait_for(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001  (not up yet)
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f}s")


def stop_group(proc: subprocess.Popen) -> None:
    """A `ray start --block` node: SIGTERM leaves gcs_server running (NOTES.md), so SIGKILL follows."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a sqlite store, serving artifacts over HTTP, as a cluster's would."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(root / "server.log", "wb"),  # noqa: SIM115  (lives as long as the server)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, "mlflow server")
    yield url
    stop_group(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes on loopback; yields the dashboard URL, the env for Ray's CLI, and both node ids."""
    logs = tmp_path_factory.mktemp("ray-nodes")
    gcs, dashboard = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this environment's
        # Ray 2.60's `ray start` turns token auth on; nodes and clients share this cluster's token.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for key in ("MLFLOW_TRACKING_URI", "VIDTUNE_STORAGE_ROOT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        env.pop(key, None)  # places come from the runtime env, as on a real cluster
    cpu_node = [
        "--head",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={_free_port()}",
        "--num-cpus=4",
        "--resources=" + json.dumps({"data": 1000}),  # as the CPU worker group in clusters/ advertises
    ]
    gpu_node = [f"--address=127.0.0.1:{gcs}", "--num-cpus=2"]
    # A temp dir per node, as separate machines have: nodes sharing one would share runtime_resources/,
    # and the second node unpacking the job's working_dir there pulls it from under the driver. Short
    # paths, because Ray's sockets live under it.
    temp = Path(tempfile.mkdtemp(prefix="vt", dir="/tmp"))
    url = f"http://127.0.0.1:{dashboard}"
    auth = {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
    nodes = []
    try:
        for name, args in (("head", cpu_node), ("second", gpu_node)):
            nodes.append(
                subprocess.Popen(
                    [
                        str(BIN / "ray"),
                        "start",
                        "--block",
                        "--node-ip-address=127.0.0.1",
                        f"--dashboard-agent-listen-port={_free_port()}",
                        "--disable-usage-stats",
                        f"--temp-dir={temp / name}",
                        *args,
                    ],
                    env=env,
                    stdout=open(logs / f"{name}.log", "wb"),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if name == "head":
                wait_for(
                    lambda: httpx.get(f"{url}/api/version", headers=auth).status_code == 200, "ray head", 90
                )
        wait_for(lambda: len(ray_list(url, env, "nodes")) == 2, "second ray node", 90)
        yield {"url": url, "env": env, "nodes": ray_list(url, env, "nodes")}
    finally:
        for proc in reversed(nodes):
            stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def ray_list(url: str, env: dict, what: str, *filters: str) -> list[dict]:
    """`ray list WHAT` through the state API, as JSON."""
    args = [
        str(BIN / "ray"),
        "list",
        what,
        "--address",
        url,
        "--format",
        "json",
        "--detail",
        "--limit",
        "10000",
    ]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out[out.index("[") :])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, s3_endpoint, mlflow_server):
    """A user's checkout: the package, clusters/runtime-env.yaml with this machine's places filled in,
    and a small job file whose inputs are on S3."""
    import boto3

    bucket = "vt-cluster"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("checkout")
    inputs = tmp_path_factory.mktemp("inputs")
    write_demo_inputs(inputs, videos=16)
    write_demo_text(inputs, documents=4)
    fs, _ = filesystem(f"s3://{bucket}", s3_endpoint)
    fs.put(str(inputs) + "/", f"{bucket}/inputs/", recursive=True)
    s3 = f"s3://{bucket}/inputs"

    shutil.copytree(
        REPO / "platform" / "vidtune",
        root / "platform" / "vidtune",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    spec = yaml.safe_load((REPO / "clusters" / "runtime-env.yaml").read_text())
    places = {
        "VIDTUNE_STORAGE_ROOT": f"s3://{bucket}/vidtune",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
    }
    assert set(spec["env_vars"]) == set(places)  # the file names exactly the places a cluster needs
    spec["env_vars"] = places
    (root / "clusters").mkdir()
    (root / "clusters" / "runtime-env.yaml").write_text(yaml.safe_dump(spec))
    job = {
        "name": "cluster-smoke",
        "stages": ["prepare", "synth", "mix", "train", "eval"],
        "ray": {"data_resources": {"data": 1}},
        "prepare": {
            "sampling": {"frames": 4},
            "max_pixels": 112 * 112,
            "datasets": [{"name": "colors", "manifest": f"{s3}/llava.json", "video_root": s3}],
        },
        "synth": {
            "render": {"width": 224, "height": 224, "font_size": 12, "margin": 8},
            "datasets": [{"name": "ferry", "input": f"{s3}/longqa.jsonl"}],
        },
        "mix": {"name": "smoke-mix", "sources": [{"dataset": "colors"}, {"dataset": "ferry"}]},
        "train": {
            "dataset": "smoke-mix",
            "model": "tiny",
            "output": "smoke-model",
            "register_as": "smoke-model",
            "num_workers": 2,
            "placement_strategy": "SPREAD",
            "steps": STEPS,
            "micro_batch": 2,
            "lr": 3e-3,
            "checkpoint_every": 3,
            "max_failures": 1,
        },
        "eval": {
            "models": [{"name": "after", "model": "models:/smoke-model/latest"}],
            "benchmarks": [
                {
                    "name": "colors-mc",
                    "format": "mc",
                    "annotations": f"{s3}/heldout-mc.jsonl",
                    "video_root": s3,
                }
            ],
            # Made on the driver from local haystacks; with S3 storage the videos go there for the decoders.
            "niavh": {
                "haystacks": [str(inputs / "videos" / "clip-000.mp4")],
                "needle": {
                    "text": "The secret word is LANTERN",
                    "answer": "LANTERN",
                    "distractors": ["ANCHOR", "BEACON", "HARBOR"],
                },
                "lengths": [4],
                "depths": 2,
            },
            "max_new_tokens": 4,
        },
    }
    (root / "jobs").mkdir()
    (root / "jobs" / "cluster-smoke.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return {"root": root, "bucket": bucket, "endpoint": s3_endpoint, "tracking": mlflow_server}


def submit(cluster: dict, checkout: dict) -> tuple[str, str]:
    """The README's line with this cluster's address and the job's name; returns (job id, output)."""
    line = readme_submit_line().replace("http://HEAD:8265", cluster["url"]).replace("NAME", "cluster-smoke")
    args = shlex.split(line)
    args[0] = str(BIN / "ray")
    proc = subprocess.run(
        args, cwd=checkout["root"], env=cluster["env"], capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    job_id = re.search(r"Job '([^']+)' submitted successfully", out)
    assert job_id, out[-3000:]
    return job_id.group(1), out


def job_status(cluster: dict, job_id: str) -> str:
    """The job's status from the Jobs REST API (what `ray job status` asks)."""
    auth = {"Authorization": f"Bearer {cluster['env']['RAY_AUTH_TOKEN']}"}
    return httpx.get(f"{cluster['url']}/api/jobs/{job_id}", headers=auth).json()["status"]


def test_submitted_job_spreads_training_survives_a_killed_worker_and_skips_when_complete(cluster, checkout):
    storage = Storage(
        StorageConfig(root=f"s3://{checkout['bucket']}/vidtune", endpoint_url=checkout["endpoint"])
    )
    stop = threading.Event()
    killer = threading.Thread(
        target=kill_a_worker_after,
        args=(storage, "cluster-smoke-smoke-model", '"step-00000003"', stop),
    )
    killer.start()
    try:
        job_id, out = submit(cluster, checkout)
    finally:
        stop.set()
        killer.join()
    assert job_status(cluster, job_id) == "SUCCEEDED", out[-5000:]

    logs = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", cluster["url"], job_id],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for stage in ("prepare", "synth", "mix", "train", "eval"):
        assert f"== {stage} done ==" in logs, stage
    assert "== pipeline 'cluster-smoke' done" in logs
    resumed = re.search(r"over steps (\d+)-(\d+) \(resumed at step (\d+)\)", logs)
    assert resumed and int(resumed.group(2)) == STEPS, logs[-4000:]  # the replaced worker resumed
    assert "2 workers on 2 node(s)" in logs

    # Placement: training spread over both nodes; decoding, rendering and encoding only on the CPU node.
    head = next(n["node_id"] for n in cluster["nodes"] if n["is_head_node"])
    ray_job = ray_list(cluster["url"], cluster["env"], "jobs", f"submission_id={job_id}")[0]["job_id"]
    tasks = ray_list(cluster["url"], cluster["env"], "tasks", f"job_id={ray_job}")
    # Decoding and rendering (BatchWorker actors) and encoding for training (encode_batch tasks); the
    # eval model's actors are not data work.
    data_tasks = [
        t for t in tasks if t["state"] == "FINISHED" and re.search(r"BatchWorker|encode_batch", t["name"])
    ]
    assert any("encode_batch" in t["name"] for t in data_tasks)
    placed = [t for t in data_tasks if t["node_id"]]  # task events may lack the node of a method call
    assert len(placed) >= 4 and {t["node_id"] for t in placed} == {head}, {t["name"] for t in placed}

    # The MLflow server holds the pipeline, a run per stage, the registered model and each step once.
    client = mlflow.MlflowClient(tracking_uri=checkout["tracking"], registry_uri=checkout["tracking"])
    exp = client.get_experiment_by_name("cluster-smoke")
    runs = client.search_runs([exp.experiment_id])
    stages = {r.data.tags.get("vidtune.stage"): r for r in runs}
    assert set(stages) == {None, "prepare", "synth", "mix", "train", "eval"}
    assert all(r.info.status == "FINISHED" for r in runs)
    train = stages["train"]
    assert [m.step for m in client.get_metric_history(train.info.run_id, "loss")] == list(range(1, STEPS + 1))
    assert train.data.tags["vidtune.worker_nodes"] == "2"
    workers = json.loads(Path(client.download_artifacts(train.info.run_id, "workers.json")).read_text())
    assert {w["node_id"] for w in workers} == {n["node_id"] for n in cluster["nodes"]}
    assert client.get_registered_model("smoke-model").latest_versions[0].version == "1"
    assert "after.colors-mc.accuracy" in stages["eval"].data.metrics
    assert "after.niavh.accuracy" in stages["eval"].data.metrics
    assert any(p.endswith(".mp4") for d in storage.list("niavh") for p in storage.fs.ls(d))
    assert storage.exists("models", "smoke-model", "vidtune.json")

    # The same submission again: every stage's output is complete in S3, so nothing runs twice.
    again, out = submit(cluster, checkout)
    assert job_status(cluster, again) == "SUCCEEDED", out[-3000:]
    assert "ran nothing; skipped prepare, synth, mix, train, eval (complete)" in out
