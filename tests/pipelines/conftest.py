"""Fixtures of the pipeline tests: a local Ray, the example images, jobs, and fault-injecting stages.

The fault stages below are real stage classes (registered in ``annotators.base.STAGES``) that follow
the keypoints stage: ``quality/fault`` raises for chosen samples (per row or for the whole batch)
and can kill its own worker process once. Ray ships them to workers by value (cloudpickle), so no
worker needs to import this file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from annotators.base import STAGES, Stage
from annotators.batches import Batch
from pipelines.annotation import config as cfg

REPO = Path(__file__).resolve().parents[2]
FAST_STAGES = ("persons/mediapipe", "keypoints/mediapipe")
"""The plan of the job tests (the full default plan has its own test in test_full_plan.py)."""
SHARED_EXAMPLES = REPO.parent / "shared" / "examples"


@pytest.fixture(scope="session", autouse=True)
def pearl_cache(tmp_path_factory) -> Path:
    """A session cache folder (PEARL_CACHE) holding the synthetic kit the job makes on first use (never the
    user's ``~/.cache``)."""
    path = tmp_path_factory.mktemp("pearl-cache")
    old = os.environ.get("PEARL_CACHE")
    os.environ["PEARL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PEARL_CACHE", None)
    else:
        os.environ["PEARL_CACHE"] = old


@pytest.fixture(scope="session")
def ray_local(pearl_cache):
    """A local Ray with 2 CPUs for the whole session (the Ray tests share it)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "PEARL_CACHE": str(pearl_cache)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The project's example images (``examples/``), falling back to the shared originals."""
    for folder in (REPO / "examples", SHARED_EXAMPLES):
        if folder.is_dir() and any(p.suffix.lower() in (".jpg", ".png") for p in folder.iterdir()):
            return folder
    pytest.skip("no example images")


@pytest.fixture(scope="session")
def labelled_examples(tmp_path_factory, examples_dir) -> Path:
    """A COCO-style json over copies of the examples, one person box each (so the persons stage skips its
    detector): ``<tmp>/labels.json`` with the images beside it; sample keys ``labels/<name>``."""
    import json

    from PIL import Image

    folder = copy_example_images(examples_dir, tmp_path_factory.mktemp("labelled"))
    images, annotations = [], []
    for i, path in enumerate(sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))):
        w, h = Image.open(path).size
        images.append({"id": i, "file_name": path.name, "width": w, "height": h})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                            "bbox": [0.05 * w, 0.02 * h, 0.9 * w, 0.96 * h]})
    labels = folder / "labels.json"
    labels.write_text(json.dumps({"images": images, "annotations": annotations,
                                  "categories": [{"id": 1, "name": "person"}]}))
    return labels


def make_job_config(inputs: list[str | Path], out: str | Path, *, stages: list[str] | None = None,
               runner: str = "loop", images_per_shard: int = 2, **sink: object) -> cfg.AnnotateConfig:
    """A job config for tests: loop runner, small shards, no progress bars."""
    specs = [cfg.StageSpec(name=s) for s in (stages or list(FAST_STAGES))]
    return cfg.AnnotateConfig(
        source=cfg.SourceConfig(inputs=[str(p) for p in inputs]),
        stages=specs,
        sink=cfg.SinkConfig(out=str(out), images_per_shard=images_per_shard, **sink),
        ray=cfg.RayConfig(progress_bars=False),
        runner=runner,
    )


def hash_files(out: Path, folders: tuple[str, ...] = ("wds", "parquet", "quarantine")) -> dict[str, str]:
    """sha256 of every file under ``out/<folder>`` for the given folders, by relative path."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders if (out / folder).is_dir() for p in sorted((out / folder).rglob("*")) if p.is_file()}


def copy_example_images(examples: Path, dest: Path, repeat: int = 1) -> Path:
    """Copy the example images into ``dest`` (``repeat`` copies each, as ``r{i}_<name>``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(examples.iterdir()):
        if src.suffix.lower() in (".jpg", ".jpeg", ".png"):
            for i in range(repeat):
                shutil.copy(src, dest / (f"r{i:03d}_{src.name}" if repeat > 1 else src.name))
    return dest


@pytest.fixture(scope="session")
def job_config():
    """:func:`make_job_config`."""
    return make_job_config


@pytest.fixture(scope="session")
def file_hashes():
    """:func:`hash_files`."""
    return hash_files


@pytest.fixture(scope="session")
def copy_examples():
    """:func:`copy_example_images`."""
    return copy_example_images


# --------------------------------------------------------------------------------------------------
# Fault-injecting stage
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FaultConfig:
    """What :class:`FaultStage` does."""

    raise_for: str = ""
    """Rows whose sample key contains this substring raise inside the per-row function."""
    batch_raise_for: str = ""
    """A batch holding such a row raises as a whole (the adapter then retries its rows one by one)."""
    kill_flag: str = ""
    """If set and this file does not exist yet: create it, then kill this worker process (once)."""


class FaultStage(Stage):
    """A stage that fills ``conf_body`` and injects faults (see :class:`FaultConfig`)."""

    name = "quality/fault"
    config_class = FaultConfig
    required = ("sample_key",)

    def _row(self, row: dict) -> dict:
        if self.config.raise_for and self.config.raise_for in row["sample_key"]:
            raise RuntimeError(f"injected failure for {row['sample_key']}")
        return {"conf_body": np.float32(0.5), "has_kp_body": True}

    def __call__(self, batch: Batch) -> Batch:
        flag = self.config.kill_flag
        if flag and not os.path.exists(flag):
            Path(flag).write_text(str(os.getpid()))
            os._exit(1)  # the actor's process dies mid-batch
        keys = [str(k) for k in batch["sample_key"]]
        if self.config.batch_raise_for and any(self.config.batch_raise_for in k for k in keys):
            raise RuntimeError("injected whole-batch failure")
        return self.map_rows(batch, self._row, {"conf_body": np.float32(0.0), "has_kp_body": False})


try:
    STAGES.register(FaultStage.name)(FaultStage)
except ValueError:  # this module was imported a second time
    pass

from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free port of 127.0.0.1, with env credentials; yields an s3fs filesystem (the
    module's tests share the server: use a bucket of your own)."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": env["AWS_ENDPOINT_URL"]}}
    try:
        yield fsspec.filesystem("s3", skip_instance_cache=True)
    finally:
        fsspec.config.conf.pop("s3", None)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="session")
def annotated_examples(tmp_path_factory, examples_dir, job_config):
    """``(out, report)`` of the default plan run on the shipped examples (4 images per shard): the annotate
    tests read it, and the trainer trains on it."""
    from pipelines.annotation.job import run_job

    out = tmp_path_factory.mktemp("full-plan")
    config = job_config([examples_dir], out, stages=list(cfg.DEFAULT_STAGES), images_per_shard=4)
    return out, run_job(config)
