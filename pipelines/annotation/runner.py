"""Executing the stage plan: on Ray Data actor pools, in a plain Python loop, or on Beam (its own module).

The unit of work is the **shard**: every runner loads a whole shard (its samples, read and decoded), then
calls each stage **once on all of the shard's rows**, in plan order, and hands the result to the sink::

    shard spec -> load_shard (read + decode) -> StageAdapter(persons) -> StageAdapter(keypoints) -> ... -> ShardSink

So the rows a stage sees together are a function of the shard plan alone, never of resources, actors or
the runner; stages that batch (the fits, the networks) cut the shard's rows into chunks by their own
options, and every stage call runs under the job's ``torch_threads``. The same inputs, config and seed give
the same bytes whether the job runs on Ray or in the loop, with one actor or many, uninterrupted or resumed.

- :class:`StageAdapter` wraps one registered stage: it builds the stage once (``__init__``), times each
  call, and after the **persons** stage re-attaches the sample columns to the person rows, adds one
  marker row per sample with no person (``no_persons``) and per failed sample the stage dropped, and
  counts each sample's rows (``sample_rows``) so the sink knows when a sample is complete. After the
  **last** stage it encodes the person crop to JPEG (``crop_jpeg``) and drops the image columns, so that
  only record fields travel to the sink.
- :func:`run_loop` runs them in this process, shard by shard (tests, debugging, the benchmark baseline).
- :func:`run_ray` builds one streaming Ray Data plan whose rows are shards: a read task per shard
  (``map_batches`` with a function, fractional ``num_cpus``), one actor pool per stage (``map_batches`` with
  :class:`ShardStep`, ``compute=ActorPoolStrategy(size=num_actors)``, ``num_cpus``/``num_gpus`` from the
  stage's resources, one shard per call), and the driver consuming the output stream into the sink, which
  commits each shard as it arrives. Ray Data restarts dead actors and retries their tasks; the sink
  counts each ``(sample, person)`` row once, so a killed actor loses and duplicates nothing.

Per-stage busy time and row counts go to a :class:`StageClock` (a Ray actor under Ray).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from annotators.base import ERROR_REASON, ERROR_STAGE, StageContext, build_config, ensure_error_columns, error_digest
from annotators.batches import Batch, batch_len, concat_batches, placeholder_rows, take_rows
from annotators.persons import NO_PERSON
from pipelines.annotation.config import PERSONS_ANNOTATOR, AnnotateConfig, RayConfig, stage_class
from pipelines.annotation.ray_reaper import start_reaper
from pipelines.io.body_models import cached_kit
from pipelines.io.sinks import CROP_JPEG, NO_PERSONS, SAMPLE_ROWS, ShardSink, ShardSpec
from pipelines.io.sources import load_batch, samples_to_batch

log = logging.getLogger(__name__)

LOAD = "load"
"""Name of the read-and-decode step in timings."""
SINK_COLUMNS = frozenset(schemas.FIELD_NAMES) | {
    "sample_key", "source", "person_index", ERROR_STAGE, ERROR_REASON, SAMPLE_ROWS, NO_PERSONS, CROP_JPEG}
"""Columns the last stage passes on to the sink (everything else, e.g. images, is dropped there)."""
REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (put on ``PYTHONPATH`` of a local Ray's workers)."""


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


@dataclass
class StageTiming:
    """Busy time and row counts of one stage (summed over its actors)."""

    calls: int = 0
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0


class StageClock:
    """Accumulates :class:`StageTiming` per stage name (thread-safe; runs as a Ray actor under Ray)."""

    def __init__(self) -> None:
        self._timings: dict[str, StageTiming] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, seconds: float, rows_in: int, rows_out: int) -> None:
        with self._lock:
            t = self._timings.setdefault(stage, StageTiming())
            t.calls += 1
            t.rows_in += rows_in
            t.rows_out += rows_out
            t.seconds += seconds

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``stage -> {calls, rows_in, rows_out, seconds}``."""
        with self._lock:
            return {k: dataclasses.asdict(v) for k, v in self._timings.items()}


class RemoteClock:
    """Picklable front of a :class:`StageClock` Ray actor (fire-and-forget ``record``)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def record(self, stage: str, seconds: float, rows_in: int, rows_out: int) -> None:
        self.handle.record.remote(stage, seconds, rows_in, rows_out)

    def snapshot(self) -> dict[str, dict[str, float]]:
        import ray

        return ray.get(self.handle.snapshot.remote())

    def close(self) -> None:
        """Stop the clock actor."""
        import ray

        ray.kill(self.handle)


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def make_stage(cls: type, options: Mapping[str, Any], context: StageContext) -> Any:
    """Build a stage from its resolved options (plain data, see :func:`pipelines.annotation.config.resolve`):
    ``cls(typed config, context=context)``."""
    config_class = cls.config_class
    config = build_config(config_class, options, cls.__name__) if config_class is not None else None
    return cls(config, context=context)


