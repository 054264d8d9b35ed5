"""S3-compatible storage (a moto server on 127.0.0.1): inputs, outputs, resume, quarantine, the lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import schemas

from pipelines.annotation.job import run_job
from pipelines.io.quarantine import read_quarantine
from pipelines.io.runlock import LockedError, RunLock
from pipelines.io.shards import committed_shards, read_parquet

BUCKET = "pearl-test"


@pytest.fixture(scope="module")
def s3(s3):
    """The shared moto S3 server (tests/pipelines/conftest.py) with this module's bucket."""
    s3.mkdir(BUCKET)
    return s3


def test_job_reads_and_writes_s3(s3, labelled_examples, tmp_path: Path, job_config, caplog) -> None:
    local = tmp_path / "data"
    shutil.copytree(labelled_examples.parent, local)
    (local / "broken.jpg").write_bytes(b"")
    coco = json.loads((local / "labels.json").read_text())
    coco["images"].append({"id": 99, "file_name": "broken.jpg"})
    (local / "labels.json").write_text(json.dumps(coco))
    s3.put(str(local), f"{BUCKET}/in", recursive=True)
    labels, out = f"s3://{BUCKET}/in/labels.json", f"s3://{BUCKET}/runs/one"
    assert s3.exists(f"{BUCKET}/in/broken.jpg")

    def crash(name: str, stats: dict) -> None:
        raise KeyboardInterrupt(name)

    with pytest.raises(KeyboardInterrupt):
        run_job(job_config([labels], out, stages=["persons"]), on_commit=crash)
    assert sorted(committed_shards(out)) == ["train-000000"]
    with caplog.at_level("INFO", logger="pipelines.annotation.job"):
        report = run_job(job_config([labels], out, stages=["persons"]))
    assert f"report: s3://{BUCKET}/runs/one/report.html" in caplog.text  # the URL, protocol included
    assert report["run"]["shards_skipped"] == 1
    n = len(coco["images"])
    assert len(committed_shards(out)) == (n + 1) // 2 and report["totals"]["samples"] == n
    persons = read_parquet(out).to_pylist()
    assert len({p["sample_key"] for p in persons}) == n - 1
    q = read_quarantine(out).to_pylist()
    assert [(r["key"], r["stage"]) for r in q] == [("labels/broken.jpg", "load")]
    assert q[0]["source"] == f"s3://{BUCKET}/in/broken.jpg"
    assert json.loads(s3.cat(f"{BUCKET}/runs/one/report.json"))["totals"]["persons"] == len(persons)
    assert s3.exists(f"{BUCKET}/runs/one/report.html") and s3.exists(f"{BUCKET}/runs/one/manifest.json")
    assert not s3.exists(f"{BUCKET}/runs/one/.pearl-lock.json")
    # the same records as a local run over the same files, apart from where they came from (the input
    # path is part of the config hash too)
    run_job(job_config([local / "labels.json"], tmp_path / "local", stages=["persons"]))
    remote, here = (schemas.arrow_to_columns(read_parquet(p)) for p in (out, tmp_path / "local"))
    assert remote.keys() == here.keys()
    for name in sorted(set(remote) - {"source", "config_hash"}):
        np.testing.assert_array_equal(remote[name], here[name], err_msg=name)  # NaN == NaN here


def test_s3_lock_refuses_a_second_job(s3) -> None:
    root = f"{BUCKET}/runs/locked"
    with RunLock(s3, root, settle_s=0.1):
        with pytest.raises(LockedError, match="in use by another pearl job"):
            RunLock(s3, root, settle_s=0.1).acquire()
    assert not s3.exists(f"{root}/.pearl-lock.json")
