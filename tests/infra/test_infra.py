"""The cluster files in infra/ against what the annotation job expects (entrypoint, flags, resources)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.annotation import config as cfg
from pipelines.annotation import job as annotate

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BODY_MODELS = "/data/body_models"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_yaml(name: str) -> Any:
    return yaml.safe_load((INFRA / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return load_yaml("cluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return load_yaml("rayjob.yaml")


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    annotate.add_arguments(parser)
    return parser


def parse_entrypoint(command: str) -> tuple[str, cfg.AnnotateConfig]:
    """The script of ``python SCRIPT ARGS`` and the job config its arguments give (exits on bad flags)."""
    words = shlex.split(command)
    assert words[0] == "python", command
    args = job_parser().parse_args(words[2:])
    return words[1], annotate.config_from_args(args)


def default_stages() -> list[cfg.StageSpec]:
    """The default stage plan with the resources the job would give each stage."""
    return cfg.resolve(cfg.AnnotateConfig(source=cfg.SourceConfig(inputs=["x"]), sink=cfg.SinkConfig(out="y"))).stages


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``"8"``, ``"500m"``, ``1``) as a number of units."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_templates(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def fits(stage: cfg.StageSpec, cpus: float, gpus: float) -> bool:
    r = stage.resources
    return r.num_cpus <= cpus and r.num_gpus <= gpus


def ray_version() -> str:
    import ray

    return ray.__version__


# --------------------------------------------------------------------------------------------------
# cluster.yaml (Ray cluster launcher)
# --------------------------------------------------------------------------------------------------


def test_cluster_yaml_validates_against_ray_schema(cluster):
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(cluster))
    prepared = prepare_config(copy.deepcopy(cluster))  # merges Ray's AWS defaults, as `ray up` does
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    bad = copy.deepcopy(cluster)  # the schema is strict enough to catch a fractional node resource
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(ValidationError):
        validate_config(bad)


def test_cluster_has_gpu_workers_and_a_cpu_head(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_groups = {n: t for n, t in types.items()
                  if n != cluster["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu_groups, "no worker group advertises GPUs"
    for name, group in gpu_groups.items():
        assert 0 <= group["min_workers"] <= group["max_workers"] <= cluster["max_workers"], name
        assert group["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5")), name


def test_cluster_installs_pearl_from_the_mounted_tree(cluster):
    mounts = cluster["file_mounts"]
    tree = [remote for remote, local in mounts.items() if local == "."]
    assert len(tree) == 1, "the working tree must be mounted once"
    setup = " ".join(cluster["setup_commands"])
    assert f"cd {tree[0]}" in setup and "bash install.sh" in setup
    assert BODY_MODELS in mounts
    assert f"PEARL_BODY_MODELS={BODY_MODELS}" in " ".join(cluster["docker"]["run_options"])
    assert ".venv" in cluster["rsync_exclude"]
    # the container's Ray and Python are the ones pearl pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = re.search(r">=(\d+\.\d+)", project["requires-python"]).group(1)
    assert cluster["docker"]["image"].endswith(f":{ray_version()}-py{python.replace('.', '')}-gpu")
    pins = [d for d in project["dependencies"] if re.match(r"ray\[", d)]
    assert len(pins) == 1 and pins[0].endswith(f"]=={ray_version()}"), pins
    assert {"data", "default"} <= set(re.match(r"ray\[([^\]]+)\]", pins[0]).group(1).split(","))


def test_cluster_entrypoint_parses_with_the_job_flags(cluster):
    header = (INFRA / "cluster.yaml").read_text(encoding="utf-8")
    match = re.search(r"ray submit infra/cluster\.yaml (\S+) -- \\\n#\s+(.+)", header)
    assert match, "cluster.yaml documents no `ray submit ... -- ARGS` command"
    script, config = parse_entrypoint(f"python {match.group(1)} {match.group(2)}")
    assert (ROOT / script).is_file()
    assert config.body_models == BODY_MODELS and config.sink.out.startswith("s3://")


def assert_fits_cluster(stages: list[cfg.StageSpec], cluster: dict[str, Any]) -> None:
    """Every stage's actor fits one worker node, and all actors fit the workers at full scale."""
    workers = [t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]]
    for stage in stages:
        assert any(fits(stage, w["resources"].get("CPU", 0), w["resources"].get("GPU", 0)) for w in workers), stage
    for kind in ("CPU", "GPU"):
        share = "num_cpus" if kind == "CPU" else "num_gpus"
        wanted = sum(getattr(s.resources, share) * s.resources.num_actors for s in stages)
        assert wanted <= sum(w["resources"].get(kind, 0) * w["max_workers"] for w in workers), (kind, stages)


