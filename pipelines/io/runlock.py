"""One job per output folder: the run lock ``OUT/.pearl-lock.json``.

The lock file holds the owner (``token``, ``host``, ``pid``), ``started`` and ``heartbeat`` (Unix
seconds). The owner rewrites ``heartbeat`` every ``heartbeat_s`` seconds from a daemon thread. Another
job finding the lock is refused (:class:`LockedError`) unless the lock is **stale**: its heartbeat is
older than ``stale_after_s``, or its owner ran on this host and that process no longer exists. A stale
lock is taken over with a warning.

Local paths: the lock is created with ``O_CREAT | O_EXCL`` (atomic), and taking over a stale lock
happens under an ``flock`` on ``OUT/.pearl-lock.guard``, so two jobs never both win.

Object storage (``s3://``): S3 has no create-if-absent through fsspec, so the lock is written, then read
back after ``settle_s``; the job owns it only if the token read back is its own. Two jobs started
within the same ``settle_s`` window can both pass; start jobs on one OUT from one place (a scheduler,
KubeRay's single submitter) and the lock catches every later mistake.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

LOCK_NAME = ".pearl-lock.json"
GUARD_NAME = ".pearl-lock.guard"


class LockedError(RuntimeError):
    """Another job holds the output folder."""


class LockLostError(RuntimeError):
    """This job's lock was taken over by another job (its heartbeat had gone stale)."""


def _is_local(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock of one output folder (use as a context manager, or :meth:`acquire` / :meth:`release`).

    Args:
        fs, root: output filesystem and root path on it.
        stale_after_s: a heartbeat older than this marks the lock stale.
        heartbeat_s: how often the owner refreshes the heartbeat.
        settle_s: object storage only: wait between writing the lock and reading it back.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, *, stale_after_s: float = 120.0,
                 heartbeat_s: float | None = None, settle_s: float = 1.0) -> None:
        self.fs, self.root = fs, root.rstrip("/")
        self.path = f"{self.root}/{LOCK_NAME}"
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.5, stale_after_s / 6)
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _content(self) -> dict[str, Any]:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                "heartbeat": time.time()}

    def read(self) -> dict[str, Any] | None:
        """The lock file's content, or None when there is no (readable) lock."""
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # half-written by a dying owner: treated as stale once old enough

    def stale_reason(self, info: dict[str, Any]) -> str | None:
        """Why lock content ``info`` is stale, or None when its owner looks alive."""
        age = time.time() - float(info.get("heartbeat", 0.0))
        if age > self.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (> {self.stale_after_s:.0f} s)"
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return f"its process {info.get('pid')} on this host is gone"
        return None

    def _refuse(self, info: dict[str, Any]) -> LockedError:
        age = time.time() - float(info.get("heartbeat", 0.0))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0.0))))
        return LockedError(
            f"output {self.fs.unstrip_protocol(self.root) if not _is_local(self.fs) else self.root} is in use by "
            f"another pearl job (pid {info.get('pid')} on host {info.get('host')}, started {started}, last heartbeat "
            f"{age:.0f} s ago). Wait for it to finish or stop it; a lock whose owner died goes stale after "
            f"{self.stale_after_s:.0f} s (or delete {self.path} if you are sure no job is running)."
        )

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockedError`; starts the heartbeat thread."""
        self.fs.makedirs(self.root, exist_ok=True)
        if _is_local(self.fs):
            self._acquire_local()
        else:
            self._acquire_remote()
        self._thread = threading.Thread(target=self._beat, name="pearl-lock-heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``OUT/.pearl-lock.guard`` for local paths (no-op on object storage)."""
        if not _is_local(self.fs):
            yield
            return
        import fcntl

        with open(f"{self.root}/{GUARD_NAME}", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield

    def _acquire_local(self) -> None:
        with self._guard():
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.read() or {}
                reason = self.stale_reason(info)
                if reason is None:
                    raise self._refuse(info) from None
                log.warning("taking over a stale lock on %s: %s", self.root, reason)
                self._write()
                return
            with os.fdopen(fd, "w") as fh:
                json.dump(self._content(), fh)

    def _acquire_remote(self) -> None:
        info = self.read()
        if info is not None:
            reason = self.stale_reason(info)
            if reason is None:
                raise self._refuse(info)
            log.warning("taking over a stale lock on %s: %s", self.root, reason)
        self._write()
        time.sleep(self.settle_s)
        now = self.read() or {}
        if now.get("token") != self.token:
            raise self._refuse(now)

    def _write(self) -> None:
        data = json.dumps(self._content()).encode()
        if _is_local(self.fs):
            tmp = f"{self.path}.{self.token}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)

    def check(self) -> None:
        """Raise :class:`LockLostError` if another job has taken the lock over."""
        info = self.read() or {}
        if info.get("token") != self.token:
            self.lost = True
            raise LockLostError(f"the lock on {self.root} was taken over by pid {info.get('pid')} on "
                                f"{info.get('host')} (this job's heartbeat had gone stale); stopping")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self._guard():
                    self.check()
                    self._write()
            except LockLostError as exc:
                log.error("%s", exc)
                return
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried at the next beat
                log.warning("could not refresh the lock heartbeat on %s", self.root, exc_info=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        info = self.read()
        if info is not None and info.get("token") == self.token:
            self.fs.rm_file(self.path)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
