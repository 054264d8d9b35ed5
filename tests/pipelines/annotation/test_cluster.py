"""Cluster operators' paths against a real local Ray head the test starts and stops: ``ray job submit`` and
``pearl submit`` (which carries the code version), and a job that loses its cluster mid-run (a clear message,
exit status 3, and a rerun that resumes from the committed shards)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.annotation.job import CLUSTER_LOST, code_version
from pipelines.annotation.ray_reaper import descendants
from pipelines.io.shards import committed_shards, read_parquet

REPO = Path(__file__).resolve().parents[3]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="stops the head through /proc")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PEARL_SUPERVISED")}
    # the installed environment first on PATH, as after `. .venv/bin/activate`: the job's `python` is its python
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(RAY_AUTH_MODE="disabled", **extra)
    return env


class Head:
    """``ray start --head --block`` in a session of its own (so stopping it stops nothing else)."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.dashboard = _free_port(), _free_port()
        # short: Ray's socket paths have a size limit; ``<root>/ray`` is Ray's default folder for ``TMPDIR=<root>``
        self.root = Path("/tmp") / f"rh{os.getpid()}-{self.port}"
        self.temp = self.root / "ray"
        # the agents' ports too: the suite's own local Ray already holds the default agent port (52365), and a
        # head whose agent cannot bind never accepts a job ("No available agent to submit job")
        agents = [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                           "runtime-env-agent-port", "metrics-export-port")]
        self.proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={self.port}", f"--dashboard-port={self.dashboard}",
             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats",
             f"--temp-dir={self.temp}", *agents], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/api/version", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            self.stop()
            raise RuntimeError("the Ray head did not start")
        # the job server answers before its agent registers: a first job waits for it (as `pearl submit` does)
        from ray.job_submission import JobSubmissionClient

        from pipelines.commands.submit import submit_when_ready

        client = JobSubmissionClient(self.url)
        job = submit_when_ready(client, entrypoint="python -c pass")
        while str(client.get_job_status(job)).rsplit(".", 1)[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Kill the head and everything it started."""
        victims = descendants({self.proc.pid}) | {self.proc.pid}
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def head(tmp_path):
    h = Head(tmp_path)
    yield h
    h.stop()


def test_ray_job_submit_and_pearl_submit_run_the_job(head, labelled_examples, tmp_path) -> None:
    out = tmp_path / "submitted"
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", head.url, "--working-dir", str(REPO), "--runtime-env-json",
         json.dumps({"excludes": [".venv", "tests", "docs", "benchmarks", "runs", "examples"]}), "--",
         "python", "pipelines/annotate.py", "--input", str(labelled_examples), "--out", str(out), "--stages",
         "persons", "--no-progress"], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert committed_shards(out) and len(read_parquet(out)) == 4
    # pearl submit: the same job, and the records name this checkout's commit (the job runs where no git is)
    carried = tmp_path / "carried"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "submit", "--address", head.url, "--", "--input",
         str(labelled_examples), "--out", str(carried), "--stages", "persons", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    versions = set(read_parquet(carried).column("code_version").to_pylist())
    assert versions == {code_version()} and "+" in code_version()


def test_a_job_told_no_address_never_joins_a_ray_running_on_the_machine(head, labelled_examples, tmp_path) -> None:
    """Another program's Ray on this machine: ``ray.init()`` without an address would join it (through the
    ``ray_current_cluster`` file in Ray's default folder); the job starts its own private Ray instead."""
    from ray.job_submission import JobSubmissionClient

    env = _env(TMPDIR=str(head.root))  # Ray's default folder is the head's: its cluster is "the current one"
    assert (head.temp / "ray_current_cluster").read_text().strip().endswith(f":{head.port}")
    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print(ray.get_runtime_context().gcs_address)"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().endswith(f":{head.port}"), probe.stderr[-2000:]  # what a plain ray.init() does
    client = JobSubmissionClient(head.url)
    drivers = {j.job_id for j in client.list_jobs() if str(j.type).endswith("DRIVER")}
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "annotate.py"), "--input", str(labelled_examples),
                           "--out", str(tmp_path / "out"), "--stages", "persons", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {j.job_id for j in client.list_jobs() if str(j.type).endswith("DRIVER")} == drivers  # it never joined
    assert "starting a private local Ray" in proc.stderr and len(read_parquet(tmp_path / "out")) == 4


def test_a_job_that_loses_its_cluster_says_so_and_resumes(head, copy_examples, tmp_path) -> None:
    images = copy_examples(REPO / "examples", tmp_path / "images", repeat=3)  # 12 images, one per shard
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "pipelines" / "annotate.py"), "--input", str(images), "--out", str(out),
               "--stages", "persons,keypoints", "--images-per-shard", "1", "--no-progress"]
    env = _env(RAY_gcs_rpc_server_reconnect_timeout_s="5", PYTHONPATH=str(REPO))
    job = subprocess.Popen(command + ["--ray-address", head.address], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not committed_shards(out) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.5)
    assert committed_shards(out), "no shard was committed"
    head.stop()  # the cluster goes away mid-run
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == CLUSTER_LOST, stderr[-3000:]
    assert "lost the Ray cluster at" in stderr and "run the same command again" in stderr
    done = committed_shards(out)
    assert 0 < len(done) < 12
    second = Head(tmp_path)
    try:
        proc = subprocess.run(command + ["--ray-address", second.address], env=env, capture_output=True, text=True,
                              timeout=900)
    finally:
        second.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["shards_skipped"] >= len(done) and len(committed_shards(out)) == 12
