"""Stage records: what a finished stage wrote, so ``vidtune run`` can skip work that is already done.

When a stage succeeds, ``stages/JOB/STAGE.json`` under ``storage.root`` records a fingerprint of its
config section, the MLflow run that made its output, the outputs it must leave behind, and the runs of
the stages before it in the job. ``vidtune run`` skips a stage when all of that still holds: the same
config, every output present and complete, and the same upstream runs (a re-run upstream stage means
new inputs, so everything after it runs again). ``--force`` runs every stage. Serving is never skipped:
its output is a live app.

Input files are not fingerprinted: after editing a manifest or a text file in place, use ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import asdict, dataclass, field

from vidtune.config import JobConfig
from vidtune.storage import Storage

NEVER_SKIPPED = frozenset({"serve"})


@dataclass
class StageRecord:
    stage: str
    job: str
    fingerprint: str
    run_id: str
    finished: float
    outputs: list[str] = field(default_factory=list)  # paths under storage.root
    upstream: dict[str, str] = field(default_factory=dict)  # earlier stage -> its record's run_id


def fingerprint(job: JobConfig, stage: str) -> str:
    """The stage's config section and where it writes, hashed: any edit to either changes it."""
    section = job.section(stage).model_dump(mode="json")
    blob = json.dumps({"section": section, "storage": job.storage.root}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def outputs(job: JobConfig, stage: str) -> list[str]:
    """What the stage leaves under ``storage.root`` (datasets and models); MLflow-only stages: none."""
    if stage in ("prepare", "synth"):
        return [f"datasets/{d.name}" for d in job.section(stage).datasets]
    if stage == "mix":
        return [f"datasets/{job.mix.name}"]
    if stage == "train":
        return [f"models/{job.train.output}"]
    return []


def _complete(storage: Storage, output: str) -> bool:
    """A dataset is complete when ``dataset.json`` and every shard it names exist; a model when its
    ``vidtune.json`` (written last) does."""
    if output.startswith("datasets/"):
        if not storage.exists(output, "dataset.json"):
            return False
        info = json.loads(storage.read_bytes(output, "dataset.json"))
        present = {posixpath.basename(p) for p in storage.list(output, "shards")}
        return all(posixpath.basename(s) in present for s in info["shards"])
    return storage.exists(output, "vidtune.json")


def _path(job: JobConfig, stage: str) -> tuple[str, ...]:
    return ("stages", job.name, f"{stage}.json")


def load(storage: Storage, job: JobConfig, stage: str) -> StageRecord | None:
    if not storage.exists(*_path(job, stage)):
        return None
    try:
        return StageRecord(**json.loads(storage.read_bytes(*_path(job, stage))))
    except (ValueError, TypeError):
        return None  # an unreadable record is no record: the stage runs


def upstream(storage: Storage, job: JobConfig, stage: str) -> dict[str, str]:
    """The runs that made the inputs of ``stage``: the records of the job's stages listed before it."""
    before = job.stages[: job.stages.index(stage)] if stage in job.stages else []
    out = {}
    for s in before:
        if s in NEVER_SKIPPED:
            continue
        rec = load(storage, job, s)
        out[s] = rec.run_id if rec else ""
    return out


def why_not_skip(storage: Storage, job: JobConfig, stage: str) -> tuple[StageRecord | None, str | None]:
    """The record that lets ``stage`` be skipped, or the reason it must run."""
    if stage in NEVER_SKIPPED:
        return None, "always runs"
    rec = load(storage, job, stage)
    if rec is None:
        return None, "no record of a finished run"
    if rec.fingerprint != fingerprint(job, stage):
        return None, "its config changed"
    missing = [o for o in rec.outputs if not _complete(storage, o)]
    if missing:
        return None, f"output missing or incomplete: {', '.join(missing)}"
    if rec.upstream != upstream(storage, job, stage):
        return None, "an earlier stage ran again"
    return rec, None


def record(storage: Storage, job: JobConfig, stage: str, run_id: str) -> StageRecord:
    """Write the record of a stage that just succeeded."""
    rec = StageRecord(
        stage=stage,
        job=job.name,
        fingerprint=fingerprint(job, stage),
        run_id=run_id,
        finished=time.time(),
        outputs=outputs(job, stage),
        upstream=upstream(storage, job, stage),
    )
    storage.write_bytes(json.dumps(asdict(rec), indent=2).encode(), *_path(job, stage))
    return rec
