"""The stages a job file can run, by name, and the one-screen summary each prints when it ends.

The CLI (`vidtune STAGE`, `vidtune run`), the Ray job and the tests all go through :func:`run_stage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vidtune import completion
from vidtune.config import JobConfig
from vidtune.storage import Storage
from vidtune.tracking import StageRun, pipeline_run, skipped_run, stage_run


def _prepare(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.data.pipelines import prepare

    return prepare(job, tracker)


def _synth(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.data.synth import synth

    return synth(job, tracker)


def _diversity(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.data.diversity import diversity

    return diversity(job, tracker)


def _train(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.train.stage import train

    return train(job, tracker)


def _mix(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.data.mix import mix

    return mix(job, tracker)


def _eval(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.eval.stage import eval_stage

    return eval_stage(job, tracker)


def _serve(job: JobConfig, tracker: StageRun) -> Any:
    from vidtune.serving.stage import serve_stage

    return serve_stage(job, tracker)


STAGES: dict[str, Callable[[JobConfig, StageRun], Any]] = {
    "prepare": _prepare,
    "synth": _synth,
    "mix": _mix,
    "diversity": _diversity,
    "train": _train,
    "eval": _eval,
    "serve": _serve,
}


def summarize(stage: str, result: Any, tracker: StageRun) -> str:
    lines = [f"== {stage} done =="]
    if stage == "prepare":
        for r in result:
            i = r.info
            lines.append(
                f"  {i.name}: {r.videos_in} videos in -> {i.rows} clips, {i.errors} errors, "
                f"{i.frames} frames "
                f"in {r.seconds:.1f}s ({r.frames_per_s:.1f} frames/s, {r.videos_per_s:.2f} videos/s)"
            )
            lines.append(f"    shards: {i.uri}/shards/ ({len(i.shards)} files)")
            if i.errors:
                lines.append(f"    errors: {i.errors_uri}")
    elif stage == "synth":
        for r in result:
            i = r.info
            dropped = ", ".join(f"{v} {k}" for k, v in sorted(r.dropped.items())) or "none"
            lines.append(
                f"  {i.name}: {r.rows_in} documents in -> {i.rows} T2Vid clips ({i.frames} frames), "
                f"{i.errors} errors (filtered: {dropped}) in {r.seconds:.1f}s "
                f"({r.frames_per_s:.1f} frames/s, {r.samples_per_s:.2f} samples/s)"
            )
            lines.append(f"    shards: {i.uri}/shards/ ({len(i.shards)} files)")
            if i.errors:
                lines.append(f"    errors: {i.errors_uri}")
    elif stage == "mix":
        i = result.info
        lines.append(f"  {i.name}: {i.rows} clips in {result.seconds:.1f}s -> {i.uri}/shards/")
        for p in result.parts:
            lines.append(
                f"    {p.dataset}: took {p.taken} of {p.available} ({p.duplicates} duplicate ids skipped)"
            )
    elif stage == "diversity":
        lines.append(f"  {'dataset':<24} {'samples':>7} {'vendi':>7} {'mean cos dist':>13}")
        for name, s in result.scores.items():
            n = result.samples.get(name, sum(result.samples.values()))
            lines.append(
                f"  {name:<24} {n:>7} {s['vendi']:>7.2f} {s['mean_pairwise_cosine_distance']:>13.3f}"
            )
        lines.append("  t-SNE plot: tsne.png in the run's artifacts")
    elif stage == "train":
        last = result.first_step + len(result.losses) - 1
        resumed = f" (resumed at step {result.first_step})" if result.first_step > 1 else ""
        lines.append(
            f"  loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} over steps "
            f"{result.first_step}-{last}{resumed}, {result.samples_per_s:.1f} samples/s, "
            f"{result.tokens_per_s:.0f} tokens/s, data wait {result.data_wait:.0%}"
        )
        if result.too_long:
            lines.append(f"  {len(result.too_long)} samples over max_length dropped (dropped_too_long.json)")
        if result.heldout_after is not None:
            lines.append(
                f"  held-out {result.heldout_after.dataset}: before {result.heldout_before.line()}, "
                f"after {result.heldout_after.line()}"
            )
        nodes = len({w["node_id"] for w in result.workers})
        lines.append(f"  {len(result.workers)} workers on {nodes} node(s); checkpoints: {result.checkpoints}")
        lines.append(
            f"  model: {result.model_uri}"
            + (f"  (registered: {result.registered})" if result.registered else "")
        )
    elif stage == "eval":
        from vidtune.bench.decode import _table
        from vidtune.eval.stage import comparison

        for suite in result.suites:
            skipped = f", {len(suite.skipped)} rows skipped" if suite.skipped else ""
            errors = f", {suite.decode_errors} videos undecodable" if suite.decode_errors else ""
            lines.append(f"  {suite.name}: {len(suite.items)} items{skipped}{errors}")
            table = _table(["accuracy", *result.models], comparison(result, suite.name))
            lines += ["    " + line for line in table.splitlines()]
        if result.niavh:
            lines.append("  NIAVH heatmaps: " + ", ".join(f"niavh-{m}.png" for m in result.niavh))
        lines.append("  every item's output: results/MODEL-SUITE.json in the run's artifacts")
    elif stage == "serve":
        version = f" (version {result.version})" if result.version else ""
        lines.append(f"  {result.model_id}: {result.model}{version} on {result.replicas} replica(s)")
        lines.append(f"  OpenAI-compatible API: {result.url}/v1  (models: {result.url}/v1/models)")
        if result.example is not None:
            ex = result.example
            video, question = (part for part in ex["request"]["messages"][0]["content"])
            lines.append(f"  asked: {question['text']!r} about {video['video_url']['url']}")
            lines.append(
                f"  answer: {ex['answer']!r} in {ex['seconds']:.2f}s "
                f"({ex['response']['usage']['prompt_tokens']} prompt tokens)"
            )
            lines.append(f"  try it:\n    {result.curl}")
        if not result.block:
            lines.append(
                "  the app stops with this process; `vidtune serve JOB.yaml` keeps it up until Ctrl-C"
            )
    lines.append(f"  MLflow: {tracker.url}")
    return "\n".join(lines)


def run_stage(job: JobConfig, stage: str, echo: Callable[[str], None] = print) -> Any:
    """Run one stage in its own MLflow run, print its summary, and record that it finished."""
    job.section(stage)  # a clear error before any work when the section is missing
    with stage_run(job, stage) as tracker:
        result = STAGES[stage](job, tracker)
        if stage not in completion.NEVER_SKIPPED:
            completion.record(Storage(job.storage), job, stage, tracker.run_id)
        echo(summarize(stage, result, tracker))
        if stage == "serve":
            result.hold(echo)  # the serving run stays open while the app serves
    return result


def run_pipeline(job: JobConfig, echo: Callable[[str], None] = print, force: bool = False) -> dict[str, Any]:
    """``vidtune run``: the stages the job lists, in order, each nested under one pipeline run.

    A stage whose output is complete from an earlier run with the same config is skipped (see
    :mod:`vidtune.completion`) unless ``force``; its entry in the result is that run's record.
    """
    if not job.stages:
        raise ValueError(f"job '{job.name}' lists no stages; add e.g. `stages: [prepare, mix]`")
    storage = Storage(job.storage)
    results: dict[str, Any] = {}
    with pipeline_run(job) as parent:
        skipped = []
        for stage in job.stages:
            rec, reason = (None, "--force") if force else completion.why_not_skip(storage, job, stage)
            if rec is not None:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.finished))
                note = f"output complete from run {rec.run_id} ({when}), same config and inputs"
                skipped_run(job, stage, rec.run_id, note)
                echo(f"== {stage} skipped: {note}; --force runs it again ==")
                skipped.append(stage)
                results[stage] = rec
                continue
            if reason not in ("no record of a finished run", "always runs"):
                echo(f"== {stage} runs again: {reason} ==")
            results[stage] = run_stage(job, stage, echo)
        parent.tags({"vidtune.skipped": ",".join(skipped)})
        ran = [s for s in job.stages if s not in skipped]
        echo(
            f"== pipeline '{job.name}' done: ran {', '.join(ran) or 'nothing'}"
            + (f"; skipped {', '.join(skipped)} (complete)" if skipped else "")
            + f" ==\n  MLflow: {parent.url}"
        )
    return results
