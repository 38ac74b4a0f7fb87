"""MLflow tracking: one experiment per job, one run per stage, nested under a pipeline run.

Stages talk to :class:`StageRun` only, so what every stage records (its config, counts, throughput,
pictures and artifacts) looks the same in the MLflow UI.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml

from vidtune.config import JobConfig


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists of sections get their index (``datasets.0.name``)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = tree
    return out


class StageRun:
    """A live MLflow run for one stage."""

    def __init__(self, run: mlflow.ActiveRun, job: JobConfig):
        self.run = run
        self.job = job

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def url(self) -> str:
        """Where to look: the run's page when tracking is a server, else how to open the UI."""
        uri = mlflow.get_tracking_uri()
        exp = self.run.info.experiment_id
        if uri.startswith("http"):
            return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{self.run_id}"
        return f"experiment '{self.job.experiment}', run {self.run_id} (mlflow ui --backend-store-uri {uri})"

    def params(self, values: dict[str, Any]) -> None:
        # MLflow caps a param value at 6000 characters; long lists go to the job.yaml artifact instead.
        clean = {k: (str(v)[:500] if v is not None else "None") for k, v in values.items()}
        mlflow.log_params(clean)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def image(self, image: Any, name: str) -> None:
        mlflow.log_image(image, artifact_file=name)

    def figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure as a PNG artifact (plots a person would rather look at than read)."""
        mlflow.log_figure(figure, name)

    def json(self, data: Any, name: str) -> None:
        mlflow.log_dict(data, name)

    def text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)

    def file(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def folder(self, path: str | Path, artifact_path: str) -> None:
        """A folder's contents as the artifact folder ``artifact_path`` (a saved model, say)."""
        mlflow.log_artifacts(str(path), artifact_path)

    def artifact_bytes(self, data: bytes, name: str) -> None:
        """A file made in memory (a rendered PNG) as artifact ``name`` (``dir/file.ext``)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            path.write_bytes(data)
            mlflow.log_artifact(str(path), str(Path(name).parent) if "/" in name else None)

    def table(self, rows: list[dict[str, Any]], name: str) -> None:
        """A small table (errors, composition) as JSON that the MLflow UI shows as a table."""
        if rows:
            cols = {k: [r.get(k) for r in rows] for k in rows[0]}
            mlflow.log_table(cols, artifact_file=name)
        else:
            mlflow.log_dict([], name)

    def tags(self, values: dict[str, str]) -> None:
        mlflow.set_tags(values)


def absolute_tracking_uri(uri: str) -> str:
    """Workers run elsewhere (another directory, another node): a relative sqlite path must not move."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def configure(job: JobConfig) -> None:
    mlflow.set_tracking_uri(job.tracking.uri)
    mlflow.set_experiment(job.experiment)


@contextmanager
def stage_run(job: JobConfig, stage: str) -> Iterator[StageRun]:
    """Open the stage's run (nested when a pipeline run is active) with its config logged."""
    configure(job)
    nested = mlflow.active_run() is not None
    tags = {"vidtune.stage": stage, "vidtune.job": job.name}
    with mlflow.start_run(run_name=stage, nested=nested, tags=tags) as run:
        tracker = StageRun(run, job)
        section = job.section(stage)
        tracker.params(flatten(section.model_dump(mode="json"), f"{stage}."))
        tracker.params({"storage.root": job.storage.root})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "job.yaml"
            path.write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
            tracker.file(path)
        yield tracker


@contextmanager
def pipeline_run(job: JobConfig) -> Iterator[StageRun]:
    """The parent run of ``vidtune run``: each stage's run nests under it."""
    configure(job)
    with mlflow.start_run(run_name=f"{job.name} pipeline", tags={"vidtune.job": job.name}) as run:
        tracker = StageRun(run, job)
        tracker.params({"stages": json.dumps(job.stages), "storage.root": job.storage.root})
        yield tracker


def skipped_run(job: JobConfig, stage: str, made_by: str, reason: str) -> None:
    """A nested run that says the stage was skipped and which run made its output, so the pipeline's
    page in the MLflow UI still lists every stage."""
    configure(job)
    tags = {
        "vidtune.stage": stage,
        "vidtune.job": job.name,
        "vidtune.skipped": "true",
        "vidtune.output_of": made_by,
    }
    with mlflow.start_run(run_name=f"{stage} (skipped)", nested=True, tags=tags):
        mlflow.set_tag("mlflow.note.content", reason)