def stage_backend(spec_name: str) -> str:
    """``"<registry name>@<version>"`` of a stage (``version`` class attribute, if any)."""
    version = getattr(stage_class(spec_name), "version", "")
    return f"{spec_name}@{version}" if version else spec_name


class StageAdapter:
    """One stage as the runners call it (see the module docstring).

    Args:
        stage_cls: the stage class (passed as a class, so that workers need no registry lookup).
        spec_name: registry name of the stage.
        options: its config options.
        context: run-level values for its config.
        clock: where call timings go (a :class:`StageClock` or :class:`RemoteClock`), or None.
        last: True for the last stage of the plan (encodes crops, drops image columns).
        crop_scale: side of the crop JPEG made when no stage made one, in person-box sides.
        crop_size: its side in px.
        torch_threads: torch's intra-op threads during each call.
    """

    def __init__(self, stage_cls: type, spec_name: str, options: Mapping[str, Any], context: StageContext, *,
                 clock: Any = None, last: bool = False, crop_scale: float = 2.0, crop_size: int = 384,
                 torch_threads: int = 1) -> None:
        self.name = spec_name
        self.persons = spec_name.split("/", 1)[0] == PERSONS_ANNOTATOR
        self.last = last
        self.crop_scale, self.crop_size = crop_scale, crop_size
        self.torch_threads = torch_threads
        self.clock = clock
        if context.body_models_cached:
            cached_kit(Path(context.body_models))  # a worker node may not have the cache yet
        self.stage = make_stage(stage_cls, options, context)

    def __call__(self, batch: Batch) -> Batch:
        t0 = time.perf_counter()
        batch = {k: v for k, v in batch.items()}
        ensure_error_columns(batch)
        for col in (ERROR_STAGE, ERROR_REASON):
            batch[col] = batch[col].copy()  # zero-copy batches are read-only
        n_in = batch_len(batch)
        with torch_threads(self.torch_threads):
            try:
                out = self.stage(dict(batch))
            except Exception as exc:  # noqa: BLE001 - a stage bug must not sink the shard: isolate the bad rows
                log.warning("stage %s failed on a shard of %d rows (%s); retrying its rows one by one", self.name,
                            n_in, error_digest(exc))
                out = self._row_by_row(batch)
        ensure_error_columns(out)
        if self.persons:
            out = account_samples(batch, out, self.name)
        if self.last:
            out = finish_rows(out, self.crop_scale, self.crop_size)
        if self.clock is not None:
            self.clock.record(self.name, time.perf_counter() - t0, n_in, batch_len(out))
        return out

    def _row_by_row(self, batch: Batch) -> Batch:
        """Call the stage on each row alone; rows that still raise are marked failed by this stage."""
        done, failed = [], []
        for i in range(batch_len(batch)):
            single = take_rows(batch, np.array([i]))
            try:
                done.append(ensure_error_columns(self.stage(dict(single))))
            except Exception as exc:  # noqa: BLE001 - quarantined with its reason
                single[ERROR_STAGE] = np.array([single[ERROR_STAGE][0] or self.name], dtype=object)
                single[ERROR_REASON] = np.array([single[ERROR_REASON][0] or error_digest(exc)], dtype=object)
                failed.append(single)
        if not done:
            return concat_batches(failed)
        good = concat_batches(done)
        if not failed:
            return good
        bad_in = concat_batches(failed)
        bad = placeholder_rows(good, batch_len(bad_in))
        bad.update({k: v for k, v in bad_in.items() if k in good})
        if "person_index" in bad and "person_index" not in bad_in:
            bad["person_index"][:] = -1
        return concat_batches([good, bad])


