"""`vidtune diversity`: a set of identical instructions scores lower than a varied one, on a real
sentence-transformers model (shipped in a package); the t-SNE plot is a real PNG in MLflow."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vidtune.data.diversity import Embedder, mean_pairwise_cosine_distance, vendi_score
from vidtune.data.schema import to_table
from vidtune.data.shards import commit, staging_dir
from vidtune.stages import run_stage
from vidtune.storage import Storage

VARIED = [
    "Describe what the person in the video is cooking.",
    "How many cars pass the crossing?",
    "What colour is the bird on the fence?",
    "Summarise the lecture in two sentences.",
    "Why does the child start laughing?",
    "Which instrument plays the melody at the end?",
    "What is written on the whiteboard?",
    "Count the goals scored in the first half.",
]


def test_metrics_on_known_vectors():
    same = np.tile(np.array([[1.0, 0.0, 0.0]]), (5, 1))
    orthogonal = np.eye(4)
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0)
    assert vendi_score(same) == pytest.approx(1.0)
    assert mean_pairwise_cosine_distance(orthogonal) == pytest.approx(1.0)
    assert vendi_score(orthogonal) == pytest.approx(4.0)


def test_real_embeddings_rank_varied_above_repeated():
    model = Embedder("all-MiniLM-L6-v2")
    import pyarrow as pa

    def emb(texts):
        return np.asarray(model(pa.table({"text": texts}))["embedding"].to_pylist())

    varied, repeated = emb(VARIED), emb(["What is happening in the video?"] * 8)
    assert varied.shape == (8, 384)
    assert vendi_score(varied) > 3 * vendi_score(repeated)
    assert mean_pairwise_cosine_distance(varied) > 0.5 > mean_pairwise_cosine_distance(repeated) + 0.4


def write_dataset(storage: Storage, name: str, questions: list[str]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="JPEG")
    rows = [
        {
            "id": f"{name}-{i}",
            "source": name,
            "kind": "video",
            "frames": [buf.getvalue()],
            "frame_times": [0.0],
            "messages": [
                {"role": "user", "content": f"<video>\n{q}"},
                {"role": "assistant", "content": "ok"},
            ],
            "meta": "{}",
        }
        for i, q in enumerate(questions)
    ]
    staging = staging_dir(storage, name)
    storage.fs.makedirs(staging, exist_ok=True)
    path = f"{staging}/part.parquet"
    pq.write_table(to_table(rows), path)
    commit(
        storage, name, [{"files": [path], "errors": [], "rows": len(rows), "frames": len(rows)}], stage="test"
    )


def test_diversity_stage(make_job, ray_local, tmp_path):
    job = make_job(diversity={"datasets": ["varied", "repeated"], "seed": 1})
    storage = Storage(job.storage)
    write_dataset(storage, "varied", VARIED * 2)
    write_dataset(storage, "repeated", ["What is happening in the video?"] * 16)
    result = run_stage(job, "diversity", echo=lambda s: None)
    assert result.samples == {"varied": 16, "repeated": 16}
    assert result.scores["varied"]["vendi"] > result.scores["repeated"]["vendi"]
    assert result.scores["repeated"]["mean_pairwise_cosine_distance"] == pytest.approx(0.0, abs=1e-5)
    mlflow.set_tracking_uri(job.tracking.uri)
    run = mlflow.search_runs(experiment_names=["t"], output_format="list")[0]
    assert run.data.metrics["repeated.vendi"] == pytest.approx(1.0, abs=1e-3)
    png = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="tsne.png", dst_path=str(tmp_path / "dl")
    )
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] >= 500
    # two datasets, two colours: the plot is not blank
    colours = {c for _, c in img.convert("RGB").getcolors(1_000_000) or []}
    assert len(colours) > 20
