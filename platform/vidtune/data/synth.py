"""``vidtune synth``: long-text QA rendered into T2Vid clips on Ray Data (Sparrow, arXiv 2411.19951).

long-QA files (driver: parse, cheap filters) ─▶ from_items ─▶ map_batches(render_samples) ─▶ shards

Each sample becomes one user turn ``<video>`` + question and one assistant turn with the answer; its
frames are the document, one chunk of about ``words_per_frame`` words per frame, stored as lossless PNG.
The paper's filters (frames, question length, an estimated token budget) drop samples with a reason,
into the errors table like any other row that did not make it, and as counts in MLflow.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vidtune.config import JobConfig, RenderConfig, SynthConfig, SynthFiltersConfig, TextDatasetConfig
from vidtune.data.longqa import ASK_FOR_BOTH, QUESTION_WORDS, LongQA, read_longqa
from vidtune.data.manifests import ManifestError
from vidtune.data.pipelines import WORKER, map_to_shards, sample_rows
from vidtune.data.schema import PLACEHOLDER
from vidtune.data.shards import DECODED_SCHEMA, DatasetInfo, commit, read_errors
from vidtune.data.t2vid import RenderSettings, render_document, tokens
from vidtune.storage import Storage

STAGE = "synth"
FILTER_STAGE = "synth-filter"


def estimated_tokens(words: int, frames: int, f: SynthFiltersConfig) -> int:
    """Text tokens (from words) plus the visual tokens the target model spends on each frame."""
    return int(math.ceil(words * f.tokens_per_word)) + frames * f.visual_tokens_per_frame


def filter_reason(
    qa: LongQA, frames: int, f: SynthFiltersConfig, max_question_words: int | None
) -> str | None:
    """Why the paper's filters drop this sample (``None``: keep it). ``frames`` may be an estimate."""
    # The paper's limit is on the user's question, not on the instruction the LongQLoRA rewrite adds.
    question_words = len(tokens(qa.question.removesuffix(" " + ASK_FOR_BOTH)))
    if max_question_words is not None and question_words >= max_question_words:
        return f"filtered: question has {question_words} words (limit {max_question_words})"
    if f.max_frames is not None and frames > f.max_frames:
        return f"filtered: {frames} frames (limit {f.max_frames})"
    if f.max_tokens is not None:
        words = question_words + len(tokens(qa.answer))
        total = estimated_tokens(words, frames, f)
        if total > f.max_tokens:
            return f"filtered: about {total} tokens (limit {f.max_tokens})"
    return None


def _reason_key(reason: str) -> str:
    """``filtered: 95 frames (limit 90)`` -> ``frames``: what the counts in MLflow are keyed by."""
    for key in ("question", "frames", "tokens"):
        if key in reason:
            return key
    return "other"


def render_samples(
    batch: pa.Table,
    *,
    render: dict[str, Any],
    words_per_frame: int,
    filters: dict[str, Any],
    max_question_words: int | None,
    source: str,
) -> pa.Table:
    """Long-QA records in, T2Vid clip rows (or error rows) out."""
    settings = RenderSettings(**render)
    f = SynthFiltersConfig(**filters)
    rows = []
    for rec in batch.to_pylist():
        qa = LongQA(rec["id"], rec["document"], rec["question"], rec["answer"], rec["origin"])
        row: dict[str, Any] = {
            "id": qa.id,
            "source": source,
            "kind": "t2vid",
            "messages": [
                {"role": "user", "content": f"{PLACEHOLDER}\n{qa.question}"},
                {"role": "assistant", "content": qa.answer},
            ],
            "frames": [],
            "frame_times": [],
            "meta": "{}",
            "error": None,
            "error_path": None,
            "error_stage": None,
        }
        try:
            started = time.perf_counter()
            doc = render_document(qa.document, settings, words_per_frame)
            # Overflow can add frames beyond the driver's estimate: the limit holds on the real count.
            reason = filter_reason(qa, len(doc.frames), f, max_question_words)
            if reason:
                row.update(error=reason, error_path=qa.origin, error_stage=FILTER_STAGE)
            else:
                row["frames"] = doc.frames
                row["frame_times"] = [float(i) for i in range(len(doc.frames))]
                row["meta"] = json.dumps(
                    {
                        "origin": qa.origin,
                        "words": doc.words,
                        "chunks": len(doc.chunks),
                        "font": doc.font,
                        "font_sizes": doc.font_sizes,
                        "render": render,
                        "words_per_frame": words_per_frame,
                        "rendered_by": WORKER,
                        "render_seconds": round(time.perf_counter() - started, 4),
                    }
                )
        except Exception as exc:  # noqa: BLE001 — one bad document must not fail the job
            row.update(
                error=f"unexpected {type(exc).__name__}: {exc}"[:500], error_path=qa.origin, error_stage=STAGE
            )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def collect_longqa(
    ds: TextDatasetConfig, cfg: SynthConfig, endpoint_url: str | None
) -> tuple[list[dict], list[dict]]:
    """Records to render, and error rows: unreadable lines, repeated ids, and samples the filters drop
    already on their estimated frame count (so no time is spent rendering them)."""
    max_q = cfg.filters.max_question_words or QUESTION_WORDS.get(ds.preset)
    records, errors, seen = [], [], {}
    for uri in ds.inputs:
        for item in read_longqa(uri, preset=ds.preset, fields=ds.fields, endpoint_url=endpoint_url):
            if isinstance(item, ManifestError):
                errors.append(
                    {"id": item.id, "path": item.origin, "stage": "manifest", "reason": item.reason}
                )
                continue
            if item.id in seen:
                errors.append(
                    {
                        "id": item.id,
                        "path": item.origin,
                        "stage": "manifest",
                        "reason": f"duplicate id (first at {seen[item.id]})",
                    }
                )
                continue
            seen[item.id] = item.origin
            estimate = math.ceil(len(tokens(item.document)) / cfg.words_per_frame)
            reason = filter_reason(item, estimate, cfg.filters, max_q)
            if reason:
                errors.append({"id": item.id, "path": item.origin, "stage": FILTER_STAGE, "reason": reason})
                continue
            records.append(vars(item))
    return records, errors


