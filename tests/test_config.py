"""Job files: validation names the key path and the reason; --set overrides any key."""

import subprocess
import sys

import pytest

from vidtune.config import JobFileError, load_job

GOOD = """
name: demo
stages: [prepare]
prepare:
  sampling: {frames: 8}
  datasets:
    - {name: a, manifest: m.json}
"""


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    job = load_job(
        write(tmp_path, GOOD),
        [
            "prepare.sampling.frames=16",
            "storage.root=s3://b/x",
            "prepare.datasets.0.video_root=/videos",
            "ray.num_cpus=6",
        ],
    )
    assert job.prepare.sampling.frames == 16
    assert job.prepare.sampling.strategy == "uniform"
    assert job.storage.root == "s3://b/x"
    assert job.prepare.datasets[0].video_root == "/videos"
    assert job.tracking.uri == "sqlite:///mlflow.db"
    assert job.experiment == "demo"
    assert job.ray.num_cpus == 6


@pytest.mark.parametrize(
    ("text", "overrides", "key", "words"),
    [
        (GOOD.replace("frames: 8", "frames: -1"), [], "prepare.sampling.frames", "greater than 0"),
        (GOOD.replace("frames: 8", "frame: 8"), [], "prepare.sampling.frame", "unknown key"),
        (GOOD, ["prepare.sampling.strategy=random"], "prepare.sampling.strategy", "'uniform' or 'fps'"),
        (GOOD, ["prepare.datasets.0.name=bad name"], "prepare.datasets[0].name", "pattern"),
        (GOOD.replace("stages: [prepare]", "stages: [prepare, mix]"), [], "", "no section"),
        (GOOD + "mix: {name: m, sources: [{dataset: a, ratio: 0.5}]}\n", [], "mix", "mix.total"),
        ("name: x\nprepare: [\n", [], "line", "not valid YAML"),
    ],
)
def test_invalid_job_names_key_and_reason(tmp_path, text, overrides, key, words):
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, text), overrides)
    message = str(err.value)
    assert any(k.startswith(key) for k, _ in err.value.problems), message
    assert words in message


def test_cli_rejects_invalid_job_before_any_work(tmp_path):
    """Exit code 2 and the key path on stderr, without starting Ray or MLflow."""
    job = write(tmp_path, GOOD.replace("frames: 8", "frames: zero"))
    proc = subprocess.run(
        [sys.executable, "-m", "vidtune", "prepare", str(job)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "prepare.sampling.frames" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "vidtune-data").exists()


def test_shipped_job_files_validate():
    """Every job file in jobs/ loads and validates as it ships (a paper recipe must not rot)."""
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))
    assert len(files) >= 2
    for path in files:
        job = load_job(str(path))
        assert job.stages and all(job.section(s) is not None for s in job.stages), path.name
    paper = load_job(str(Path(__file__).parent.parent / "jobs" / "paper-qwen2vl-7b.yaml"))
    t = paper.train
    assert t.micro_batch * t.grad_accum * t.num_workers == 64 and t.lr == 5e-6 and t.zero_stage == 3
    assert (paper.mix.sources[0].count, paper.prepare.sampling.frames) == (20000, 24)


def test_shipped_serve_configs_are_what_serve_and_the_app_accept():
    """``serve/*.yaml`` parse as Ray Serve config files, point at the app builder, and their ``args``
    are valid app arguments (a misspelt key would fail the deploy on the cluster, not here)."""
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from vidtune.serving.app import AppArgs, build_app

    files = sorted((Path(__file__).parent.parent / "serve").glob("*.yaml"))
    assert {f.name for f in files} >= {"demo.yaml", "gpu.yaml"}
    for path in files:
        config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
        for app in config.applications:
            module, _, attr = app.import_path.partition(":")
            assert getattr(importlib.import_module(module), attr) is build_app
            args = AppArgs(**app.args)
            assert args.model.startswith("models:/")
    gpu_config = ServeDeploySchema.model_validate(yaml.safe_load(files[1].read_text()))
    gpu = AppArgs(**gpu_config.applications[0].args)
    assert gpu.ray_actor_options["num_gpus"] == 1 and "file" not in gpu.allowed_schemes and gpu.api_key_env
