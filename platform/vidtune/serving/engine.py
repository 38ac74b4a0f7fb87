"""The model behind the endpoint: loaded from the registry, a run or a folder, answering batches.

:meth:`Engine.run` answers a batch of requests with one ``generate`` call per group of requests that
share their sampling settings (greedy requests all go together). Rows are left-padded, so new tokens
append to every row; each row stops on its own (end of turn, a stop string, or its ``max_tokens``), and a
streaming request gets its text as it is produced, through the same per-row state that builds the
non-streaming answer, so the two always agree.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidtune.config import SamplingConfig

SETTINGS_FILE = "vidtune.json"  # written beside the model by the train stage


@dataclass
class ModelSettings:
    """How the model was trained to see: its family, frame sampling and pixel budget."""

    family: str
    sampling: SamplingConfig
    max_pixels: int

    @classmethod
    def read(cls, folder: Path) -> ModelSettings:
        path = folder / SETTINGS_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{folder} has no {SETTINGS_FILE}: serve a model that `vidtune train` saved, or write one: "
                '{"family": "qwen2-vl", "sampling": {"strategy": "uniform", "frames": 8}, '
                '"max_pixels": 50176}'
            )
        raw = json.loads(path.read_text())
        return cls(
            raw["family"],
            SamplingConfig(**(raw.get("sampling") or {})),
            int(raw.get("max_pixels") or 448 * 448),
        )


def resolve_model(source: str, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """``models:/NAME/latest`` (or a stage alias) as ``models:/NAME/N``, so every replica loads the same
    version; returns the URI and the version (None for runs and folders)."""
    if not source.startswith("models:/"):
        return source, None
    import mlflow

    name, _, ref = source.removeprefix("models:/").partition("/")
    if not ref or ref.isdigit():
        return source, ref or None
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if ref == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ValueError(f"registered model '{name}' has no versions")
        version = str(max(int(v.version) for v in versions))
    else:
        version = str(client.get_model_version_by_alias(name, ref).version)
    return f"models:/{name}/{version}", version


WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # what a replica without the model skips


def _wanted(name: str, weights: bool) -> bool:
    return weights or not name.endswith(WEIGHTS)


def fetch_model(
    uri: str, tracking_uri: str | None = None, endpoint_url: str | None = None, weights: bool = True
) -> Path:
    """A local folder holding the model: MLflow URIs are downloaded, ``s3://`` folders copied.

    ``weights=False`` fetches the processor, tokenizer, config and ``vidtune.json`` only: what the
    ingress needs to decode and encode requests, without pulling a 7B model onto a CPU node."""
    from vidtune.storage import filesystem, is_remote

    dst = Path(tempfile.mkdtemp(prefix="vidtune-serve-")) / "model"
    if uri.startswith(("models:/", "runs:/")):
        import mlflow

        if uri.startswith("models:/"):
            uri, _ = resolve_model(uri, tracking_uri)  # latest or an alias: the version it names now
            # The registry lives where the runs do; ask it for the version's files explicitly, since
            # download_artifacts alone would look in this process's default registry.
            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            name, version = uri.removeprefix("models:/").split("/")[:2]
            uri = client.get_model_version_download_uri(name, version)
        if weights:
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri
                )
            )
        dst.mkdir(parents=True)
        for f in mlflow.artifacts.list_artifacts(artifact_uri=uri, tracking_uri=tracking_uri):
            name = f.path.rsplit("/", 1)[-1]
            if not f.is_dir and _wanted(name, weights):
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{uri.rstrip('/')}/{name}", dst_path=str(dst), tracking_uri=tracking_uri
                )
        return dst
    if is_remote(uri):
        fs, path = filesystem(uri, endpoint_url)
        dst.mkdir(parents=True)
        for f in fs.ls(path.rstrip("/"), detail=False):
            name = f.rsplit("/", 1)[-1]
            if _wanted(name, weights):
                fs.get(f, str(dst / name), recursive=True)
        return dst
    path = Path(uri.removeprefix("file://")).expanduser().resolve()  # actors run in other directories
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {uri}")
    return path


@dataclass
class Generation:
    """One request inside a batch: its encoded prompt, its limits, and the text produced so far."""

    inputs: dict[str, Any]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None  # called with each new piece of text (streaming)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    _sent: int = 0  # characters handed to on_text
    _prefix: int = 0  # incremental detokenizing: tokens before _read give context, after it new text
    _read: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every token the model read, the visual tokens included."""
        return int(self.inputs["input_ids"].shape[0])

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def group(self) -> tuple:
        """Requests that can share one ``generate`` call."""
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)

    def push(self, token: int, tokenizer: Any, eos: set[int]) -> None:
        """Take one new token: extend the text, stop on end of turn, a stop string or the token limit,
        and hand the settled part of the text to ``on_text``."""
        if self.done:
            return
        if token in eos:
            self.finish("stop", tokenizer)
            return
        self.tokens.append(token)
        at_limit = len(self.tokens) >= self.max_tokens
        new = self._new_text(tokenizer, final=at_limit)
        if new and self.stops:
            start = max(0, len(self.text) - max(len(s) for s in self.stops))
            self.text += new
            cut = min((i for i in (self.text.find(s, start) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish_reason = self.text[:cut], "stop"
        else:
            self.text += new
        if at_limit and not self.done:
            self.finish_reason = "length"
        self._emit()

    def finish(self, reason: str, tokenizer: Any) -> None:
        """End the row: the text of any tokens held back (half a character) is added as it is."""
        if not self.done:
            self.text += self._new_text(tokenizer, final=True)
            self.finish_reason = reason
            self._emit()

    def _new_text(self, tokenizer: Any, final: bool = False) -> str:
        """The text the latest tokens add, decoding a few tokens rather than the whole answer each step
        (vLLM's incremental detokenizing): a batch row costs the same at token 5 and token 500. Decoding
        from ``_prefix`` keeps the spacing a tokenizer gives a word after a word; a trailing half
        character waits for its next byte."""
        prefix = tokenizer.decode(self.tokens[self._prefix : self._read], skip_special_tokens=True)
        full = tokenizer.decode(self.tokens[self._prefix :], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self.tokens)
            return full[len(prefix) :]
        return ""

    def _emit(self) -> None:
        settled = len(self.text)
        if not self.done:  # hold back what may still become a stop string
            settled -= max((len(s) - 1 for s in self.stops), default=0)
        if settled > self._sent and self.on_text is not None:
            self.on_text(self.text[self._sent : settled])
        self._sent = max(self._sent, settled)


class _RowStreamer:
    """``generate``'s streamer for a batch: new tokens go to each row's :class:`Generation`."""

    def __init__(self, rows: list[Generation], tokenizer: Any, eos: set[int]):
        self.rows, self.tokenizer, self.eos = rows, tokenizer, eos
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call passes the prompts
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            row.push(int(token), self.tokenizer, self.eos)

    def end(self) -> None:
        for row in self.rows:
            row.finish("length", self.tokenizer)


class Preprocessor:
    """What turns a request's frames and messages into model inputs: the family adapter, the processor
    and the sampling settings. No weights: the ingress replicas run this on CPU."""

    def __init__(self, folder: str | Path):
        from transformers import AutoProcessor

        from vidtune.models.family import get_family

        self.folder = Path(folder)
        self.settings = ModelSettings.read(self.folder)
        self.family = get_family(self.settings.family)
        self.processor = AutoProcessor.from_pretrained(self.folder)

    def encode(self, messages: list[dict[str, str]], frames: list[Any]) -> dict[str, Any]:
        """Processor inputs for one request, ending with the assistant's turn opened."""
        return self.family.encode(self.processor, frames, messages, labels=None, add_generation_prompt=True)


class Engine(Preprocessor):
    """A loaded model: answers batches of encoded requests (and can encode them, for a direct call)."""

    def __init__(self, folder: str | Path, use_gpu: bool | None = None):
        import torch
        from transformers import AutoModelForImageTextToText

        from vidtune.models.family import load_kwargs

        super().__init__(folder)
        self.use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        self.device = "cuda" if self.use_gpu else "cpu"
        self.model = AutoModelForImageTextToText.from_pretrained(self.folder, **load_kwargs(self.use_gpu))
        self.model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        self.eos = {*(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        self.eos |= {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids(self.family.turn_end)}
        self.eos.discard(None)
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos)
        )

    def run(self, rows: list[Generation]) -> None:
        """Answer every row in place: one ``generate`` call per group of shared sampling settings."""
        groups: dict[tuple, list[Generation]] = {}
        for row in rows:
            groups.setdefault(row.group, []).append(row)
        for group in groups.values():
            self._generate(group)

    def _generate(self, rows: list[Generation]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from vidtune.models.family import collate

        batch = collate([r.inputs for r in rows], self.pad_id, side="left")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        first = rows[0]

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.tensor([r.done for r in rows], device=input_ids.device)

        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        streamer = _RowStreamer(rows, self.tokenizer, self.eos)
        with torch.inference_mode():
            self.model.generate(
                **batch,
                max_new_tokens=max(r.max_tokens for r in rows),
                pad_token_id=self.pad_id,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([RowsDone()]),
                **sampling,
            )
