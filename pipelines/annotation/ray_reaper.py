"""A watchdog that stops a job's private local Ray when the job's process dies without shutting it down.

``ray.init()`` without an address starts Ray's processes (GCS, raylet, dashboard and runtime-env agents,
workers) as children of the driver. A driver that exits normally stops them (``ray.shutdown``); one that is
killed (``SIGKILL``, OOM) leaves them running, and Ray's agents linger for minutes. :func:`start_reaper`
starts this module in its own session before Ray starts: it keeps a snapshot of the driver's descendants
while the driver lives, and once the driver is gone it kills what is left of them (and their descendants),
plus Ray processes orphaned in the driver's process group after the driver started (an agent the raylet
spawned between two snapshots and that outlived its raylet), then exits. Linux only (it reads ``/proc``);
elsewhere :func:`start_reaper` does nothing.

    python -m pipelines.annotation.ray_reaper DRIVER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
"""Seconds between two looks at the driver."""
GRACE_S = 2.0
"""Seconds between SIGTERM and SIGKILL of the leftovers."""


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from ``/proc/PID/status``), or None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, ``/proc/PID/stat`` field 22): with the pid, it names one
    process even after pids are reused. None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(roots: set[int]) -> set[int]:
    """Every live process below ``roots`` (their children, grandchildren...), ``roots`` excluded."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = parent_of(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= children
        frontier = children
    return found - roots


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def is_ray_process(pid: int) -> bool:
    """Whether ``pid`` runs Ray (a ``ray::`` worker or agent, or a program from Ray's package)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return cmdline.startswith("ray::") or "/site-packages/ray/" in cmdline


def orphaned_ray(group: int, since: int) -> set[int]:
    """Ray processes of process group ``group``, started at ``since`` or later, that were orphaned: adopted by
    init or by a subreaper outside the group (a Ray process of another job in the group keeps its parent)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        started, parent = start_time(pid), parent_of(pid)
        if (started is None or started < since or parent is None or process_group(pid) != group
                or not is_ray_process(pid)):
            continue
        if parent == 1 or process_group(parent) != group:
            found.add(pid)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return parent_of(pid) is not None  # a zombie has no status to read once reaped


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def watch(driver: int) -> None:
    """Snapshot ``driver``'s descendants until it dies, then stop the leftovers (see the module docstring)."""
    me = os.getpid()
    group, since = process_group(driver), start_time(driver)
    known: dict[int, int | None] = {}  # pid -> start time
    while alive(driver):
        for pid in descendants({driver}) - {me}:
            known.setdefault(pid, start_time(pid))
        known = {pid: t for pid, t in known.items() if start_time(pid) == t}
        time.sleep(POLL_S)
    leftovers = {pid for pid, t in known.items() if t is not None and start_time(pid) == t}
    leftovers |= descendants(leftovers) - {me}
    if group is not None and since is not None:
        leftovers |= orphaned_ray(group, since) - {me}
    if not leftovers:
        return
    _signal_all(leftovers, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(alive(p) for p in leftovers):
        time.sleep(0.1)
    _signal_all({p for p in leftovers if alive(p)}, signal.SIGKILL)


def start_reaper() -> subprocess.Popen | None:
    """Start the watchdog for this process (its own session, so a signal to the job's process group spares
    it); None where ``/proc`` is missing."""
    if not Path("/proc/self/status").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "pipelines.annotation.ray_reaper", str(os.getpid())],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[2]))


if __name__ == "__main__":
    watch(int(sys.argv[1]))
