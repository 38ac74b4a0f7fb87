"""`vidtune synth` end to end on a local Ray: long-text QA becomes T2Vid clips whose frames hold the
document, the paper's filters drop what they should (with the reason), and MLflow has the counts and
rendered frames."""

from __future__ import annotations

import io
import json

import mlflow
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from vidtune.data.schema import validate
from vidtune.data.shards import load_info, read_errors, shard_paths
from vidtune.stages import run_stage
from vidtune.storage import Storage

SENTENCE = "The quiet harbour filled with boats as the tide came in over the sand. "  # 14 words


def doc(words: int) -> str:
    return " ".join((SENTENCE * (words // 14 + 1)).split()[:words])


def test_synth_end_to_end(tmp_path, make_job, ray_local):
    generic = [
        {"id": "short", "context": doc(100), "question": "Where did the boats go?", "answer": "The harbour."},
        {"id": "long", "context": doc(650), "question": "What came in?", "answer": "The tide."},
        {"id": "huge", "context": doc(115 * 8), "question": "Too long?", "answer": "Yes."},
        {"id": "wordy", "context": doc(50), "question": " ".join(["why"] * 40), "answer": "Because."},
        {"id": "nodoc", "question": "Where?", "answer": "Nowhere."},
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generic) + "{broken\n")
    alpaca = [
        {
            "id": "a1",
            "output": "A harbour.",
            "instruction": (
                "Below is a paper. Memorize the paper and answer my question after the paper.\n"
                " The paper begins. \n"
                f"{doc(200)}\n Now the paper ends. \nWhat is described?"
            ),
        }
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    qlora = [  # the paper's LongQLoRA limit: questions under 30 words, the rewrite's own words not counted
        {
            "id": f"q{n}",
            "input": f"Document [1] {doc(120)}\nQuestion: {q}",
            "output": "The tide (Document 1).",
        }
        for n, q in enumerate([" ".join(["what"] * 25) + " came in?", " ".join(["what"] * 30) + "?"])
    ]
    (tmp_path / "qlora.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qlora))
    job = make_job(
        synth={
            "datasets": [
                {"name": "t2v", "input": [str(tmp_path / "qa.jsonl"), str(tmp_path / "alpaca.json")]}
            ],
            "filters": {"max_frames": 6, "max_question_words": 30},
            "sample_frames": 3,
        }
    )
    # the LongAlpaca file needs its preset: a second dataset
    job.synth.datasets = [
        job.synth.datasets[0].model_copy(update={"input": str(tmp_path / "qa.jsonl")}),
        job.synth.datasets[0].model_copy(
            update={"name": "alp", "input": str(tmp_path / "alpaca.json"), "preset": "longalpaca"}
        ),
        job.synth.datasets[0].model_copy(
            update={"name": "qlr", "input": str(tmp_path / "qlora.jsonl"), "preset": "longqlora"}
        ),
    ]
    lines: list[str] = []
    results = run_stage(job, "synth", echo=lines.append)
    t2v, alp, qlr = results
    storage = Storage(job.storage)

    table = validate(pq.read_table(shard_paths(storage, load_info(storage, "t2v"))[0])).sort_by("id")
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == {"short", "long"}
    assert len(rows["short"]["frames"]) == 1 and len(rows["long"]["frames"]) == 6  # 650 words / 115
    assert rows["long"]["kind"] == "t2vid" and rows["long"]["frame_times"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows["long"]["messages"] == [
        {"role": "user", "content": "<video>\nWhat came in?"},
        {"role": "assistant", "content": "The tide."},
    ]
    for png in rows["long"]["frames"]:
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.size == (448, 448)
        ink = np.nonzero(np.asarray(img.convert("L")) < 128)[1]
        assert ink.size and ink.min() >= 20 and ink.max() < 448 - 20

    errors = {e["id"]: e for e in read_errors(storage, "t2v").to_pylist()}
    assert errors["huge"]["stage"] == "synth-filter" and "frames" in errors["huge"]["reason"]
    assert errors["wordy"]["stage"] == "synth-filter" and "question" in errors["wordy"]["reason"]
    assert errors["nodoc"]["stage"] == "manifest" and errors["nodoc"]["path"].endswith("qa.jsonl:5")
    assert errors[""]["path"].endswith("qa.jsonl:6")
    assert t2v.dropped == {"frames": 1, "question": 1}

    assert alp.info.rows == 1
    alp_row = pq.read_table(shard_paths(storage, load_info(storage, "alp"))[0]).to_pylist()[0]
    assert alp_row["messages"][0]["content"] == "<video>\nWhat is described?" and len(alp_row["frames"]) == 2

    assert qlr.dropped == {"question": 1}
    qlr_row = pq.read_table(shard_paths(storage, load_info(storage, "qlr"))[0]).to_pylist()[0]
    assert qlr_row["messages"][1]["content"] == "The tide.\nDocument ID: 1" and len(qlr_row["frames"]) == 2

    mlflow.set_tracking_uri(job.tracking.uri)
    run = mlflow.search_runs(experiment_names=["t"], output_format="list")[0]
    assert run.data.metrics["t2v.samples_out"] == 2 and run.data.metrics["t2v.dropped.frames"] == 1
    frames = mlflow.MlflowClient().list_artifacts(run.info.run_id, "frames/t2v")
    assert len(frames) == 3 and all(f.path.endswith(".png") for f in frames)
    assert any("2 T2Vid clips" in line for line in lines[0].splitlines())


def test_token_budget_filter(tmp_path, make_job, ray_local):
    rows = [
        {"id": "a", "context": doc(115 * 3), "question": "Q?", "answer": "A."},
        {"id": "b", "context": doc(100), "question": "Q?", "answer": "A."},
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Idefics3 spends 169 tokens a frame: 3 frames cost over 500, 1 frame under
    job = make_job(
        synth={
            "datasets": [{"name": "t", "input": str(tmp_path / "qa.jsonl")}],
            "filters": {"max_tokens": 400, "visual_tokens_per_frame": 169},
        }
    )
    result = run_stage(job, "synth", echo=lambda s: None)[0]
    assert result.info.rows == 1 and result.dropped == {"tokens": 1}