def test_default_stages_fit_the_cluster_nodes(cluster):
    assert_fits_cluster(default_stages(), cluster)
    too_big = [dataclasses.replace(s, resources=dataclasses.replace(s.resources, num_gpus=2)) for s in default_stages()]
    with pytest.raises(AssertionError):
        assert_fits_cluster(too_big, cluster)


# --------------------------------------------------------------------------------------------------
# rayjob.yaml (KubeRay)
# --------------------------------------------------------------------------------------------------


def test_rayjob_has_the_fields_kuberay_requires(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert DNS_1123.match(rayjob["metadata"]["name"])
    spec = rayjob["spec"]
    assert spec["entrypoint"].strip()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_version()
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    names = set()
    for group in cluster["workerGroupSpecs"]:
        assert DNS_1123.match(group["groupName"]) and group["groupName"] not in names
        names.add(group["groupName"])
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for template in pod_templates(rayjob):
        pod = template["spec"]
        ray_container = pod["containers"][0]  # KubeRay runs Ray in the first container
        assert ray_container["image"] and ray_container["name"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for mount in ray_container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"volumeMount {mount['name']} has no volume"


def test_rayjob_gpu_workers_and_body_models(rayjob):
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu, "no worker group asks for nvidia.com/gpu"
    for group in gpu:
        res = group["template"]["spec"]["containers"][0]["resources"]
        # extended resources: Kubernetes requires requests == limits
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] >= 1
        assert "num-gpus" not in group["rayStartParams"], "let Ray read the GPU count from the limit"
    for template in pod_templates(rayjob):
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        assert any(m["mountPath"] == BODY_MODELS and m.get("readOnly") for m in mounts)


def test_rayjob_entrypoint_and_runtime_env(rayjob):
    from ray.runtime_env import RuntimeEnv

    script, config = parse_entrypoint(rayjob["spec"]["entrypoint"])
    assert script == "pipelines/annotate.py" and (ROOT / script).is_file()
    assert config.body_models == BODY_MODELS and config.sink.mode == "incremental"
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert env["working_dir"].endswith(".zip")
    RuntimeEnv(**env)  # Ray's own validation of the fields


def test_default_stages_fit_the_kuberay_workers(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "the head runs no actors"
    workers = []
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        workers.append((quantity(limits["cpu"]), quantity(limits.get("nvidia.com/gpu", 0))))
    for stage in default_stages():
        assert any(fits(stage, cpus, gpus) for cpus, gpus in workers), stage


# --------------------------------------------------------------------------------------------------
# Dockerfile, runtime_env.yaml, docs
# --------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = (INFRA / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def test_dockerfile_builds_pearl_with_install_sh():
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    base = next(a for i, a in steps if i == "FROM")
    assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) == "python:3.11-slim"
    runs = [a for i, a in steps if i == "RUN"]
    assert any("bash install.sh" in r for r in runs)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert args["PEARL_EXTRAS"] in extras
    for instruction, arguments in steps:
        if instruction == "COPY":  # every source exists, nothing but code and install files
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert not source.endswith((".pkl", ".npz", ".pt", ".ckpt", ".onnx", ".tflite"))
        assert instruction != "ADD", "ADD can fetch URLs; copy files with COPY, fetch no weights"
    env = " ".join(a for i, a in steps if i == "ENV")
    assert f"PEARL_BODY_MODELS={BODY_MODELS}" in env


def test_runtime_env_file_is_valid():
    from ray.runtime_env import RuntimeEnv

    env = load_yaml("runtime_env.yaml")
    RuntimeEnv(**env)
    assert env["working_dir"] == "." and ".venv" in env["excludes"]
    assert env["env_vars"]["PEARL_BODY_MODELS"] == BODY_MODELS


def doc_configs() -> list[str]:
    text = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_docs_config_examples_resolve_and_fit_the_cluster(cluster):
    blocks = doc_configs()
    assert blocks, "docs/cluster.md shows no config example"
    for block in blocks:
        config = cfg.config_from_dict(yaml.safe_load(block), where="docs/cluster.md")
        config.source.inputs, config.sink.out = ["x"], "y"
        assert_fits_cluster(cfg.resolve(config).stages, cluster)