def account_samples(inputs: Batch, outputs: Batch, stage: str) -> Batch:
    """After the persons stage: carry the sample columns onto person rows, add a row for each sample that
    produced none (a ``no_persons`` marker, or its error when it had failed already) and set ``sample_rows``."""
    ensure_error_columns(outputs)
    if "person_index" not in outputs:
        outputs["person_index"] = np.full(batch_len(outputs), -1, dtype=np.int32)
    where = {k: i for i, k in enumerate(inputs["sample_key"])}
    rows = np.array([where[k] for k in outputs["sample_key"]], dtype=np.int64)
    for key, col in inputs.items():
        if key not in outputs:
            outputs[key] = col[rows]
    missing = np.array(sorted(set(range(len(where))) - set(rows.tolist())), dtype=np.int64)
    if len(missing):
        extra = placeholder_rows(outputs, len(missing))
        for key in inputs:
            extra[key] = inputs[key][missing]
        failed = np.array([bool(s) for s in inputs[ERROR_STAGE][missing]])
        extra["person_index"] = np.full(len(missing), -1, dtype=outputs["person_index"].dtype)
        extra[ERROR_STAGE] = np.where(failed, inputs[ERROR_STAGE][missing], stage).astype(object)
        extra[ERROR_REASON] = np.where(failed, inputs[ERROR_REASON][missing], NO_PERSON).astype(object)
        outputs[NO_PERSONS] = np.zeros(batch_len(outputs), dtype=bool)
        extra[NO_PERSONS] = ~failed
        outputs = concat_batches([outputs, {k: extra[k] for k in outputs}]) if batch_len(outputs) else extra
    else:
        outputs[NO_PERSONS] = np.zeros(batch_len(outputs), dtype=bool)
    reasons = outputs[ERROR_REASON]
    outputs[NO_PERSONS] = outputs[NO_PERSONS] | np.array(
        [p < 0 and str(r).startswith(NO_PERSON) for p, r in zip(outputs["person_index"], reasons)], dtype=bool)
    counts = Counter(outputs["sample_key"])
    outputs[SAMPLE_ROWS] = np.array([counts[k] for k in outputs["sample_key"]], dtype=np.int32)
    return outputs


