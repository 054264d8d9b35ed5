"""The annotation job: inputs -> persons -> keypoints -> ... -> WebDataset + Parquet shards.

Run it as ``pearl annotate ...``, ``python pipelines/annotate.py ...``, or on a cluster with
``ray job submit --working-dir . -- python pipelines/annotate.py ...`` /
``ray submit infra/cluster.yaml pipelines/annotate.py -- ...``. See ``docs/annotate.md``.

The job: resolve the config -> list the samples and cut them into shards -> take OUT's run lock ->
(overwrite: delete this split's outputs | incremental: check the manifest and skip committed shards)
-> write the manifest -> run the stages (Ray Data, or a plain loop) into the shard sink -> write the
report.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import schemas
from annotators.base import StageContext
from pipelines.annotation import config as cfg
from pipelines.annotation.report import build_report, write_report
from pipelines.annotation.runner import (
    RemoteClock,
    RunPlan,
    StageClock,
    connect_ray,
    ray_clock,
    run_loop,
    run_ray,
    stage_backend,
)
from pipelines.io.body_models import BodyModels, BodyModelsError, resolve_body_models
from pipelines.io.quarantine import QUARANTINE_DIR, clean_quarantine_temporaries, read_quarantine
from pipelines.io.runlock import LockedError, RunLock
from pipelines.io.samples import SourceError
from pipelines.io.shards import clean_temporaries, committed_shards, path_url, read_all_stats, shard_name
from pipelines.io.sinks import PARTITION_RULE, IncompleteShardsError, ShardSink, ShardSpec, keys_sha256, plan_shards
from pipelines.io.sources import discover

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
QUARANTINE_LISTED = 50
"""Quarantine rows the report shows in full (stage and reason); all are in OUT/quarantine."""
OUTPUT_DIRS = ("wds", "parquet", "stats", QUARANTINE_DIR)


class JobError(RuntimeError):
    """The job cannot run as asked (e.g. OUT holds another configuration); the message says what to do."""


USER_ERRORS = (cfg.ConfigError, BodyModelsError, SourceError, LockedError, JobError, IncompleteShardsError)
"""Errors that mean "the job cannot run as asked": the command line prints them and exits with status 2."""


CODE_VERSION_ENV = "PEARL_CODE_VERSION"
"""Environment variable that carries the submitting checkout's code version to a job running where the code
has no git history (``pearl submit`` sets it in the job's runtime environment)."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``$PEARL_CODE_VERSION`` when set, else ``"<pearl version>+<git describe>"`` (``git describe --always
    --dirty`` of this checkout), else just the version (with a warning: the records will not name a commit)."""
    carried = os.environ.get(CODE_VERSION_ENV, "").strip()
    if carried:
        return carried
    root = Path(__file__).resolve().parents[2]
    try:
        from importlib.metadata import version

        pkg = version("pearl")
    except Exception:  # noqa: BLE001 - not installed: read pyproject.toml
        import tomllib

        try:
            pkg = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            pkg = "unknown"
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                                   text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    if not described:
        log.warning("code version %s names no commit (no git history here): submit with `pearl submit`, or set %s",
                    pkg, CODE_VERSION_ENV)
    return f"{pkg}+{described}" if described else pkg


@dataclass
class JobPlan:
    """Everything decided before any pixel is read."""

    config: cfg.AnnotateConfig
    shards: list[ShardSpec]
    body_models: BodyModels
    config_hash: str
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """Files of the inputs that are not samples, ``(path, reason)`` (listed in the report)."""

    @property
    def samples(self) -> int:
        return sum(len(s.samples) for s in self.shards)


def plan_job(config: cfg.AnnotateConfig, *, make_kit: bool = True) -> JobPlan:
    """Resolve the config, list the samples and cut them into shards (no output is touched)."""
    config = cfg.resolve(config)
    found = discover(config.source.inputs, image_root=config.source.image_root,
                     video_stride=config.source.video_stride, max_clip_frames=config.source.max_clip_frames)
    samples = found.samples
    if config.source.limit is not None:
        samples = samples[: config.source.limit]
    body_models = resolve_body_models(config.body_models, create=make_kit)
    return JobPlan(config, plan_shards(samples, config.sink.images_per_shard), body_models, cfg.config_hash(config),
                   found.skipped)


@dataclass
class PlanCheck:
    """What the driver finds wrong with a plan before anything runs (``errors``: the job is refused, exit 2)
    and what it should say about it (``notes``)."""

    errors: list[str]
    notes: list[str]


def local_accelerators() -> int:
    """CUDA devices this machine has (0 without torch's CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA is no GPU
        return 0


def check_plan(config: cfg.AnnotateConfig) -> PlanCheck:
    """Check a resolved plan on the driver: the default stages it leaves out (a note), the weight files of its
    reference backends (each stage's ``weight_options``: they must exist), and, for a private local Ray (no
    cluster named), whether its actors fit this machine's CPUs and GPUs (a joined cluster is checked when the
    job joins it, and may scale up). The body-model folder is checked when the plan is made."""
    import fsspec

    errors, notes = [], []
    given = {spec.annotator for spec in config.stages}
    left_out = [name for name in cfg.DEFAULT_STAGES if name.split("/", 1)[0] not in given]
    if left_out:
        notes.append(f"this plan runs {len(config.stages)} stage(s) and leaves out the default stage(s) "
                     f"{', '.join(left_out)}; name them under `stages:` (or in --stages) to run them")
    for i, spec in enumerate(config.stages):
        for option in cfg.stage_class(spec.name).weight_options:
            path = str(spec.options.get(option) or "")
            if not path:
                continue
            try:
                fs, where = fsspec.core.url_to_fs(path)
                found = fs.isfile(where)
            except Exception as exc:  # noqa: BLE001 - an unreachable store is a missing file here
                found, path = False, f"{path} ({type(exc).__name__}: {exc})"
            if not found:
                errors.append(f"stages[{i}] ({spec.name}): option {option}: {path} is not a file; put the weights "
                              "there (docs/reference_backends.md) or fix the path; `pearl models check DIR` checks "
                              "a weights folder")
    if not (config.ray.address or os.environ.get("RAY_ADDRESS")) and config.runner == "ray":
        cpus = float(config.ray.num_cpus or os.cpu_count() or 1)
        reserved = sum(s.resources.num_cpus * s.resources.num_actors for s in config.stages)
        if reserved + config.source.load_num_cpus > cpus:
            errors.append(f"the stage actors reserve {reserved:g} CPUs and a read task {config.source.load_num_cpus:g}, "
                          f"but this job's private local Ray has {cpus:g} (--num-cpus, default all of this "
                          "machine's): lower num_cpus or num_actors under stages[].resources, or join a cluster "
                          "with --ray-address")
        gpus = local_accelerators()
        for i, spec in enumerate(config.stages):
            if spec.resources.num_gpus > 0 and gpus == 0:
                errors.append(f"stages[{i}] ({spec.name}) asks for num_gpus {spec.resources.num_gpus:g}, but this "
                              "machine has no GPU: its actors would never start; set num_gpus: 0 (the stage then "
                              "runs on the CPU) or join a GPU cluster with --ray-address")
            elif spec.resources.num_gpus * spec.resources.num_actors > gpus > 0:
                errors.append(f"stages[{i}] ({spec.name}) asks for {spec.resources.num_gpus * spec.resources.num_actors:g} "
                              f"GPUs in all, this machine has {gpus}: lower num_gpus or num_actors")
    elif config.runner == "ray":
        notes.append("a joined cluster's CPUs and GPUs are checked against the plan when the job joins it")
    return PlanCheck(errors, notes)


def describe_plan(plan: JobPlan, runner: str | None = None) -> str:
    """The resolved config, the stage plan with resources, and the shard plan (what ``--dry-run`` prints);
    ``runner`` names the runner when it is not the config's (the Beam launcher's ``beam``)."""
    c = plan.config
    lines = ["resolved config:", json.dumps(cfg.to_dict(c), indent=2, sort_keys=True), "", "stage plan (each stage "
             f"called once per shard, torch_threads={c.torch_threads}):",
             f"  read+decode: a task per shard, num_cpus={c.source.load_num_cpus}"]
    for spec in c.stages:
        r = spec.resources
        lines.append(f"  {spec.name}: {r.num_actors} actor(s), num_cpus={r.num_cpus}, num_gpus={r.num_gpus}, "
                     f"options={json.dumps(spec.options, sort_keys=True)}")
    checked = check_plan(c)
    lines += ["  sink: driver, WebDataset + Parquet + stats + quarantine per shard", "",
              *(f"note: {n}" for n in checked.notes), *(f"ERROR: {e}" for e in checked.errors),
              f"body models: {plan.body_models.folder} ({plan.body_models.kit})", f"config hash: {plan.config_hash}",
              f"samples: {plan.samples}, shards: {len(plan.shards)} of up to {c.sink.images_per_shard} "
              f"(split {c.sink.split}, runner {runner or c.runner}, mode {c.sink.mode}) -> {c.sink.out}"]
    return "\n".join(lines)


def output_filesystem(out: str) -> tuple[Any, str]:
    """``(fsspec filesystem, root path on it)`` of the output location ``out`` (a path or URL)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out)
    return fs, root.rstrip("/")


def _split_files(fs, root: str, split: str) -> list[str]:
    """This split's shard files (``{split}-*``) in OUT's output folders."""
    found = []
    for folder in OUTPUT_DIRS:
        path = f"{root}/{folder}"
        if fs.exists(path):
            found += [p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith(f"{split}-")]
    return found


def _read_manifest(fs, root: str) -> dict[str, Any]:
    path = f"{root}/{MANIFEST}"
    return json.loads(fs.cat_file(path)) if fs.exists(path) else {"splits": {}}


def _asset_hashes(body_models: str) -> dict[str, str]:
    """sha256 of the body-model files (``model.assets.check.asset_hashes``), memoised per process while no
    file of the folder changes size or modification time."""
    root = Path(body_models)
    stamp = tuple(sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in root.rglob("*") if p.is_file()))
    return dict(_hashes_of(str(root), stamp))


@functools.lru_cache(maxsize=8)
def _hashes_of(root: str, stamp: tuple) -> tuple[tuple[str, str], ...]:
    from model.assets.check import asset_hashes

    return tuple(sorted(asset_hashes(Path(root)).items()))


def _check_resume(plan: JobPlan, entry: dict[str, Any], stats: dict[str, dict[str, Any]],
                  asset_hashes: dict[str, str]) -> None:
    """Refuse an incremental run over outputs written with another config, body models or inputs."""
    out = plan.config.sink.out
    if entry and entry.get("config_hash") != plan.config_hash:
        raise JobError(f"{out} holds split {plan.config.sink.split!r} written with config hash "
                       f"{entry.get('config_hash')} ({MANIFEST}); this run's is {plan.config_hash}. Use "
                       "--mode overwrite to start that split over, or another --out / --split.")
    if entry and entry.get("asset_hashes") != asset_hashes:
        raise JobError(f"{out} was written with other body-model files (asset hashes in {MANIFEST} differ); use "
                       "the same --body-models, or --mode overwrite")
    for spec in plan.shards:
        s = stats.get(shard_name(plan.config.sink.split, spec.index))
        if s is not None and s.get("samples_sha256") != spec.fingerprint:
            raise JobError(f"committed shard {shard_name(plan.config.sink.split, spec.index)} of {out} holds other "
                           "samples than this run's inputs give it (inputs changed?); use --mode overwrite or a new "
                           "--out")


class Progress:
    """Driver-side progress: a tqdm bar over samples and a log line with per-stage counts and rates."""

    def __init__(self, total: int, clock: Any, lock: RunLock, *, enabled: bool, interval_s: float = 10.0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", desc="annotate", disable=not enabled, file=sys.stderr)
        self.clock, self.lock, self.interval_s = clock, lock, interval_s
        self.t0 = self.last = time.perf_counter()

    def committed(self, stats: dict[str, Any]) -> None:
        self.bar.update(stats["samples"])
        self.tick()

    def tick(self) -> None:
        if self.lock.lost:
            raise JobError(f"lost the lock on {self.lock.root}: another job took it over; stopping")
        now = time.perf_counter()
        if now - self.last >= self.interval_s and self.clock is not None:
            self.last = now
            parts = [f"{name} {t['rows_in']} rows ({t['rows_in'] / max(t['seconds'], 1e-9):.1f}/busy s)"
                     for name, t in self.clock.snapshot().items()]
            log.info("progress after %.0f s: %s", now - self.t0, "; ".join(parts))

    def close(self) -> None:
        self.bar.close()


@dataclass
class JobRun:
    """A job holding OUT: what :func:`open_job` decided, for a runner to execute."""

    plan: JobPlan
    fs: Any
    """Output filesystem (fsspec)."""
    root: str
    """OUT as a path on :attr:`fs`."""
    lock: RunLock
    todo: list[ShardSpec]
    """Shards not committed yet."""
    run_fields: dict[str, str]
    """Record fields shared by the whole run (see :class:`pipelines.io.sinks.ShardSink`)."""
    context: StageContext
    started: float
    """Unix time the job started."""

    @property
    def run_plan(self) -> RunPlan:
        """What a runner executes."""
        return RunPlan(config=self.plan.config, shards=self.todo, context=self.context)

    def sink(self, on_commit: Callable[[str, dict[str, Any]], None] | None = None) -> ShardSink:
        """A shard sink over :attr:`todo`."""
        c = self.plan.config
        return ShardSink(self.fs, self.root, c.sink.split, self.todo, self.run_fields,
                         parquet_images=c.sink.parquet_images, on_commit=on_commit)


@contextlib.contextmanager
def open_job(config: cfg.AnnotateConfig) -> Iterator[JobRun]:
    """Plan the job and hold OUT for it: take the run lock, apply the mode (overwrite: delete this split's
    outputs), remove temporaries of dead writers, refuse to resume over another config, body models or
    inputs (:class:`JobError`), and write the manifest. The lock is released on exit."""
    started = time.time()
    plan = plan_job(config)
    c = plan.config
    checked = check_plan(c)
    for note in checked.notes:
        log.warning("%s", note)
    if checked.errors:
        raise JobError("the plan cannot run: " + "; ".join(checked.errors))
    split = c.sink.split
    fs, root = output_filesystem(c.sink.out)
    with RunLock(fs, root, stale_after_s=c.sink.lock_stale_s) as lock:
        manifest = _read_manifest(fs, root)
        if c.sink.mode == "overwrite":
            for path in _split_files(fs, root, split):
                fs.rm_file(path)
            manifest["splits"].pop(split, None)
        clean_temporaries(root, filesystem=fs)
        clean_quarantine_temporaries(fs, root)
        hashes = _asset_hashes(plan.body_models.folder)
        committed = {n for n in committed_shards(root, filesystem=fs) if n.startswith(f"{split}-")}
        stats = {s["shard"]: s for s in read_all_stats(fs, root) if s["shard"] in committed}
        _check_resume(plan, manifest["splits"].get(split, {}), stats, hashes)
        todo = [s for s in plan.shards if shard_name(split, s.index) not in committed]
        backends = {spec.annotator: stage_backend(spec.name) for spec in c.stages}
        manifest["schema_version"] = schemas.SCHEMA_VERSION
        manifest["splits"][split] = {
            "code_version": code_version(), "config_hash": plan.config_hash, "config": cfg.to_dict(c),
            "body_model_kit": plan.body_models.kit, "asset_hashes": hashes, "backends": backends,
            "partition_rule": PARTITION_RULE, "shards": len(plan.shards), "samples": plan.samples,
            "samples_sha256": keys_sha256([s.sample_key for spec in plan.shards for s in spec.samples]),
        }
        fs.pipe_file(f"{root}/{MANIFEST}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        log.info("%d shard(s) to do, %d already committed (%s mode)", len(todo), len(plan.shards) - len(todo),
                 c.sink.mode)
        run_fields = {"split": split, "code_version": code_version(), "config_hash": plan.config_hash,
                      "body_model_kit": plan.body_models.kit,
                      "asset_hashes": json.dumps(hashes, sort_keys=True, separators=(",", ":")),
                      "backends": json.dumps(backends, sort_keys=True, separators=(",", ":"))}
        context = StageContext(body_models=plan.body_models.folder, body_model_kit=plan.body_models.kit,
                               body_models_cached=plan.body_models.cached, seed=c.seed)
        yield JobRun(plan, fs, root, lock, todo, run_fields, context, started)


def finish_job(job: JobRun, *, wall_s: float, timings: dict[str, dict[str, float]], shards_committed: int,
               samples: int, runner: str | None = None) -> dict[str, Any]:
    """Write OUT/report.json and OUT/report.html for a finished run; returns the report."""
    c = job.plan.config
    run = {"started": _iso(job.started), "finished": _iso(time.time()), "host": socket.gethostname(),
           "runner": runner or c.runner, "mode": c.sink.mode, "split": c.sink.split, "out": c.sink.out,
           "code_version": code_version(), "config_hash": job.plan.config_hash,
           "body_model_kit": job.plan.body_models.kit, "wall_s": round(wall_s, 3), "shards_total": len(job.plan.shards),
           "shards_skipped": len(job.plan.shards) - len(job.todo), "shards_committed": shards_committed,
           "samples_this_run": samples}
    stats = [s for s in read_all_stats(job.fs, job.root) if s["split"] == c.sink.split]
    report = build_report(run, timings, stats, job.plan.skipped)
    examples = read_quarantine(job.root, filesystem=job.fs, limit=QUARANTINE_LISTED).to_pylist()
    report["quarantine_examples"] = [{k: r[k] for k in ("key", "stage", "reason")} for r in examples]
    _, html_path = write_report(job.fs, job.root, report)
    log.info("done: %d persons written, %d quarantined over %d shard(s); report: %s", report["totals"]["persons"],
             report["totals"]["quarantined"], report["totals"]["shards"], path_url(job.fs, html_path))
    return report


def run_job(config: cfg.AnnotateConfig, *,
            on_commit: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the job described by ``config``; returns the report (also written to OUT/report.json/html).

    ``on_commit(shard_name, stats)`` is called after each shard commit (an exception from it stops the
    job, leaving the committed shards in place, as a crash would).
    """
    with open_job(config) as job:
        c = job.plan.config
        if c.runner == "ray":
            connect_ray(c.ray)
            clock: Any = ray_clock()
        else:
            clock = StageClock()
        progress = Progress(sum(len(s.samples) for s in job.todo), clock, job.lock, enabled=c.ray.progress_bars)

        def committed(name: str, shard_stats: dict[str, Any]) -> None:
            progress.committed(shard_stats)
            if on_commit is not None:
                on_commit(name, shard_stats)

        sink = job.sink(on_commit=committed)
        t0 = time.perf_counter()
        try:
            if c.runner == "ray":
                run_ray(job.run_plan, sink, clock, progress=progress.tick)
            else:
                run_loop(job.run_plan, sink, clock)
            wall = time.perf_counter() - t0
            timings = clock.snapshot()
        finally:
            progress.close()
            if isinstance(clock, RemoteClock):
                clock.close()
        return finish_job(job, wall_s=wall, timings=timings, shards_committed=sink.totals.shards,
                          samples=sink.totals.samples)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags (shared by ``pearl annotate`` and ``python pipelines/annotate.py``)."""
    a = parser.add_argument
    a("--input", nargs="+", metavar="PATH", help="image folders, image/video files or COCO .json files "
      "(local paths or fsspec URLs such as s3://bucket/prefix)")
    a("--out", metavar="OUT", help="output folder: a local path or s3://bucket/prefix")
    a("--body-models", metavar="DIR|synthetic", help="body-model folder in the official layout (checked, used as "
      "it is, never written), or 'synthetic' (default: $PEARL_BODY_MODELS, else the synthetic kit, made on first "
      "use in $PEARL_CACHE/kits/synthetic-v<kit version>-seed0)")
    a("--config", metavar="FILE", help="YAML or TOML config file; flags override its values")
    a("--mode", choices=cfg.MODES, help="incremental (default): skip committed shards; overwrite: delete this "
      "split's outputs first")
    a("--stages", metavar="LIST", help="comma-separated stages in data-flow order: registry names "
      "(keypoints/mediapipe) or annotator names (persons) (default: " + ",".join(cfg.DEFAULT_STAGES) + ")")
    a("--dry-run", action="store_true", help="print the resolved config, stage plan and shard plan; run nothing")
    a("--split", help="split name of the shards and records (default: train)")
    a("--images-per-shard", type=int, metavar="N", help="samples per shard (default: 64)")
    a("--seed", type=int, help="seed handed to stages that take one (default: 0)")
    a("--limit", type=int, metavar="N", help="annotate only the first N samples in key order")
    a("--image-root", metavar="DIR", help="folder COCO file_name entries are relative to (default: the json's)")
    a("--video-stride", type=int, metavar="N", help="keep every N-th video frame (default: 1)")
    a("--max-pixels", type=int, metavar="N", help="quarantine images with more pixels (default: 40000000)")
    a("--parquet-images", action="store_true", default=None, help="also store crop JPEGs in the Parquet files")
    a("--runner", choices=cfg.RUNNERS, help="ray (default) or loop (same stages in this process)")
    a("--ray-address", metavar="ADDR", help="Ray cluster to join (default: $RAY_ADDRESS, a cluster running on "
      "this machine, else a new local Ray)")
    a("--num-cpus", type=int, metavar="N", help="CPUs of a newly started local Ray (default: all)")
    a("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> cfg.AnnotateConfig:
    """The config file (if any) updated with the flags that were given."""
    config = cfg.load_config_file(args.config) if args.config else cfg.AnnotateConfig()
    source = {"inputs": args.input, "image_root": args.image_root, "video_stride": args.video_stride,
              "max_pixels": args.max_pixels, "limit": args.limit}
    sink = {"out": args.out, "split": args.split, "images_per_shard": args.images_per_shard,
            "parquet_images": args.parquet_images, "mode": args.mode}
    ray = {"address": args.ray_address, "num_cpus": args.num_cpus, "progress_bars": False if args.no_progress else None}
    top = {"body_models": args.body_models, "seed": args.seed, "runner": args.runner}
    changes = {k: v for k, v in top.items() if v is not None}
    for name, values in (("source", source), ("sink", sink), ("ray", ray)):
        given = {k: v for k, v in values.items() if v is not None}
        changes[name] = dataclasses.replace(getattr(config, name), **given)
    if args.stages:
        by_name = {s.name: s for s in config.stages}
        changes["stages"] = [by_name.get(n.strip(), cfg.StageSpec(name=n.strip()))
                             for n in args.stages.split(",") if n.strip()]
    return dataclasses.replace(config, **changes)


SUPERVISED_ENV = "PEARL_SUPERVISED"
"""Set in the child process a supervised job runs in (see :func:`supervise`)."""
CLUSTER_LOST = 3
"""Exit status of a job that lost the Ray cluster it joined."""
_GCS_LOST = ("Failed to connect to GCS", "GCS has been unreachable", "RaySystemError")


def cluster_reachable(address: str, *, tries: int = 3, wait_s: float = 1.0) -> bool:
    """Whether the Ray head at ``address`` (``host:port``, optionally ``ray://`` or ``http://``) accepts a TCP
    connection on each of ``tries`` attempts ``wait_s`` apart. A job's process may die with the cluster before
    it can print why (the core worker exits when the raylet goes), so :func:`supervise` asks the cluster
    itself. An address without a port (``auto``) cannot be checked and counts as reachable."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return True
    for attempt in range(tries):
        if attempt:
            time.sleep(wait_s)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=wait_s + 2):
                pass
        except OSError:
            return False
    return True


def supervise(address: str) -> int:
    """Run this very command again in a child process and wait for it: a job that joins a cluster dies with
    the cluster (Ray's core worker ends the process when it cannot reach the GCS, past Python's reach), so the
    parent says what happened. Returns the child's exit status, or :data:`CLUSTER_LOST` with a clear message
    when it ended because the cluster went away."""
    env = {**os.environ, SUPERVISED_ENV: "1"}
    child = subprocess.Popen([sys.executable, *sys.argv], env=env, stderr=subprocess.PIPE, text=True,
                             errors="replace")
    tail: list[str] = []
    try:
        for line in child.stderr:
            sys.stderr.write(line)
            tail = (tail + [line])[-200:]
    except KeyboardInterrupt:
        child.terminate()
        raise
    code = child.wait()
    if code in (0, 2):
        return code
    if any(marker in line for line in tail for marker in _GCS_LOST) or not cluster_reachable(address):
        log.error("lost the Ray cluster at %s in the middle of the job (the job's process ended with status %s). "
                  "The shards committed so far are kept: run the same command again, once the cluster is back, "
                  "to resume from them.", address, code)
        return CLUSTER_LOST
    return code


def run_cli(args: argparse.Namespace, *, run: Callable[[cfg.AnnotateConfig], dict[str, Any]] = run_job,
            runner: str | None = None, dry_run_notes: Sequence[str] = ()) -> int:
    """Run (or with ``--dry-run`` describe) the job; returns the exit status (2 for :data:`USER_ERRORS`).

    Another launcher passes its ``run`` (config -> report), its ``runner`` name for the dry run and lines
    the dry run adds (the Beam launcher: ``run_beam_job``, ``beam`` and its pipeline options).
    """
    try:
        config = config_from_args(args)
        address = config.ray.address or os.environ.get("RAY_ADDRESS")
        if (address and config.runner == "ray" and run is run_job and not args.dry_run
                and not os.environ.get(SUPERVISED_ENV)):
            return supervise(address)
        if args.dry_run:
            plan = plan_job(config, make_kit=False)
            print("\n".join([describe_plan(plan, runner=runner), *dry_run_notes]))
            errors = check_plan(plan.config).errors
            for error in errors:
                log.error("%s", error)
            return 2 if errors else 0
        report = run(config)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        return 2
    print(summary_line(report))
    return 0


def summary_line(report: dict[str, Any]) -> str:
    """The one-line JSON a finished job prints: out, shards, persons, quarantined, images_per_s."""
    totals = report["totals"]
    return json.dumps({"out": report["run"]["out"], "shards": totals["shards"], "persons": totals["persons"],
                       "quarantined": totals["quarantined"], "images_per_s": report["throughput"]["images_per_s"]})


def main(argv: Sequence[str] | None = None) -> int:
    """``python pipelines/annotate.py``: parse the flags, run (or describe) the job; returns the exit status."""
    parser = argparse.ArgumentParser(prog="annotate.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_cli(args)

