"""The job's own Ray: a private local Ray that never outlives its job, even when the job is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.annotation.ray_reaper import descendants, start_time

REPO = Path(__file__).resolve().parents[3]


def _alive(processes: dict[int, int | None]) -> dict[int, int | None]:
    return {pid: t for pid, t in processes.items() if t is not None and start_time(pid) == t}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the watchdog reads /proc (Linux)")
@pytest.mark.parametrize("settle_s", [0.0, 3.0], ids=["killed-while-ray-starts", "killed-while-running"])
def test_a_killed_job_leaves_no_ray_processes_behind(examples_dir, tmp_path, settle_s) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PEARL_CACHE"] = str(tmp_path / "cache")
    driver = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "annotate.py"), "--input", str(examples_dir),
                               "--out", str(tmp_path / "out"), "--num-cpus", "2", "--no-progress"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    seen: dict[int, int | None] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until Ray's processes (GCS, raylet, agents, workers) run
            for pid in descendants({driver.pid}):
                seen.setdefault(pid, start_time(pid))
            names = {Path(f"/proc/{pid}/cmdline").read_text() for pid in _alive(seen)
                     if Path(f"/proc/{pid}/cmdline").exists()}
            if any("raylet" in n for n in names) and any("ray::DashboardAgent" in n for n in names):
                break
            time.sleep(0.2)
        assert len(_alive(seen)) >= 5, "Ray did not start"
        time.sleep(settle_s)
        for pid in descendants({driver.pid}):
            seen.setdefault(pid, start_time(pid))
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 45
        while _alive(seen) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _alive(seen)
        names = sorted(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:80] for pid in left
                       if Path(f"/proc/{pid}/cmdline").exists())
        assert not left, f"{len(left)} processes outlived the killed job: {names}"
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in _alive(seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
