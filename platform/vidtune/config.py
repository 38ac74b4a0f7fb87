"""Job files: pydantic models for every section, YAML loading and ``--set`` overrides.

A job file says *what* to run (``jobs/demo.yaml`` is the embedded default). It is validated as a whole
before any stage starts, so a typo in the last section fails in a second instead of after an hour of
decoding. Every model forbids unknown keys: a misspelt key is an error naming its path, never ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)


class JobFileError(ValueError):
    """An invalid job file: every problem with its key path and the reason."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {key or '(top level)'}: {reason}" for key, reason in problems)
        super().__init__(f"invalid job file {source}:\n{lines}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _env(*names: str, default: str | None = None) -> str | None:
    """The first of ``names`` set (and not empty) in the environment: how a cluster's runtime env
    supplies the places a job file leaves out (docs/cluster.md)."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


class StorageConfig(Section):
    """Where datasets, checkpoints and models live: a local folder or ``s3://bucket/prefix``.

    Left out of the job file, both keys come from the environment (``VIDTUNE_STORAGE_ROOT``,
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``), so one job file runs on a laptop and on a cluster.
    Credentials never go in the job file: S3 reads them from the usual AWS environment variables.
    """

    root: str = Field(
        default_factory=lambda: _env("VIDTUNE_STORAGE_ROOT", default="./vidtune-data"),
        description="default: $VIDTUNE_STORAGE_ROOT, else ./vidtune-data",
    )
    endpoint_url: str | None = Field(
        default_factory=lambda: _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="S3-compatible endpoint (MinIO, moto, Ceph, ...); default: $AWS_ENDPOINT_URL_S3",
    )


class TrackingConfig(Section):
    uri: str = Field(
        default_factory=lambda: _env("MLFLOW_TRACKING_URI", default="sqlite:///mlflow.db"),
        description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    experiment: str | None = Field(None, description="defaults to the job's name")


class RayConfig(Section):
    address: str | None = Field(
        None,
        description="an existing cluster ('auto', 'ray://...'); none: $RAY_ADDRESS (set inside "
        "`ray job submit`), else start a local Ray",
    )
    # Logical CPUs for a local Ray. Data stages and training workers each hold CPUs, and a budget equal to
    # the physical cores can deadlock them (see docs/architecture.md), so the local default oversubscribes.
    num_cpus: PositiveInt | None = None
    data_resources: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="custom resources every data task (decode, render, embed, encode) requests, e.g. "
        "{data: 1} with CPU nodes started with --resources '{\"data\": 1000}': decoding stays off GPU nodes",
    )


class SamplingConfig(Section):
    """Which frames of a video become the clip.

    ``uniform``: the middle frame of each of ``frames`` equal segments (T2Vid's rule).
    ``fps``: one frame every ``1/fps`` seconds, at most ``max_frames`` (spread uniformly beyond that).
    ``snap_keyframes``: move each chosen time to the keyframe at or before it; much faster, less exact.
    """

    strategy: Literal["uniform", "fps"] = "uniform"
    frames: PositiveInt = 24
    fps: PositiveFloat = 1.0
    max_frames: PositiveInt = 64
    snap_keyframes: bool = False


class VideoDatasetConfig(Section):
    """One manifest (or several) of video instructions, prepared into one named dataset."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    manifest: str | list[str]
    format: Literal["auto", "llava", "sharegpt"] = "auto"
    video_root: str | None = Field(None, description="base for relative video paths (local or s3://)")
    source: str | None = Field(None, description="the clip's `source` column; defaults to the name")

    @property
    def manifests(self) -> list[str]:
        return [self.manifest] if isinstance(self.manifest, str) else list(self.manifest)


class PrepareConfig(Section):
    datasets: list[VideoDatasetConfig] = Field(min_length=1)
    sampling: SamplingConfig = SamplingConfig()
    max_pixels: PositiveInt = Field(448 * 448, description="resize each frame under this budget, same aspect")
    jpeg_quality: int = Field(90, ge=1, le=100)
    backend: Literal["auto", "pyav", "decord"] = "auto"
    rows_per_shard: PositiveInt = 256
    batch_size: PositiveInt = Field(4, description="videos per Ray Data decode task")
    num_cpus: PositiveFloat = Field(1.0, description="CPUs each decode task requests from Ray")
    concurrency: PositiveInt | None = Field(
        None, description="most decode tasks at once (default: as CPUs allow)"
    )
    contact_sheet_clips: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _unique_names(self) -> PrepareConfig:
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique, repeated: {', '.join(dupes)}")
        return self


class RenderConfig(Section):
    """How T2Vid sets text on frames (the paper's recipe by default)."""

    width: PositiveInt = 448
    height: PositiveInt = 448
    font_size: PositiveInt = 20
    min_font_size: PositiveInt = 12
    margin: int = Field(20, ge=0, description="side margins, and the least space above and below the text")
    line_spacing: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _sizes(self) -> RenderConfig:
        if self.min_font_size > self.font_size:
            raise ValueError("min_font_size is larger than font_size")
        if 2 * self.margin >= min(self.width, self.height):
            raise ValueError("margins leave no room for text")
        return self


class SynthFiltersConfig(Section):
    """The paper's filters; a dropped sample lands in the errors table with the reason."""

    max_frames: PositiveInt | None = 90
    max_question_words: PositiveInt | None = Field(
        None,
        description="default per preset (the paper): 500 for longalpaca, 30 for longqlora, none for generic",
    )
    max_tokens: PositiveInt | None = Field(
        None, description="text tokens + frames x visual tokens, estimated"
    )
    visual_tokens_per_frame: PositiveInt = Field(169, description="169 for Idefics3, 96 for MiniCPM-V")
    tokens_per_word: PositiveFloat = 1.3


class TextDatasetConfig(Section):
    """One long-QA file (or several) rendered into one named T2Vid dataset."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    input: str | list[str]
    preset: Literal["generic", "longalpaca", "longqlora"] = "generic"
    fields: dict[str, str] = Field(default_factory=dict, description="rename fields: {context: doc, ...}")
    source: str | None = None

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class SynthConfig(Section):
    datasets: list[TextDatasetConfig] = Field(min_length=1)
    words_per_frame: PositiveInt = 115
    render: RenderConfig = RenderConfig()
    filters: SynthFiltersConfig = SynthFiltersConfig()
    rows_per_shard: PositiveInt = 256
    batch_size: PositiveInt = Field(8, description="documents per Ray Data render call")
    num_cpus: PositiveFloat = 1.0
    concurrency: PositiveInt | None = None
    sample_frames: int = Field(8, ge=0, description="rendered frames logged to MLflow as PNGs")


class DiversityConfig(Section):
    """Instruction diversity of committed datasets (see vidtune/data/diversity.py)."""

    datasets: list[str] = Field(min_length=1)
    model: str = Field(
        "all-MiniLM-L6-v2", description="sentence-transformers model: packaged name, path, hub id"
    )
    max_per_dataset: PositiveInt = Field(2000, description="a seeded sample per dataset beyond this")
    seed: int = 0
    batch_size: PositiveInt = 64
    num_cpus: PositiveFloat = 1.0
    concurrency: PositiveInt | None = None


class LoraSection(Section):
    """LoRA adapters through peft; the saved model has them merged (and kept in ``adapter/``)."""

    rank: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="module names (suffixes) to adapt; the default is the language model's linear layers",
    )


class TrainConfig(Section):
    """Fine-tuning on Ray Train with DeepSpeed (see vidtune/train/)."""

    dataset: str
    heldout: str | None = Field(None, description="a clip dataset answered before and after training")
    heldout_limit: PositiveInt = 100
    model: str = Field("tiny", description="a Hugging Face path or hub id, or 'tiny' (built offline)")
    family: Literal["qwen2-vl", "qwen2.5-vl", "idefics3", "llava-onevision"] = "qwen2-vl"
    output: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="models/NAME under storage.root")
    register_as: str | None = Field(None, description="MLflow registered model name")
    num_workers: PositiveInt = 2
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how workers spread over nodes (Ray placement group strategy)"
    )
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = Field(
        None, description="e.g. {CPU: 8, GPU: 1}; the default is 1 CPU (and 1 GPU with use_gpu)"
    )
    steps: PositiveInt = 50
    micro_batch: PositiveInt = 4
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 5e-6
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    clip: PositiveFloat = 1.0
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    bf16: bool | None = Field(None, description="default: bf16 on GPU, fp32 on CPU")
    gradient_checkpointing: bool = False
    freeze: list[Literal["vision", "projector", "language"]] = Field(default_factory=list)
    lora: LoraSection | None = None
    labels: Literal["assistant", "all"] = "assistant"
    max_length: PositiveInt = 4096
    preprocess_concurrency: PositiveInt | None = Field(
        None, description="most preprocessing tasks at once per training worker (default: as CPUs allow)"
    )
    shuffle_buffer: PositiveInt = Field(256, description="encoded samples mixed per worker and epoch")
    cache_mb: int = Field(
        1024, ge=0, description="keep a worker's encoded samples for later epochs while they fit (0: stream)"
    )
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: only the final model)")
    keep_checkpoints: PositiveInt = 2
    max_failures: int = Field(0, ge=-1, description="worker failures to recover from (-1: any number)")
    resume: bool = Field(True, description="continue an unfinished run of the same job and output")
    seed: int = 0

    @model_validator(mode="after")
    def _trainable(self) -> TrainConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if not self.lora and set(self.freeze) >= {"vision", "projector", "language"}:
            raise ValueError("every part is frozen and there is no LoRA: nothing would train")
        return self


class MixSourceConfig(Section):
    """Take ``count`` rows, or a ``ratio`` of ``mix.total``, or (neither) every row of a dataset."""

    dataset: str
    count: PositiveInt | None = None
    ratio: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_amount(self) -> MixSourceConfig:
        if self.count is not None and self.ratio is not None:
            raise ValueError("give either count or ratio, not both")
        return self


class MixConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    sources: list[MixSourceConfig] = Field(min_length=1)
    total: PositiveInt | None = Field(None, description="size of the mix when sources give ratios")
    seed: int = 0
    rows_per_shard: PositiveInt = 256

    @model_validator(mode="after")
    def _ratios_need_total(self) -> MixConfig:
        ratios = [s.ratio for s in self.sources if s.ratio is not None]
        if ratios and self.total is None:
            raise ValueError("sources with a ratio need mix.total")
        if sum(ratios) > 1 + 1e-9:
            raise ValueError(f"ratios add up to {sum(ratios):g}, more than 1")
        return self


class AutoscalingSection(Section):
    """Ray Serve autoscaling: replicas follow the requests each replica has in flight."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = 8


class ServeExample(Section):
    """One request the serve stage sends once the app is up: the answer and a ``curl`` line to copy."""

    video: str = Field(description="a video path inside allowed_roots, or any URL the app accepts")
    question: str
    max_tokens: PositiveInt = 16


class ServeConfig(Section):
    """The Ray Serve app: which model, how it scales and batches, and what a request may ask of it.

    Frames are sampled as the model was trained (``vidtune.json`` beside it); a request may override
    ``frames`` and ``max_pixels`` up to ``max_frames`` and ``max_pixels``.
    """

    model: str = Field(
        description="models:/NAME/VERSION or models:/NAME/latest, runs:/RUN_ID/model, or a Hugging Face "
        "folder (local or s3://) with vidtune.json"
    )
    name: str | None = Field(None, description="the model id in /v1/models; defaults to the registered name")
    host: str = "127.0.0.1"
    port: PositiveInt = 8000
    route_prefix: str = "/"
    app_name: str = "vidtune"
    num_replicas: PositiveInt = Field(1, description="model replicas")
    autoscaling: AutoscalingSection | None = Field(None, description="model replicas that follow the load")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 1},
        description="per model replica, e.g. {num_cpus: 4, num_gpus: 1}",
    )
    ingress_replicas: PositiveInt = Field(1, description="HTTP replicas: fetch, decode and encode on CPU")
    ingress_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_batch_size: PositiveInt = Field(8, description="requests answered by one generate call (1: off)")
    batch_wait_s: float = Field(0.01, ge=0, description="how long a batch waits to fill")
    max_ongoing_requests: PositiveInt = Field(32, description="per HTTP replica; beyond it requests queue")
    max_queued_requests: int = Field(64, ge=-1, description="beyond it requests get 503 (-1: no limit)")
    allowed_roots: list[str] = Field(
        default_factory=list, description="local folders a request may name videos in (none: no paths)"
    )
    allowed_schemes: list[Literal["data", "http", "https", "s3", "file"]] = Field(
        default_factory=lambda: ["data", "http", "https", "s3", "file"]
    )
    max_video_mb: PositiveFloat = 64
    max_duration_s: PositiveFloat = Field(3600, description="longer videos get 413")
    fetch_timeout_s: PositiveFloat = 10
    max_frames: PositiveInt = Field(64, description="most frames a request may ask for")
    max_pixels: PositiveInt = Field(448 * 448, description="most pixels a frame a request may ask for")
    max_tokens: PositiveInt = Field(1024, description="most new tokens a request may ask for")
    default_max_tokens: PositiveInt = 256
    api_key_env: str | None = Field(
        None, description="environment variable holding the bearer token clients must send (none: open)"
    )
    block: bool | None = Field(
        None, description="keep serving until Ctrl-C after the stage (none: when run from a terminal)"
    )
    example: ServeExample | None = None


