"""Training checkpoints: DeepSpeed engine state plus where the loop stood, saved and found again.

A checkpoint is DeepSpeed's own ``save_checkpoint`` output (every rank writes its partition of the
model and optimizer, so ZeRO-3 and offload resume without gathering) and ``vidtune-state.json``: the
optimizer step, the epoch and micro-batch reached, and the MLflow run whose metrics cover the steps so
far. Two places keep them:

* :class:`LocalCheckpointer`: a folder, for the plain-process loop (keeps the last ``keep``);
* :class:`RayCheckpointer`: ``ray.train.report`` into the run's storage (local or S3); Ray Train merges
  the ranks' files into one checkpoint, keeps the last ``num_to_keep`` and hands the latest back through
  ``ray.train.get_checkpoint()`` after a worker is replaced or the run is started again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE = "vidtune-state.json"
TAG = "engine"


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next micro-batch comes from
    batch: int = 0  # micro-batches of that epoch already consumed
    run_id: str | None = None  # the MLflow run holding the metrics of steps 1..step
    done: bool = False  # the final checkpoint: the trained model, no engine state


def read_state(folder: Path) -> LoopState | None:
    path = folder / STATE
    return LoopState(**json.loads(path.read_text())) if path.exists() else None


def save_engine(engine: Any, folder: Path, state: LoopState) -> None:
    """Every rank writes its part of the engine state under ``folder``; rank 0 adds the loop state."""
    engine.save_checkpoint(str(folder), tag=TAG)
    if engine.global_rank == 0:
        (folder / STATE).write_text(json.dumps(asdict(state)))


def load_engine(engine: Any, folder: Path) -> LoopState:
    engine.load_checkpoint(str(folder), tag=TAG)
    state = read_state(folder)
    assert state is not None
    return state


class Checkpointer(ABC):
    @abstractmethod
    def save(self, engine: Any, state: LoopState, metrics: dict[str, Any]) -> None:
        """Save a checkpoint (a collective call: every rank calls it)."""

    @abstractmethod
    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        """The newest checkpoint's folder, or ``None`` for a fresh start."""


class LocalCheckpointer(Checkpointer):
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def save(self, engine: Any, state: LoopState, metrics: dict[str, Any]) -> None:
        folder = self.root / f"step-{state.step:08d}"
        save_engine(engine, folder, state)
        if engine.global_rank == 0:
            for old in sorted(self.root.glob("step-*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        saved = [p for p in sorted(self.root.glob("step-*")) if (s := read_state(p)) and not s.done]
        yield saved[-1] if saved else None


class RayCheckpointer(Checkpointer):
    @staticmethod
    def save(engine: Any, state: LoopState, metrics: dict[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="vidtune-ckpt-") as tmp:
            save_engine(engine, Path(tmp), state)
            ray.train.report(
                {**metrics, "step": state.step},
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"step-{state.step:08d}",
            )

    @contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            state = read_state(Path(folder))
            # The final report holds the model, not an engine; the stage starts a finished run afresh.
            yield Path(folder) if state and not state.done else None
