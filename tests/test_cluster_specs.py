"""The cluster specs in clusters/, checked with the Ray they run on and against the commands README.md gives.

No cluster starts: each spec is parsed and checked with Ray's own validators (the runtime env, the cluster
launcher's JSON schema, the click commands behind ``ray start`` and ``ray job submit``, the packaging that
uploads a working_dir), and each check is shown to fail on a broken input first.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import click
import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
from ray.dashboard.modules.job.cli import submit as job_submit
from ray.runtime_env import RuntimeEnv
from ray.scripts.scripts import cli as ray_cli
from ray.scripts.scripts import start as ray_start
from ray.scripts.scripts import stop as ray_stop

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
ENV_KEYS = {"VIDTUNE_STORAGE_ROOT", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3"}
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY")
PAPER_JOB = "jobs/paper-qwen2vl-7b.yaml"


def _yaml(rel: str):
    return yaml.safe_load((ROOT / rel).read_text())


def _runtime_env() -> dict:
    # Loaded as `ray job submit --runtime-env FILE` loads it.
    return parse_runtime_env_args(runtime_env=str(CLUSTERS / "runtime-env.yaml"))


def _command(line: str) -> list[str]:
    """A README shell line as tokens, without its trailing `# comment` and `&`."""
    tokens = shlex.split(line, comments=True)
    return tokens[:-1] if tokens and tokens[-1] == "&" else tokens


def _readme_cluster_lines() -> list[str]:
    """The lines of the ```bash blocks in README.md's "On a Ray cluster" section."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## On a Ray cluster")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert lines, "README.md's 'On a Ray cluster' section has no bash commands"
    return lines


def _readme_submit_lines() -> list[str]:
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    return [line for line in lines if line.startswith("ray job submit")]


def _option_names(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


# --- the runtime env -----------------------------------------------------------------------------------


def test_runtime_env_has_only_fields_ray_knows():
    spec = _runtime_env()
    # RuntimeEnv hands a key it does not know to a runtime-env plugin and fails only when the job starts,
    # so the keys are checked against Ray's list, and the values by building the RuntimeEnv.
    assert not {"working_dirr"} <= RuntimeEnv.known_fields
    with pytest.raises(TypeError):
        RuntimeEnv(env_vars={"VIDTUNE_STORAGE_ROOT": 1})
    assert set(spec) <= RuntimeEnv.known_fields, set(spec) - RuntimeEnv.known_fields
    assert RuntimeEnv(**spec)["env_vars"] == spec["env_vars"]


def test_runtime_env_ships_the_repository_and_the_package_source(tmp_path):
    from ray._private.runtime_env.packaging import _get_excludes, create_package

    spec = _runtime_env()
    assert (ROOT / spec["working_dir"]).resolve() == ROOT
    assert spec["py_modules"] == ["platform/vidtune"]
    for module in spec["py_modules"]:
        assert (ROOT / module / "__init__.py").is_file(), module
    assert (ROOT / "platform/vidtune/__init__.py").is_file()

    # What `ray job submit` zips and uploads: the excludes alone (without .gitignore) keep out the
    # virtualenv, the git history and local data (checked path by path first, so that a missing exclude
    # fails at once instead of zipping .venv), and keep the job files.
    excluded = _get_excludes(ROOT, spec["excludes"])
    for rel in (
        ".git",
        ".venv",
        "vidtune-data",
        "mlruns",
        "mlflow.db",
        "a/b.mp4",
        "platform/vidtune/__pycache__",
    ):
        assert excluded(ROOT / rel), rel
    for rel in ("jobs", PAPER_JOB, "platform/vidtune/__init__.py", "serve"):
        assert not excluded(ROOT / rel), rel
    create_package(str(ROOT), tmp_path / "wd.zip", include_gitignore=False, excludes=spec["excludes"])
    names = zipfile.ZipFile(tmp_path / "wd.zip").namelist()
    tops = {name.split("/")[0] for name in names}
    assert not tops & {".git", ".venv", "vidtune-data", "mlruns", "mlflow.db"}, tops
    assert not [name for name in names if "__pycache__" in name or name.endswith(".mp4")]
    assert PAPER_JOB in names

    # A py_modules directory is zipped with its own name on top: on a worker it imports as `vidtune`.
    create_package(
        str(ROOT / "platform/vidtune"),
        tmp_path / "pm.zip",
        include_gitignore=False,
        include_parent_dir=True,
        excludes=spec["excludes"],
    )
    assert "vidtune/__init__.py" in zipfile.ZipFile(tmp_path / "pm.zip").namelist()


def test_runtime_env_vars_are_places_not_secrets():
    env = _runtime_env()["env_vars"]
    assert set(env) == ENV_KEYS
    for key, value in env.items():
        assert not any(word in key.upper() for word in SECRET_WORDS), key
        url = urlparse(value)
        assert url.scheme in {"s3", "http", "https"} and url.netloc, (key, value)
        assert url.username is None and url.password is None, f"{key} carries credentials"


# --- README.md's commands ------------------------------------------------------------------------------


def test_readme_job_submit_lines_parse_with_ray_job_submit():
    with pytest.raises(click.NoSuchOption):
        job_submit.make_context("submit", ["--no-such-option", "x", "--", "python"])

    lines = _readme_submit_lines()
    assert len(lines) >= 3, lines
    for line in lines:
        assert "--runtime-env clusters/runtime-env.yaml -- python -m vidtune run jobs/" in line, line
        tokens = _command(line)
        assert tokens[:3] == ["ray", "job", "submit"]
        params = job_submit.make_context("submit", tokens[3:]).params
        assert params["address"].startswith("http://") and params["address"].endswith(":8265"), line
        assert params["runtime_env"] == "clusters/runtime-env.yaml"
        entrypoint = params["entrypoint"]
        assert entrypoint[:4] == ("python", "-m", "vidtune", "run") and len(entrypoint) == 5, line
        assert entrypoint[4] == "jobs/NAME.yaml" or (ROOT / entrypoint[4]).is_file(), line


def test_readme_cluster_commands_name_existing_files():
    named = set()
    for line in _readme_cluster_lines():
        tokens = _command(line)
        if tokens[0] == "ray" and tokens[1] in {"up", "dashboard", "down"}:
            ray_cli.commands[tokens[1]].make_context(tokens[1], tokens[2:])  # the options `ray` accepts
        for token in tokens:
            if re.match(r"(clusters|jobs)/", token) and token != "jobs/NAME.yaml":
                named.add(token)
    assert {"clusters/Dockerfile", "clusters/runtime-env.yaml", "clusters/aws.yaml"} <= named
    assert {"clusters/kuberay/raycluster.yaml", "clusters/kuberay/rayjob.yaml"} <= named
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, missing


# --- the cluster launcher (AWS) ------------------------------------------------------------------------


def test_aws_config_validates_against_the_cluster_launcher_schema():
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = _yaml("clusters/aws.yaml")
    for broken in ({"max_worker": 12}, {"max_workers": "x"}):
        bad = {**copy.deepcopy(config), **broken}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    workers = [t.get("max_workers", 0) for n, t in config["available_node_types"].items() if n != "head"]
    assert config["max_workers"] >= sum(workers), "max_workers keeps a node type below its own maximum"


def test_aws_start_commands_parse_with_ray_start():
    with pytest.raises(click.NoSuchOption):
        ray_start.make_context("start", ["--head", "--no-such-option"])

    config = _yaml("clusters/aws.yaml")
    starts = {}
    for field in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config[field]:
            for part in re.split(r"&&|;", command.replace("$RAY_HEAD_IP", "127.0.0.1")):
                tokens = shlex.split(part)
                if tokens[:2] == ["ray", "start"]:
                    starts[field] = ray_start.make_context("start", tokens[2:]).params
                elif tokens[:2] == ["ray", "stop"]:
                    ray_stop.make_context("stop", tokens[2:])
    head, worker = starts["head_start_ray_commands"], starts["worker_start_ray_commands"]
    assert head["head"] and head["port"] == 6379 and head["dashboard_host"] == "0.0.0.0"
    assert head["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert not worker["head"] and worker["address"] == "127.0.0.1:6379"


def test_aws_data_resource_only_on_cpu_nodes():
    config = _yaml("clusters/aws.yaml")
    types = config["available_node_types"]
    assert types["head"]["resources"].get("CPU") == 0
    assert types["cpu"]["resources"].get("data", 0) > 0
    assert "data" not in types["gpu"]["resources"] and types["gpu"]["resources"].get("GPU", 0) > 0
    assert "data" not in types["head"]["resources"]
    for name, node_type in types.items():
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: S3 credentials come from it"
    text = (CLUSTERS / "aws.yaml").read_text()
    for key in ENV_KEYS | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"}:
        assert key not in text, f"{key} belongs in the runtime env or the nodes' environment"


# --- KubeRay -------------------------------------------------------------------------------------------


def _kuberay():
    return _yaml("clusters/kuberay/raycluster.yaml"), _yaml("clusters/kuberay/rayjob.yaml")


def _groups(spec: dict) -> dict[str, dict]:
    groups = {"head": spec["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in spec["workerGroupSpecs"]})
    return groups


def _containers(spec: dict) -> list[dict]:
    return [c for g in _groups(spec).values() for c in g["template"]["spec"]["containers"]]


def _shell_value(value: str) -> str:
    """A rayStartParams value as `ray start` gets it: KubeRay puts it in a shell command line."""
    (word,) = shlex.split(value)
    return word


def test_kuberay_manifests_kinds_and_versions():
    cluster, job = _kuberay()
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_kuberay_ray_start_params_are_ray_start_options():
    cluster, _ = _kuberay()
    options = _option_names(ray_start)
    assert "--no-such-option" not in options
    for name, group in _groups(cluster["spec"]).items():
        params = group["rayStartParams"]
        unknown = {f"--{key}" for key in params} - options
        assert not unknown, f"{name}: {unknown}"
        args = [f"--{key}={_shell_value(value)}" for key, value in params.items()]
        ray_start.make_context("start", ["--head" if name == "head" else "--address=127.0.0.1:6379", *args])


def test_kuberay_data_resource_only_on_cpu_group_and_gpus_on_gpu_group():
    cluster, _ = _kuberay()
    groups = _groups(cluster["spec"])
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"
    resources = json.loads(_shell_value(groups["cpu"]["rayStartParams"]["resources"]))
    assert resources.get("data", 0) > 0
    gpu = groups["gpu"]
    assert "data" not in json.loads(_shell_value(gpu["rayStartParams"].get("resources", '"{}"')))
    (container,) = gpu["template"]["spec"]["containers"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) > 0 and gpu["rayStartParams"]["num-gpus"] == str(gpus)
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
    for name in ("head", "cpu"):
        for c in groups[name]["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), name


def test_kuberay_containers_read_the_readme_secret():
    cluster, _ = _kuberay()
    (secret_line,) = [line for line in _readme_cluster_lines() if line.startswith("kubectl create secret")]
    secret = _command(secret_line)[4]
    for container in _containers(cluster["spec"]):
        assert {"secretRef": {"name": secret}} in container["envFrom"], container["name"]
        assert not [e for e in container.get("env", []) if any(w in e["name"] for w in SECRET_WORDS)]


def test_kuberay_head_service_is_the_one_readme_forwards():
    cluster, _ = _kuberay()
    (line,) = [line for line in _readme_cluster_lines() if line.startswith("kubectl port-forward")]
    tokens = _command(line)
    assert tokens[3] == "8265:8265"
    assert tokens[2] == f"service/{cluster['metadata']['name']}-head-svc"
    ports = {
        p["containerPort"]
        for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {6379, 8265, 10001, 8000} <= ports


def test_rayjob_runs_what_readme_submits():
    _, job = _kuberay()
    lines = [line for line in _readme_submit_lines() if PAPER_JOB in line]
    assert lines
    for line in lines:
        tokens = _command(line)
        assert job["spec"]["entrypoint"] == shlex.join(tokens[tokens.index("--") + 1 :])
    assert (ROOT / PAPER_JOB).is_file()


def test_rayjob_runtime_env_sets_the_same_places_without_uploading_code():
    _, job = _kuberay()
    spec = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(spec) <= RuntimeEnv.known_fields
    RuntimeEnv(**spec)
    # The image holds the package and jobs/ in its WORKDIR (see the Dockerfile test).
    assert "working_dir" not in spec and "py_modules" not in spec
    assert set(spec["env_vars"]) == set(_runtime_env()["env_vars"]) == ENV_KEYS


# --- KubeRay: the RayService --------------------------------------------------------------------------

SERVE_PLACES = {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3"}


def _rayservice() -> dict:
    return _yaml("clusters/kuberay/rayservice.yaml")


def _serve_config(service: dict) -> dict:
    text = service["spec"]["serveConfigV2"]
    assert isinstance(text, str), "KubeRay takes serveConfigV2 as a string: `serveConfigV2: |`"
    return yaml.safe_load(text)


def _validate_serve_config(raw: dict):
    """As tests/test_config.py checks serve/*.yaml: Serve's own schema, the app builder, the app's args."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from vidtune.serving.app import AppArgs, build_app

    config = ServeDeploySchema.model_validate(raw)
    for app in config.applications:
        module, _, attr = app.import_path.partition(":")
        assert getattr(importlib.import_module(module), attr) is build_app
        args = AppArgs(**app.args)
        assert args.model.startswith("models:/")
    return config


def _without_env(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for container in _containers(spec):
        container.pop("env", None)
    return spec


def test_rayservice_cluster_is_the_raycluster_with_the_places():
    cluster, _ = _kuberay()
    service = _rayservice()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert service["metadata"]["name"] == "vidtune-serve"
    spec = service["spec"]["rayClusterConfig"]
    broken = copy.deepcopy(spec)
    broken["workerGroupSpecs"][1]["rayStartParams"]["num-gpus"] = "4"
    assert _without_env(broken) != cluster["spec"]
    # The RayCluster's spec (its own tests check rayVersion, rayStartParams, groups and the secret) ...
    assert _without_env(spec) == cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    # ... and, in every container, the places a job gets from its runtime env: the app reads
    # MLFLOW_TRACKING_URI when it is built (serve/gpu.yaml names no tracking_uri). Credentials stay in
    # the secret.
    places = _runtime_env()["env_vars"]
    for container in _containers(spec):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert set(env) == SERVE_PLACES, container["name"]
        assert env == {key: places[key] for key in SERVE_PLACES}, container["name"]


def test_rayservice_serve_config_is_serve_gpu_yaml():
    from pydantic import ValidationError

    raw = _serve_config(_rayservice())
    (app,) = raw["applications"]
    for broken in (
        {**raw, "proxy_location": "Everywhere"},  # (Serve's schema ignores an unknown top-level key)
        {**raw, "applications": [{**app, "args": {**app["args"], "max_batch": 16}}]},
    ):
        with pytest.raises(ValidationError):
            _validate_serve_config(broken)
    _validate_serve_config(raw)
    assert raw == _yaml("serve/gpu.yaml"), "serveConfigV2 is serve/gpu.yaml's content: keep them equal"


def test_rayservice_model_replicas_ask_for_the_gpu_group():
    from vidtune.serving.app import AppArgs, Generator, generator_options, ingress_options

    service = _rayservice()
    (app,) = _serve_config(service)["applications"]
    args = AppArgs(**app["args"])
    # The model is in the Generator deployment; its options come from the args, unless the config's
    # `deployments` overrides them.
    model = generator_options(args)
    override = {d["name"]: d for d in app.get("deployments", [])}.get(Generator.name, {})
    actor = override.get("ray_actor_options", model["ray_actor_options"])
    assert actor.get("num_gpus", 0) >= 1, actor
    assert not ingress_options(args)["ray_actor_options"].get("num_gpus"), "HTTP replicas need no GPU"
    gpu = _groups(service["spec"]["rayClusterConfig"])["gpu"]
    most = model.get("autoscaling_config", {}).get("max_replicas", model.get("num_replicas"))
    assert most * actor["num_gpus"] <= int(gpu["rayStartParams"]["num-gpus"]) * gpu["maxReplicas"]


def test_rayservice_header_forwards_its_serve_service():
    service = _rayservice()
    port = _serve_config(service)["http_options"]["port"]
    comments = [
        line.lstrip("#").strip()
        for line in (CLUSTERS / "kuberay/rayservice.yaml").read_text().splitlines()
        if line.startswith("#")
    ]
    (forward,) = [_command(line) for line in comments if line.startswith("kubectl port-forward")]
    # KubeRay names the service of Serve's proxies NAME-serve-svc and gives it the head's `serve` port.
    assert forward[2:4] == [f"service/{service['metadata']['name']}-serve-svc", f"{port}:{port}"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": port, "name": "serve"} in head["ports"]
    assert "kubectl apply -f clusters/kuberay/rayservice.yaml" in comments
    assert any(line.startswith("curl ") and f":{port}/v1/models" in line for line in comments)


# --- the image ----------------------------------------------------------------------------------------


def _dockerfile() -> list[list[str]]:
    lines = [line.strip() for line in (CLUSTERS / "Dockerfile").read_text().splitlines()]
    return [line.split() for line in lines if line and not line.startswith("#")]


def test_dockerfile_base_matches_this_ray_and_python():
    (base,) = [i[1] for i in _dockerfile() if i[0] == "ARG" and i[1].startswith("BASE=")]
    match = re.fullmatch(r"BASE=rayproject/ray:(?P<ray>[0-9.]+)-py(?P<py>[0-9]+)(-[a-z0-9]+)?", base)
    assert match, base
    assert match["ray"] == ray.__version__
    assert match["py"] == f"{sys.version_info.major}{sys.version_info.minor}"
    assert ["FROM", "${BASE}"] in _dockerfile()


def test_dockerfile_copies_existing_paths_into_its_workdir():
    instructions = _dockerfile()
    (workdir,) = [i[1] for i in instructions if i[0] == "WORKDIR"]
    destinations = set()
    for instruction in instructions:
        if instruction[0] != "COPY":
            continue
        *sources, destination = [a for a in instruction[1:] if not a.startswith("--")]
        destinations.add(destination.rstrip("/"))
        for source in sources:
            assert (ROOT / source).exists(), source
    # The RayJob's entrypoint names jobs/... relative to the WORKDIR; pip installs the package from it.
    assert {f"{workdir}/jobs", f"{workdir}/platform"} <= destinations
    assert ["RUN", "pip", "install", "--no-cache-dir", workdir] in instructions
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "vidtune-data"} <= ignored


def test_image_tag_is_the_package_version_everywhere():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    (build,) = [_command(line) for line in _readme_cluster_lines() if line.startswith("docker build")]
    assert build[build.index("-f") + 1] == "clusters/Dockerfile"
    tag = build[build.index("-t") + 1]
    assert tag == f"vidtune:{version}"
    cluster, _ = _kuberay()
    images = {c["image"] for c in _containers(cluster["spec"])}
    images.add(_yaml("clusters/aws.yaml")["docker"]["image"])
    assert {image.rsplit("/", 1)[-1] for image in images} == {tag}, images


@pytest.mark.parametrize(
    "rel", ["clusters/runtime-env.yaml", "clusters/kuberay/rayjob.yaml", "clusters/kuberay/rayservice.yaml"]
)
def test_no_credentials_in_shipped_specs(rel):
    # Both are uploaded with the job and shown in the dashboard: a credential key here is a leak.
    for line in (ROOT / rel).read_text().splitlines():
        code = line.split("#", 1)[0]
        assert not re.search(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY)\w*\s*:", code), line