class EvalModelConfig(Section):
    """One model to grade: loaded by Ray Data actors (``model``) or asked through an OpenAI-compatible
    ``endpoint`` (the vidtune Serve app, or another server)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="its column in the tables")
    model: str | None = Field(None, description="models:/NAME/VERSION|latest, runs:/ID/model, or a folder")
    endpoint: str | None = Field(None, description="an OpenAI-compatible base URL, e.g. http://host:8000/v1")
    served_model: str | None = Field(None, description="the `model` field sent to the endpoint")
    api_key_env: str | None = Field(None, description="environment variable with the endpoint's bearer token")

    @model_validator(mode="after")
    def _one_source(self) -> EvalModelConfig:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("give exactly one of model and endpoint")
        return self


class EvalBenchmarkConfig(Section):
    """A benchmark in its public release format, decoded once into eval clips named ``name``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: Literal["video-mme", "mvbench", "tempcompass", "mc"]
    annotations: str = Field(
        description="Video-MME parquet/JSON, MVBench JSON folder, TempCompass JSON, or JSONL"
    )
    video_root: str | None = None
    video_roots: dict[str, str] = Field(default_factory=dict, description="MVBench: video folder per task")
    tasks: list[str] | None = Field(None, description="MVBench: these tasks only")
    limit: PositiveInt | None = Field(None, description="the first N items only")


