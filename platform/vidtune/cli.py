"""``vidtune``: one subcommand per stage, each ``vidtune STAGE JOB.yaml [--set section.key=value ...]``.

The job file is loaded and validated in full before Ray starts or anything is read, so a bad file costs
a second, not a cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from vidtune.config import JobConfig, JobFileError, load_job

STAGE_HELP = {
    "prepare": "decode videos from manifests into clip shards (Ray Data)",
    "synth": "render long-text QA into T2Vid clips (text as frames, Ray Data)",
    "mix": "combine datasets by counts or ratios into a new dataset",
    "train": "fine-tune a video LLM on Ray Train with DeepSpeed",
    "diversity": "instruction diversity of datasets: embeddings, Vendi score, t-SNE plot",
    "eval": "grade models on video benchmarks and Needle-in-a-Video-Haystack (accuracy per category)",
    "serve": "serve a model over an OpenAI-compatible HTTP API on Ray Serve (until Ctrl-C)",
}


def _job(args: argparse.Namespace) -> JobConfig:
    return load_job(args.job, args.set)


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job file (YAML), e.g. jobs/demo.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a key of the job file (repeatable); the value is YAML",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidtune", description="Data-efficient fine-tuning of video LLMs on Ray"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, text in STAGE_HELP.items():
        _add_job_args(sub.add_parser(stage, help=text, description=text))
    run = sub.add_parser("run", help="run the stages the job file lists, in order, under one MLflow run")
    _add_job_args(run)
    run.add_argument(
        "--force", action="store_true", help="run every stage, even one whose output is complete"
    )
    check = sub.add_parser("check", help="validate a job file and print it with defaults filled in")
    _add_job_args(check)

    bench = sub.add_parser("bench", help="benchmarks, side by side with the alternatives")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    dec = bench_sub.add_parser(
        "decode", help="sampled frames/s: vidtune's decoders against PyAV and read_videos"
    )
    dec.add_argument(
        "--workdir", default="./vidtune-data/bench", help="where generated test videos are cached"
    )
    dec.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    dec.add_argument("--quick", action="store_true", help="short videos only (a smoke run, not the figures)")
    dec.add_argument("--no-read-videos", action="store_true", help="skip ray.data.read_videos (slowest)")
    dec.add_argument("--json", help="also write the results as JSON here")

    syn = bench_sub.add_parser(
        "synth", help="T2Vid frames/s per core against the paper's recipe, and scaling"
    )
    syn.add_argument("--documents", type=int, default=40)
    syn.add_argument("--words", type=int, default=1150, help="words per document (115 a frame)")
    syn.add_argument("--quick", action="store_true", help="a few short documents (a smoke run)")
    syn.add_argument("--json", help="also write the results as JSON here")

    trn = bench_sub.add_parser(
        "train", help="training samples/s, tokens/s, data wait and MFU against a plain PyTorch loop"
    )
    trn.add_argument(
        "--size", choices=["tiny", "2b"], default="tiny", help="2b: Qwen2-VL-2B's shape, for a GPU"
    )
    trn.add_argument("--steps", type=int, default=30)
    trn.add_argument("--micro-batch", type=int, default=4)
    trn.add_argument("--frames", type=int, default=8)
    trn.add_argument("--side", type=int, default=112, help="frame width and height in pixels")
    trn.add_argument("--json", help="also write the results as JSON here")

    srv = bench_sub.add_parser(
        "serve", help="the Serve app's requests/s and latency, batching on and off, against a direct call"
    )
    srv.add_argument("--frames", type=int, default=8)
    srv.add_argument("--max-pixels", type=int, default=224 * 224)
    srv.add_argument(
        "--max-tokens", type=int, default=64, help="new tokens a request (random weights: it writes them all)"
    )
    srv.add_argument("--port", type=int, default=8011)
    srv.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, not the figures)")
    srv.add_argument("--json", help="also write the results as JSON here")

    demo = sub.add_parser("demo-data", help="generate the demo's videos, manifests and long-text QA")
    demo.add_argument("--out", default="./vidtune-data/inputs")
    demo.add_argument("--videos", type=int, default=48)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command in STAGE_HELP:
            from vidtune.stages import run_stage

            job = _job(args)
            if args.command == "serve" and job.serve is not None and job.serve.block is None:
                job.serve.block = True  # `vidtune serve` serves until stopped, terminal or not
            run_stage(job, args.command)
        elif args.command == "run":
            from vidtune.stages import run_pipeline

            run_pipeline(_job(args), force=args.force)
        elif args.command == "check":
            import yaml

            print(yaml.safe_dump(_job(args).model_dump(mode="json"), sort_keys=False))
        elif args.command == "bench" and args.bench == "decode":
            from vidtune.bench.decode import run_decode_bench

            run_decode_bench(
                args.workdir,
                frames=args.frames,
                quick=args.quick,
                read_videos=not args.no_read_videos,
                json_out=args.json,
            )
        elif args.command == "bench" and args.bench == "synth":
            from vidtune.bench.synth import run_synth_bench

            run_synth_bench(documents=args.documents, words=args.words, quick=args.quick, json_out=args.json)
        elif args.command == "bench" and args.bench == "train":
            from vidtune.bench.train import run_train_bench

            run_train_bench(
                size=args.size,
                steps=args.steps,
                micro_batch=args.micro_batch,
                frames=args.frames,
                side=args.side,
                json_out=args.json,
            )
        elif args.command == "bench" and args.bench == "serve":
            from vidtune.bench.serve import run_serve_bench

            run_serve_bench(
                frames=args.frames,
                max_pixels=args.max_pixels,
                max_tokens=args.max_tokens,
                quick=args.quick,
                port=args.port,
                json_out=args.json,
            )
        elif args.command == "demo-data":
            from vidtune.demo import write_demo_inputs, write_demo_text

            paths = {**write_demo_inputs(args.out, videos=args.videos), **write_demo_text(args.out)}
            print("demo inputs: " + ", ".join(str(p) for p in paths.values()))
    except JobFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            # An error from the OS, not one of vidtune's own messages: where it happened matters.
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
