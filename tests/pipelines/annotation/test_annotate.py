"""The annotation job end to end: outputs, Ray vs loop, resume, modes, the CLI, a two-node cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import schemas
from pipelines.annotation.job import JobError, code_version, run_job
from pipelines.io.shards import committed_shards, iter_wds, read_parquet

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory, examples_dir, pearl_cache, job_config):
    """One uninterrupted loop-runner job over the examples (2 images per shard)."""
    out = tmp_path_factory.mktemp("loop") / "out"
    report = run_job(job_config([examples_dir], out))
    return out, report


@pytest.mark.slow
def test_job_writes_valid_shards_and_report(loop_run, examples_dir) -> None:
    out, report = loop_run
    images = sorted(p.name for p in examples_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    shards = sorted(committed_shards(out))
    assert shards == [f"train-{i:06d}" for i in range((len(images) + 1) // 2)]
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["splits"]["train"]
    assert manifest["schema_version"] == schemas.SCHEMA_VERSION and entry["body_model_kit"] == "synthetic"
    assert entry["asset_hashes"] and entry["samples"] == len(images)
    assert [s["name"] for s in entry["config"]["stages"]][0].startswith("persons/")

    table = read_parquet(out)
    rows = table.to_pylist()
    assert {r["sample_key"].split("/", 1)[1] for r in rows} == set(images)  # every example has a person
    assert all(r["config_hash"] == entry["config_hash"] and r["body_model_kit"] == "synthetic" for r in rows)
    assert all(json.loads(r["asset_hashes"]) == entry["asset_hashes"] for r in rows)
    assert all(r["key"] == schemas.person_key(r["sample_key"], r["person_index"]) for r in rows)
    assert any(r["has_kp_body"] for r in rows)
    # a plain Parquet reader sees the same rows
    got = duckdb.sql(f"select count(*) from read_parquet('{out}/parquet/*.parquet')").fetchall()[0][0]
    assert got == len(rows)
    # a clean run still has one (empty) quarantine table per shard, so the same query works on it
    assert sorted(p.stem for p in (out / "quarantine").glob("*.parquet")) == shards
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/quarantine/*.parquet')").fetchall()[0][0] == 0
    # WebDataset: the same persons, records that validate, crops that are JPEGs
    samples = list(iter_wds(sorted(str(p) for p in (out / "wds").glob("*.tar"))))
    assert len(samples) == len(rows)
    for sample in samples:
        record = schemas.members_to_record(sample)
        assert schemas.validate(record)["split"] == "train"
        assert sample["crop.jpg"][:2] == b"\xff\xd8"

    totals = report["totals"]
    assert totals["persons"] == len(rows) and totals["samples"] == len(images) and totals["quarantined"] == 0
    assert set(report["throughput"]["stages"]) == {"load", *(s["name"] for s in entry["config"]["stages"])}
    assert sum(totals["confidence_histograms"]["kp_body"]) == 17 * len(rows)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.replace("http-equiv", "")
    assert json.loads((out / "report.json").read_text())["totals"]["persons"] == len(rows)
    assert not (out / ".pearl-lock.json").exists()


@pytest.mark.slow
def test_ray_job_writes_the_same_bytes_as_the_loop(loop_run, examples_dir, ray_local, tmp_path: Path, job_config,
                                                   file_hashes) -> None:
    out, _ = loop_run
    config = job_config([examples_dir], tmp_path / "ray", runner="ray")
    report = run_job(config)
    assert file_hashes(tmp_path / "ray") == file_hashes(out)
    assert report["run"]["runner"] == "ray" and report["throughput"]["stages"]["load"]["rows_in"] == \
        report["totals"]["samples"]


@pytest.fixture(scope="module")
def full_plan_loop(tmp_path_factory, examples_dir, pearl_cache, job_config):
    """The whole default plan over the examples in the plain loop, 2 images per shard (the reference bytes)."""
    out = tmp_path_factory.mktemp("full-loop") / "out"
    config = job_config([examples_dir], out)
    config.stages = []
    return out, run_job(config)


@pytest.mark.slow
def test_full_plan_bytes_match_across_runners_actors_and_resume(full_plan_loop, examples_dir, ray_local,
                                                                tmp_path: Path, job_config, file_hashes) -> None:
    """Same inputs, config and seed, same bytes: the whole default plan (fits and refinement included) on Ray
    with one actor per stage, on Ray with two actors for the fitting stages, and killed after its first shard
    then resumed, against the plain loop."""
    from annotators.base import StageResources
    from pipelines.annotation import config as cfg

    reference, report = full_plan_loop
    want = file_hashes(reference)
    assert report["totals"]["persons"] >= 3 and len(want) >= 4
    runs = {}
    for name, actors in (("ray", 1), ("ray-2-actors", 2)):
        config = job_config([examples_dir], tmp_path / name, runner="ray")
        config.stages = [cfg.StageSpec(n, resources=StageResources(num_cpus=0.1, num_actors=actors if n.split("/")[0]
                                                                  in ("body", "refine", "quality") else 1))
                         for n in cfg.DEFAULT_STAGES]
        runs[name] = run_job(config)
        assert file_hashes(tmp_path / name) == want, name

    def crash(shard: str, stats: dict) -> None:
        raise KeyboardInterrupt(f"killed after {shard}")

    resumed = tmp_path / "resumed"
    config = job_config([examples_dir], resumed)
    config.stages = []
    with pytest.raises(KeyboardInterrupt):
        run_job(config, on_commit=crash)
    assert sorted(committed_shards(resumed)) == ["train-000000"]
    run_job(config)
    assert file_hashes(resumed) == want


def test_crash_and_incremental_resume_give_identical_bytes(labelled_examples, tmp_path: Path, job_config,
                                                          file_hashes) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    full = run_job(job_config([labelled_examples], reference, stages=["persons"]))

    def crash(name: str, stats: dict) -> None:
        raise KeyboardInterrupt(f"killed after {name}")

    with pytest.raises(KeyboardInterrupt):
        run_job(job_config([labelled_examples], out, stages=["persons"]), on_commit=crash)
    assert sorted(committed_shards(out)) == ["train-000000"]
    assert not (out / ".pearl-lock.json").exists()
    # debris of a writer killed mid-shard: a temporary file and an uncommitted Parquet file
    (out / "wds" / ".tmp-deadbeef-train-000001.tar").write_bytes(b"partial")
    (out / "parquet" / "train-000001.parquet").write_bytes(b"partial")
    before = (out / "stats" / "train-000000.json").stat().st_mtime_ns
    report = run_job(job_config([labelled_examples], out, stages=["persons"], mode="incremental"))
    assert report["run"]["shards_skipped"] == 1
    assert report["run"]["shards_committed"] == len(committed_shards(out)) - 1 >= 1
    assert (out / "stats" / "train-000000.json").stat().st_mtime_ns == before  # not redone
    assert not list((out / "wds").glob(".tmp-*"))
    assert file_hashes(out) == file_hashes(reference) and len(file_hashes(out)) >= 4
    assert report["totals"]["persons"] == full["totals"]["persons"] == len(read_parquet(out))


def test_incremental_refuses_other_configs_and_overwrite_starts_clean(labelled_examples, tmp_path: Path,
                                                                     job_config) -> None:
    data = tmp_path / "data"
    shutil.copytree(labelled_examples.parent, data)
    labels = data / labelled_examples.name
    out = tmp_path / "out"
    run_job(job_config([labels], out, stages=["persons"], images_per_shard=3))
    with pytest.raises(JobError, match="config hash"):
        run_job(job_config([labels], out, stages=["persons"], images_per_shard=2))
    coco = json.loads(labels.read_text())
    coco["images"] = coco["images"][1:]  # same config, but the inputs changed under OUT
    labels.write_text(json.dumps(coco))
    with pytest.raises(JobError, match="other samples"):
        run_job(job_config([labels], out, stages=["persons"], images_per_shard=3))
    stray = out / "quarantine" / "train-000009.parquet"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"old")
    report = run_job(job_config([labels], out, stages=["persons"], images_per_shard=2, mode="overwrite"))
    assert report["run"]["shards_skipped"] == 0 and not stray.exists()
    assert sorted(committed_shards(out)) == ["train-000000", "train-000001"]
    assert report["totals"]["samples"] == len(coco["images"])
    # another split in the same OUT is independent
    run_job(job_config([labels], out, stages=["persons"], images_per_shard=4, split="val"))
    assert committed_shards(out) == {"val-000000", "train-000000", "train-000001"}


def test_cli_command_runs_the_job(labelled_examples, tmp_path: Path, pearl_cache) -> None:
    import argparse

    from pipelines.commands import annotate as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--input", str(labelled_examples), "--out", str(tmp_path / "o"), "--runner", "loop",
                              "--stages", "persons", "--limit", "1", "--no-progress", "--split", "val"])
    assert command.run(args) == 0
    assert committed_shards(tmp_path / "o") == {"val-000000"}
    args = parser.parse_args(["--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    assert command.run(args) == 2


def test_video_frames_become_tracked_records(examples_dir, tmp_path: Path, job_config) -> None:
    import cv2

    frame = cv2.imread(str(examples_dir / "grace_hopper.jpg"))
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0,
                             (frame.shape[1], frame.shape[0]))
    for _ in range(4):
        writer.write(frame)
    writer.release()
    config = job_config([tmp_path / "clip.avi"], tmp_path / "out", stages=["persons"], images_per_shard=8)
    config.source.video_stride = 2
    report = run_job(config)
    rows = read_parquet(tmp_path / "out").to_pylist()
    assert report["totals"]["samples"] == 2
    assert [(r["key"], r["track_id"], r["frame_index"]) for r in rows] == [
        ("clip.avi/f000000/p00", "clip.avi", 0), ("clip.avi/f000002/p00", "clip.avi", 2)]
    assert all((r["image_width"], r["image_height"]) == (frame.shape[1], frame.shape[0]) for r in rows)


TWO_NODE_SCRIPT = """
import json, sys
from ray.cluster_utils import Cluster
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
cluster.add_node(num_cpus=1)
from conftest import make_job_config
from annotators.base import StageResources
from pipelines.annotation import job
from pipelines.annotation.job import run_job
job.code_version = lambda: {code_version!r}  # the reference run's, even if HEAD moved meanwhile
config = make_job_config([{examples!r}], {out!r}, runner="ray")
config.ray.address = cluster.address
for spec in config.stages:  # 0.7 CPU each on 1-CPU nodes: the two actor pools sit on different nodes
    spec.resources = StageResources(num_cpus=0.7)
try:
    report = run_job(config)
    import ray
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps({{"nodes": len(nodes), "persons": report["totals"]["persons"]}}))
finally:
    ray.shutdown(); cluster.shutdown()
"""


@pytest.mark.slow
def test_two_node_cluster(loop_run, examples_dir, tmp_path: Path, file_hashes) -> None:
    reference, report = loop_run
    out = tmp_path / "two"
    script = TWO_NODE_SCRIPT.format(repo=str(REPO), tests=str(Path(__file__).parents[1]), examples=str(examples_dir),
                                    out=str(out), code_version=code_version())
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the cluster's processes too
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result == {"nodes": 2, "persons": report["totals"]["persons"]}
    assert file_hashes(out) == file_hashes(reference)