class NeedleSection(Section):
    kind: Literal["text", "image", "clip"] = "text"
    text: str | None = None
    image: str | None = None
    clip: str | None = None
    answer: str
    distractors: list[str] = Field(default_factory=list)
    question: str = "What is the secret word shown in the video?"
    seconds: PositiveFloat = 1.0


class NiavhConfig(Section):
    """Needle in a Video Haystack: the needle inserted into haystacks of each length at each depth."""

    name: str = Field("niavh", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    haystacks: list[str] = Field(min_length=1, description="videos the haystacks are cut from (looped)")
    needle: NeedleSection
    lengths: list[PositiveFloat] = Field(min_length=1, description="haystack lengths in seconds")
    depths: PositiveInt = Field(5, description="needle depths from 0 to 100% in even steps")
    max_pixels: PositiveInt | None = None
    seed: int = 0


class EvalConfig(Section):
    """``vidtune eval``: benchmarks and NIAVH, each model's accuracy overall and per category."""

    models: list[EvalModelConfig] = Field(min_length=1)
    benchmarks: list[EvalBenchmarkConfig] = Field(default_factory=list)
    niavh: NiavhConfig | None = None
    sampling: SamplingConfig | None = Field(None, description="none: the first model's vidtune.json")
    max_pixels: PositiveInt | None = Field(None, description="none: the first model's vidtune.json")
    replicas: PositiveInt = Field(1, description="model actors per model (Ray Data)")
    num_gpus: float = Field(0, ge=0, description="GPUs per model actor")
    num_cpus: PositiveFloat = 1
    batch_size: PositiveInt = Field(8, description="clips answered by one generate call")
    max_new_tokens: PositiveInt = 16
    concurrency: PositiveInt = Field(8, description="requests in flight to an endpoint")
    decode_batch_size: PositiveInt = Field(4, description="videos per decode task")

    @model_validator(mode="after")
    def _something_to_run(self) -> EvalConfig:
        if not self.benchmarks and self.niavh is None:
            raise ValueError("give benchmarks, niavh, or both")
        return self


class JobConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    stages: list[Literal["prepare", "synth", "mix", "diversity", "train", "eval", "serve"]] = Field(
        default_factory=list, description="what `vidtune run` does"
    )
    # Factories, not instances: the defaults read the environment when a job is loaded, not at import.
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    prepare: PrepareConfig | None = None
    synth: SynthConfig | None = None
    mix: MixConfig | None = None
    diversity: DiversityConfig | None = None
    train: TrainConfig | None = None
    eval: EvalConfig | None = None
    serve: ServeConfig | None = None

    @model_validator(mode="after")
    def _stages_have_sections(self) -> JobConfig:
        missing = [s for s in self.stages if getattr(self, s) is None]
        if missing:
            raise ValueError(f"stages {missing} are listed but have no section")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def section(self, stage: str) -> Any:
        """The config of one stage; a clear error if the job file lacks it."""
        value = getattr(self, stage, None)
        if value is None:
            raise JobFileError(f"job '{self.name}'", [(stage, f"this job file has no '{stage}' section")])
        return value


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts and lists, creating dicts on the way."""
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"\d+", key) or int(key) >= len(node):
                raise JobFileError("--set", [(dotted, f"'{key}' is not an index of a list of {len(node)}")])
            idx = int(key)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise JobFileError("--set", [(dotted, f"'{'.'.join(keys[:i])}' is not a section")])
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """``section.key=value`` strings; values are YAML (``16``, ``true``, ``[a, b]``, ``s3://x``)."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise JobFileError("--set", [(pair, "expected section.key=value")])
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def _loc(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith("function-") or item in ("literal", "list"):
            continue  # pydantic's internal validator names, not keys the user wrote
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def validate_job(raw: Any, source: str = "<job>") -> JobConfig:
    if not isinstance(raw, dict):
        raise JobFileError(source, [("", f"a job file is a mapping of sections, got {type(raw).__name__}")])
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown key (misspelt, or not a setting of this section)"
            problems.append((_loc(err["loc"]), reason))
        raise JobFileError(source, problems) from None


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job file, apply ``--set`` overrides, and validate it all before any work."""
    path = Path(path)
    if not path.is_file():
        raise JobFileError(str(path), [("", "no such file")])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise JobFileError(str(path), [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if isinstance(raw, dict):
        for key, value in parse_overrides(overrides or []):
            _set_path(raw, key, value)
    return validate_job(raw, str(path))