def finish_rows(batch: Batch, crop_scale: float, crop_size: int) -> Batch:
    """Before the sink: keep only :data:`SINK_COLUMNS`, with ``crop_jpeg`` for good rows: from a ``crop``
    column, else cropped here from ``image`` around ``bbox_xyxy`` (``crop_scale`` box sides, ``crop_size``
    px; this also sets ``crop_xyxy``, the exact image region the crop shows)."""
    from annotators.images import crop_person, crop_region, encode_jpeg

    n = batch_len(batch)
    if CROP_JPEG not in batch:
        jpegs = np.empty(n, dtype=object)
        crop_xyxy = np.zeros((n, 4), dtype=np.float32)
        good = [not s for s in batch[ERROR_STAGE]]
        from_image = "crop" not in batch and "image" in batch and "bbox_xyxy" in batch
        for i in range(n):
            if not good[i]:
                continue
            if not from_image:
                jpegs[i] = encode_jpeg(batch["crop"][i]) if "crop" in batch else None
                continue
            crop, _ = crop_person(batch["image"][i], batch["bbox_xyxy"][i], scale=crop_scale, out_size=crop_size)
            jpegs[i] = encode_jpeg(crop)
            crop_xyxy[i] = crop_region(batch["bbox_xyxy"][i], crop_scale)
        batch[CROP_JPEG] = jpegs
        if from_image:
            batch["crop_xyxy"] = crop_xyxy
    return {k: v for k, v in batch.items() if k in SINK_COLUMNS}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``count`` (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_shard(spec: ShardSpec, *, max_pixels: int, clock: Any = None) -> Batch:
    """One shard's samples as rows, read and decoded (:func:`pipelines.io.sources.load_batch`), timed into
    ``clock`` as :data:`LOAD`."""
    t0 = time.perf_counter()
    out = load_batch(samples_to_batch(spec.samples), max_pixels=max_pixels)
    if clock is not None:
        n = batch_len(out)
        clock.record(LOAD, time.perf_counter() - t0, n, n)
    return out


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """What a runner executes."""

    config: AnnotateConfig
    """The resolved job config."""
    shards: list[ShardSpec]
    """Shards still to do."""
    context: StageContext
    """Run-level values for stage configs."""


def adapter_kwargs(plan: RunPlan, index: int, clock: Any) -> dict[str, Any]:
    """Keyword arguments of the :class:`StageAdapter` for stage ``index`` of ``plan`` (timings to ``clock``)."""
    spec = plan.config.stages[index]
    return {"stage_cls": stage_class(spec.name), "spec_name": spec.name, "options": dict(spec.options),
            "context": plan.context, "clock": clock, "last": index == len(plan.config.stages) - 1,
            "crop_scale": plan.config.sink.crop_scale, "crop_size": plan.config.sink.crop_size,
            "torch_threads": plan.config.torch_threads}


def run_loop(plan: RunPlan, sink: ShardSink, clock: StageClock | None = None) -> None:
    """Run the plan in this process, shard by shard, each stage once per shard."""
    stages = [StageAdapter(**adapter_kwargs(plan, i, clock)) for i in range(len(plan.config.stages))]
    for spec in plan.shards:
        batch = load_shard(spec, max_pixels=plan.config.source.max_pixels, clock=clock)
        for stage in stages:
            batch = stage(batch)
        sink.add(batch)
    sink.finish()


def connect_ray(config: RayConfig) -> None:
    """Join the Ray cluster the job is told to use, or start a private local one (see ``docs/annotate.md``).

    Order: already initialised in this process (a test, a notebook); ``config.address`` (``--ray-address``) or
    ``RAY_ADDRESS`` (set by ``ray job submit`` and ``ray submit``); else a **private** local Ray with
    ``num_cpus`` and ``object_store_memory`` from the config, whose workers find pearl's packages through
    ``PYTHONPATH`` — never another program's Ray that happens to run on the machine. A watchdog
    (:mod:`pipelines.annotation.ray_reaper`) stops the private Ray if the job's process dies without doing so.
    """
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address)
        return
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    log.info("starting a private local Ray for this job (num_cpus=%s); pass --ray-address to join a cluster",
             config.num_cpus or "all")
    start_reaper()  # before Ray starts, so that it sees every process Ray spawns
    ray.init(address="local", num_cpus=config.num_cpus, object_store_memory=config.object_store_memory,
             include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


SHARD = "shard"
"""Column of the Ray Data rows: the shard index."""
PAYLOAD = "payload"
"""Column of the Ray Data rows: the shard's rows (a batch, as one Python object)."""


def _payload_rows(indices: Sequence[int], payloads: Sequence[Batch]) -> Batch:
    column = np.empty(len(payloads), dtype=object)
    for i, payload in enumerate(payloads):
        column[i] = payload
    return {SHARD: np.asarray(indices, np.int64), PAYLOAD: column}


def load_shards(rows: Batch, *, shards: Mapping[int, ShardSpec], max_pixels: int, clock: Any = None) -> Batch:
    """Ray Data read step: rows of shard indices -> rows of loaded shards (:func:`load_shard`)."""
    indices = [int(i) for i in rows[SHARD]]
    return _payload_rows(indices, [load_shard(shards[i], max_pixels=max_pixels, clock=clock) for i in indices])


class ShardStep:
    """Ray Data actor of one stage: each row's shard through a :class:`StageAdapter` (built once per actor)."""

    def __init__(self, **adapter_kwargs: Any) -> None:
        self.adapter = StageAdapter(**adapter_kwargs)

    def __call__(self, rows: Batch) -> Batch:
        return _payload_rows(rows[SHARD], [self.adapter(dict(p)) for p in rows[PAYLOAD]])


def run_ray(plan: RunPlan, sink: ShardSink, clock: RemoteClock | None = None,
            progress: Callable[[], None] | None = None) -> None:
    """Run the plan as one streaming Ray Data job over shards; the driver feeds each finished shard to ``sink``.

    ``progress`` is called after every finished shard (the driver's progress reporting).
    """
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = plan.config.ray.progress_bars
    ctx.execution_options.preserve_order = False
    if not plan.shards:
        sink.finish()
        return
    reserved = sum(s.resources.num_cpus * s.resources.num_actors for s in plan.config.stages)
    available = ray.cluster_resources().get("CPU", 0.0)
    if reserved + plan.config.source.load_num_cpus > available:
        log.warning("the stage actors reserve %.2f of the cluster's %.2f CPUs, leaving less than a read task's %.2f: "
                    "Ray Data may stall unless the cluster scales up; lower the stages' num_cpus or num_actors",
                    reserved, available, plan.config.source.load_num_cpus)
    shards = {spec.index: spec for spec in plan.shards}
    ds = ray.data.from_items([{SHARD: i} for i in sorted(shards)], override_num_blocks=len(shards))
    ds = ds.map_batches(load_shards, fn_kwargs={"shards": shards, "max_pixels": plan.config.source.max_pixels,
                                                 "clock": clock},
                        batch_size=1, num_cpus=plan.config.source.load_num_cpus, batch_format="numpy")
    for index, spec in enumerate(plan.config.stages):
        r = spec.resources
        gpu = {"num_gpus": r.num_gpus} if r.num_gpus else {}
        ds = ds.map_batches(ShardStep, fn_constructor_kwargs=adapter_kwargs(plan, index, clock),
                            compute=ray.data.ActorPoolStrategy(size=r.num_actors), batch_size=1,
                            num_cpus=r.num_cpus, batch_format="numpy", **gpu)
    for rows in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for payload in rows[PAYLOAD]:
            sink.add(payload)
            if progress is not None:
                progress()
    sink.finish()


def ray_clock() -> RemoteClock:
    """A :class:`StageClock` actor (no CPU reserved) behind a :class:`RemoteClock`."""
    import ray

    return RemoteClock(ray.remote(num_cpus=0)(StageClock).remote())
