"""``pearl submit``: the annotation job submitted to a running Ray cluster (``ray job submit``, with pearl's
working directory, excludes and code version). See ``docs/cluster.md``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

HELP = "submit the annotation job to a running Ray cluster (its job server), carrying this checkout's code version"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUNTIME_ENV = REPO / "infra" / "runtime_env.yaml"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--address", required=True, metavar="URL", help="the cluster's job server, e.g. http://HEAD:8265 "
      "(the dashboard address)")
    a("--runtime-env", metavar="FILE", default=str(DEFAULT_RUNTIME_ENV),
      help="Ray runtime environment (YAML: working_dir, excludes, env_vars); default: infra/runtime_env.yaml")
    a("--no-wait", action="store_true", help="print the job id and return instead of following its logs")
    a("job_args", nargs=argparse.REMAINDER, metavar="-- JOB FLAGS",
      help="flags of `pearl annotate` after `--` (--input, --out, --config ...)")


def runtime_env(path: str | Path, code_version: str) -> dict:
    """The runtime environment of ``path`` (relative ``working_dir`` resolved against the repository) with
    ``PEARL_CODE_VERSION`` set to ``code_version``."""
    import yaml

    from pipelines.annotation.job import CODE_VERSION_ENV

    env = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(env, dict):
        raise ValueError(f"{path}: a runtime environment is a mapping, got {type(env).__name__}")
    working_dir = Path(env.get("working_dir", "."))
    env["working_dir"] = str(working_dir if working_dir.is_absolute() else (REPO / working_dir).resolve())
    env["env_vars"] = {**(env.get("env_vars") or {}), CODE_VERSION_ENV: code_version}
    return env


AGENT_WAIT_S = 120.0
"""Seconds :func:`submit_when_ready` retries while a freshly started head has no job agent yet."""


def submit_when_ready(client: Any, *, wait_s: float = AGENT_WAIT_S, **job: Any) -> str:
    """``client.submit_job(**job)``, retried every 2 s for up to ``wait_s`` while the head answers "No
    available agent to submit job" (its dashboard agent is still starting, seconds after ``ray start``);
    any other error is raised at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            log.info("the head's job agent is not up yet; retrying")
            time.sleep(2)


def run(args: argparse.Namespace) -> int:
    from ray.job_submission import JobSubmissionClient

    from pipelines.annotation.job import code_version

    job_args = [a for a in args.job_args if a != "--"] if args.job_args[:1] == ["--"] else list(args.job_args)
    if not job_args:
        log.error("no job flags: pearl submit --address URL -- --input ... --out ...")
        return 2
    try:
        env = runtime_env(args.runtime_env, code_version())
    except (OSError, ValueError) as exc:
        log.error("runtime environment %s: %s", args.runtime_env, exc)
        return 2
    entrypoint = " ".join(["python", "pipelines/annotate.py", *(_quote(a) for a in job_args)])
    client = JobSubmissionClient(args.address)
    job_id = submit_when_ready(client, entrypoint=entrypoint, runtime_env=env)
    log.info("submitted %s (code version %s)", job_id, env["env_vars"]["PEARL_CODE_VERSION"])
    print(job_id)
    if args.no_wait:
        return 0
    shown = 0
    while True:
        status = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
        logs = client.get_job_logs(job_id)
        print(logs[shown:], end="", flush=True)
        shown = len(logs)
        if status in TERMINAL:
            break
        time.sleep(2)
    log.info("job %s %s", job_id, status.lower())
    return 0 if status == "SUCCEEDED" else 1


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
