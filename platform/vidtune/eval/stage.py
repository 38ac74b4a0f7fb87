"""The eval stage (``vidtune eval JOB.yaml``): benchmarks and Needle-in-a-Video-Haystack for each model.

1. Each benchmark is read from its release format; the NIAVH grid is generated from the haystacks.
2. Their videos are decoded once into eval clips on Ray Data, the same pipeline as ``prepare``, with the
   frame sampling the (first) model was trained with; each clip asks the paper's multiple-choice prompt.
3. Each model answers every clip: Ray Data actors holding it, or its OpenAI-compatible endpoint.
4. Answers become letters (:func:`extract_choice`); accuracy overall and per category is printed,
   logged to MLflow as metrics, and saved with every item's raw output; NIAVH adds a heatmap per model.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidtune.config import EvalConfig, JobConfig
from vidtune.eval.benchmarks import EvalItem
from vidtune.storage import Storage, is_remote

STAGE = "eval"


@dataclass
class Suite:
    """One benchmark's items (or the NIAVH grid's) and the rows its loader skipped."""

    name: str
    items: list[EvalItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    decode_errors: int = 0


@dataclass
class EvalResult:
    suites: list[Suite]
    scores: dict[str, dict[str, Any]]  # model -> suite -> ScoreTable
    niavh: dict[str, list[dict[str, Any]]]  # model -> [{length_s, depth, right}]
    models: list[str]


def _settings(cfg: EvalConfig, job: JobConfig) -> tuple[dict[str, Any], int]:
    """The frame sampling and pixel budget: the section's, else the first local model's vidtune.json."""
    from vidtune.serving.engine import ModelSettings, fetch_model
    from vidtune.tracking import absolute_tracking_uri

    if cfg.sampling is not None and cfg.max_pixels is not None:
        return cfg.sampling.model_dump(), cfg.max_pixels
    local = next((m for m in cfg.models if m.model), None)
    if local is None:
        raise ValueError("eval.sampling and eval.max_pixels are needed when every model is an endpoint")
    import mlflow

    uri = absolute_tracking_uri(mlflow.get_tracking_uri())
    folder = fetch_model(local.model, uri, job.storage.endpoint_url, weights=False)
    s = ModelSettings.read(folder)
    sampling = cfg.sampling.model_dump() if cfg.sampling else s.sampling.model_dump()
    return sampling, cfg.max_pixels or s.max_pixels


def local_annotations(uri: str, work: Path, endpoint_url: str | None) -> str:
    """Annotations on S3 (a file, or MVBench's folder of JSON files) copied beside the driver: they are
    small, and the loaders read them as files. Videos stay where they are and are read by the decoders."""
    from vidtune.storage import filesystem

    if not is_remote(uri):
        return uri
    fs, path = filesystem(uri, endpoint_url)
    dst = work / "annotations" / uuid.uuid4().hex[:8] / posixpath.basename(path.rstrip("/"))
    dst.parent.mkdir(parents=True)
    fs.get(path.rstrip("/"), str(dst), recursive=fs.isdir(path))
    return str(dst)


def load_suites(cfg: EvalConfig, work: Path, endpoint_url: str | None = None) -> list[Suite]:
    from vidtune.eval.benchmarks import load_benchmark

    suites = []
    for b in cfg.benchmarks:
        annotations = local_annotations(b.annotations, work, endpoint_url)
        kwargs: dict[str, Any] = {"video_root": b.video_root}
        if b.format == "video-mme":
            kwargs["annotations"] = annotations
        elif b.format == "mvbench":
            kwargs = {"json_dir": annotations, "video_roots": b.video_roots, "tasks": b.tasks}
        elif b.format == "tempcompass":
            kwargs["json_path"] = annotations
        else:
            kwargs["path"] = annotations
        items, skipped = load_benchmark(b.format, **kwargs)
        suites.append(Suite(b.name, items[: b.limit] if b.limit else items, skipped))
    return suites


def niavh_suite(cfg: EvalConfig, work: Path, storage: Storage) -> Suite:
    """The NIAVH grid as an eval suite. The videos are generated here, on the driver; with storage on S3
    they are uploaded there, since the decoding tasks run on other nodes."""
    from vidtune.eval.niavh import Needle, depths_grid, generate_grid

    n = cfg.niavh
    needle = Needle(**{**n.needle.model_dump(), "distractors": tuple(n.needle.distractors)})
    grid = generate_grid(
        n.haystacks,
        needle,
        n.lengths,
        depths_grid(n.depths),
        work / n.name,
        seed=n.seed,
        max_pixels=n.max_pixels,
    )
    videos = {g.video: g.video for g in grid}
    if is_remote(storage.root):
        target = ("niavh", uuid.uuid4().hex[:8])
        for local in videos:
            storage.fs.put(local, storage.path(*target, Path(local).name))
            videos[local] = storage.uri(*target, Path(local).name)
    items = [
        EvalItem(
            id=g.id,
            benchmark="niavh",
            video=videos[g.video],
            question=g.question,
            options=g.options,
            answer=g.answer_letter,
            categories={"length": f"{g.length_s:g}s", "depth": f"{g.depth:.0%}"},
        )
        for g in grid
    ]
    return Suite(n.name, items)


def prepare_suite(
    suite: Suite, storage: Storage, sampling: dict[str, Any], max_pixels: int, cfg: EvalConfig
) -> Any:
    """Decode the suite's videos into eval clips (``datasets/NAME``) on Ray Data, each asking the paper's
    multiple-choice prompt with the answer letter as the reference."""
    from vidtune.config import PrepareConfig
    from vidtune.data.pipelines import decode_videos, map_to_shards
    from vidtune.data.schema import PLACEHOLDER
    from vidtune.data.shards import commit
    from vidtune.eval.scoring import mc_prompt

    records = [
        {
            "id": it.id,
            "video": it.video,
            "origin": it.video,
            "start": it.start,
            "end": it.end,
            "messages": json.dumps(
                [
                    {"role": "user", "content": f"{PLACEHOLDER}\n{mc_prompt(it.question, it.options)}"},
                    {"role": "assistant", "content": it.answer},
                ]
            ),
        }
        for it in suite.items
    ]
    decode = PrepareConfig(
        datasets=[{"name": suite.name, "manifest": "-"}], batch_size=cfg.decode_batch_size, rows_per_shard=256
    )
    staged, staging = map_to_shards(
        storage,
        suite.name,
        records,
        decode_videos,
        {
            "sampling": sampling,
            "max_pixels": max_pixels,
            "jpeg_quality": 95,
            "backend": "auto",
            "endpoint_url": storage.endpoint_url,
            "source": suite.name,
        },
        decode,
    )
    info = commit(
        storage,
        suite.name,
        staged,
        stage=STAGE,
        staging=staging,
        stats={"items": len(records)},
        config={"sampling": sampling, "max_pixels": max_pixels, "eval": True},
    )
    suite.decode_errors = info.errors
    return info


def answer(
    model_cfg: Any,
    suite: Suite,
    storage: Storage,
    cfg: EvalConfig,
    tracking_uri: str,
    endpoint_url: str | None,
) -> dict[str, str]:
    from vidtune.data.shards import read_dataset
    from vidtune.eval.runner import run_endpoint, run_replicas

    ds = read_dataset(storage, suite.name, columns=["id", "frames", "messages"])
    if model_cfg.endpoint:
        key = os.environ.get(model_cfg.api_key_env) if model_cfg.api_key_env else None
        return run_endpoint(
            ds.take_all(),
            model_cfg.endpoint,
            model=model_cfg.served_model,
            api_key=key,
            concurrency=cfg.concurrency,
            max_new_tokens=cfg.max_new_tokens,
        )
    from vidtune.serving.engine import fetch_model

    folder = fetch_model(model_cfg.model, tracking_uri, endpoint_url)
    return run_replicas(
        ds,
        str(folder),
        replicas=cfg.replicas,
        num_gpus=cfg.num_gpus,
        num_cpus=cfg.num_cpus,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
    )


def eval_stage(job: JobConfig, tracker: Any) -> EvalResult:
    import mlflow

    from vidtune.cluster import ensure_ray
    from vidtune.eval.niavh import heatmap
    from vidtune.eval.scoring import extract_choice, score
    from vidtune.tracking import absolute_tracking_uri

    cfg: EvalConfig = job.section(STAGE)
    storage = Storage(job.storage)
    ensure_ray(job.ray)
    tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
    sampling, max_pixels = _settings(cfg, job)
    work = Path(tempfile.mkdtemp(prefix="vidtune-eval-"))
    suites = load_suites(cfg, work, job.storage.endpoint_url)
    if cfg.niavh is not None:
        suites.append(niavh_suite(cfg, work, storage))
    for suite in suites:
        prepare_suite(suite, storage, sampling, max_pixels, cfg)
        if suite.skipped:
            tracker.json([{"where": w, "reason": r} for w, r in suite.skipped], f"skipped-{suite.name}.json")
    tracker.metrics({f"{s.name}.items": len(s.items) for s in suites})

    scores: dict[str, dict[str, Any]] = {}
    niavh: dict[str, list[dict[str, Any]]] = {}
    for m in cfg.models:
        scores[m.name] = {}
        if m.model:
            from vidtune.serving.engine import resolve_model

            tracker.params({f"model.{m.name}": resolve_model(m.model, tracking_uri)[0]})
        else:
            tracker.params({f"model.{m.name}": m.endpoint})
        for suite in suites:
            outputs = answer(m, suite, storage, cfg, tracking_uri, job.storage.endpoint_url)
            rows = []
            for it in suite.items:
                if it.id not in outputs:  # the video could not be decoded: in the errors table, not graded
                    continue
                prediction = extract_choice(outputs[it.id], it.options)
                rows.append(
                    {
                        "id": it.id,
                        "benchmark": it.benchmark,
                        "categories": it.categories,
                        "question": it.question,
                        "options": it.options,
                        "answer": it.answer,
                        "output": outputs[it.id],
                        "prediction": prediction,
                        "right": prediction == it.answer,
                    }
                )
            table = score(rows)
            scores[m.name][suite.name] = table
            tracker.metrics({f"{m.name}.{suite.name}.{k}": v for k, v in table.metrics().items()})
            tracker.json(rows, f"results/{m.name}-{suite.name}.json")
            tracker.text(results_csv(rows), f"results/{m.name}-{suite.name}.csv")
            if suite.items and suite.items[0].benchmark == "niavh":
                lengths = {it.id: it.categories for it in suite.items}
                niavh[m.name] = [
                    {
                        "length_s": float(lengths[r["id"]]["length"].rstrip("s")),
                        "depth": float(lengths[r["id"]]["depth"].rstrip("%")) / 100,
                        "right": r["right"],
                    }
                    for r in rows
                ]
                tracker.figure(heatmap(niavh[m.name], title=f"NIAVH: {m.name}"), f"niavh-{m.name}.png")
    return EvalResult(suites, scores, niavh, [m.name for m in cfg.models])


def results_csv(rows: list[dict[str, Any]]) -> str:
    """Every item with its raw output, for a spreadsheet (lists and dicts as JSON cells)."""
    import csv
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return buf.getvalue()


def comparison(result: EvalResult, suite: str) -> list[list[str]]:
    """One suite's accuracy, overall and per category, one column per model (the before/after table)."""
    lines: dict[str, dict[str, str]] = {}
    for model in result.models:
        for r in result.scores[model][suite].rows():
            if r["benchmark"] != "all" and not r["key"]:
                continue  # a benchmark's own line: the same as overall within one suite
            label = f"{r['key']}={r['value']}" if r["key"] else "overall"
            lines.setdefault(label, {})[model] = f"{r['accuracy']:.0%} ({r['right']}/{r['total']})"
    return [[label, *(cells.get(m, "-") for m in result.models)] for label, cells in lines.items()]