@dataclass
class SynthesizedDataset:
    info: DatasetInfo
    rows_in: int
    dropped: dict[str, int]
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.info.frames / self.seconds if self.seconds else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.info.rows / self.seconds if self.seconds else 0.0


def synth_dataset(ds: TextDatasetConfig, cfg: SynthConfig, storage: Storage) -> SynthesizedDataset:
    """Render one long-QA set into a committed T2Vid dataset (the Ray Data pipeline)."""
    started = time.perf_counter()
    records, early = collect_longqa(ds, cfg, storage.endpoint_url)
    render: RenderConfig = cfg.render
    staged, staging = map_to_shards(
        storage,
        ds.name,
        records,
        render_samples,
        {
            "render": render.model_dump(),
            "words_per_frame": cfg.words_per_frame,
            "filters": cfg.filters.model_dump(),
            "max_question_words": cfg.filters.max_question_words or QUESTION_WORDS.get(ds.preset),
            "source": ds.source or ds.name,
        },
        cfg,
    )
    seconds = time.perf_counter() - started
    errors = early + [e for r in staged for e in r["errors"]]
    dropped = Counter(_reason_key(e["reason"]) for e in errors if e["stage"] == FILTER_STAGE)
    info = commit(
        storage,
        ds.name,
        staged,
        stage=STAGE,
        extra_errors=early,
        staging=staging,
        stats={"rows_in": len(records) + len(early), "seconds": round(seconds, 3), "dropped": dict(dropped)},
        config={"dataset": ds.model_dump(), "synth": cfg.model_dump(exclude={"datasets"})},
    )
    return SynthesizedDataset(info, len(records) + len(early), dict(dropped), seconds)


def synth(job: JobConfig, tracker: Any) -> list[SynthesizedDataset]:
    """``vidtune synth``: every dataset of the job's ``synth`` section, logged to ``tracker``."""
    from vidtune.cluster import ensure_ray

    cfg: SynthConfig = job.section(STAGE)
    storage = Storage(job.storage)
    ensure_ray(job.ray)
    results = []
    for ds in cfg.datasets:
        r = synth_dataset(ds, cfg, storage)
        results.append(r)
        name = r.info.name
        tracker.metrics(
            {
                f"{name}.rows_in": r.rows_in,
                f"{name}.samples_out": r.info.rows,
                f"{name}.errors": r.info.errors,
                f"{name}.frames": r.info.frames,
                f"{name}.frames_per_s": r.frames_per_s,
                f"{name}.samples_per_s": r.samples_per_s,
                **{f"{name}.dropped.{k}": v for k, v in r.dropped.items()},
            }
        )
        tracker.table(read_errors(storage, name).to_pylist() if r.info.errors else [], f"errors/{name}.json")
        if cfg.sample_frames and r.info.rows:
            rows = sample_rows(storage, r.info, 2)
            shown = 0
            for row in rows:
                for k, png in enumerate(row["frames"]):
                    if shown >= cfg.sample_frames:
                        break
                    tracker.artifact_bytes(png, f"frames/{name}/{row['id']}-{k:03d}.png")
                    shown += 1
    tracker.metrics(
        {
            "samples_out": sum(r.info.rows for r in results),
            "errors": sum(r.info.errors for r in results),
            "frames_per_s": sum(r.info.frames for r in results) / max(1e-9, sum(r.seconds for r in results)),
        }
    )
    return results
