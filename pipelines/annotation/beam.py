"""The annotation job on Apache Beam: the same stages as Beam DoFns, the same shard layout as the Ray job.

    python pipelines/annotate_beam.py --input examples --out runs/beam [job flags] [Beam pipeline options]

Job flags are those of ``pipelines/annotate.py`` (``--config``, ``--mode``, ``--stages``, ...; the Ray-only
ones are ignored); ``--runner`` names the **Beam** runner (default ``DirectRunner``) and every other flag
goes to Beam's ``PipelineOptions`` (``--direct_num_workers``, ``--flink_master``, ``--project``...).
See ``docs/cluster.md``.

Before and after the pipeline the launcher runs the Ray job's own driver steps
(:func:`pipelines.annotation.job.open_job`: plan the shards, take OUT's run lock, apply the mode, skip
committed shards, write ``OUT/manifest.json``; :func:`pipelines.annotation.job.finish_job`: the report);
the pipeline in between works on whole shards, as the Ray and plain-loop runners do::

    Create(shard specs) -> LoadFn (read + decode one shard) -> for each stage: StageFn -> WriteShardFn (ShardSink)

Every element is ``(shard spec, the shard's rows)``. :class:`StageFn` wraps
:class:`pipelines.annotation.runner.StageAdapter`, so a stage is built once per DoFn instance (``setup``) and
called once per shard, exactly as a Ray actor calls it: the tar, Parquet and quarantine files have the same
bytes as the Ray or plain-loop runner's for the same inputs and config.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from annotators.batches import Batch
from pipelines.annotation import config as cfg
from pipelines.annotation import job as annotate_job
from pipelines.annotation.runner import RunPlan, StageAdapter, adapter_kwargs, load_shard
from pipelines.io.shards import read_all_stats, shard_name
from pipelines.io.sinks import ShardSink, ShardSpec

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "pearl"
"""Beam metrics namespace of the per-stage counters (``<stage>/calls``, ``rows_in``, ``rows_out``, ``us``)."""
RUNNER_NAME = "beam"
"""``runner`` recorded in the report."""


# --------------------------------------------------------------------------------------------------
# DoFns
# --------------------------------------------------------------------------------------------------


class BeamClock:
    """The runners' stage clock on Beam metrics: counters summed over all workers of the pipeline."""

    def record(self, stage: str, seconds: float, rows_in: int, rows_out: int) -> None:
        for name, value in (("calls", 1), ("rows_in", rows_in), ("rows_out", rows_out),
                            ("us", round(seconds * 1e6))):
            Metrics.counter(METRICS_NAMESPACE, f"{stage}/{name}").inc(value)


def clock_snapshot(result: Any) -> dict[str, dict[str, float]]:
    """``stage -> {calls, rows_in, rows_out, seconds}`` from a finished pipeline's :class:`BeamClock` counters."""
    out: dict[str, dict[str, float]] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        stage, name = counter.key.metric.name.rsplit("/", 1)
        value = counter.committed if counter.committed is not None else counter.attempted
        timing = out.setdefault(stage, {"calls": 0, "rows_in": 0, "rows_out": 0, "seconds": 0.0})
        if name == "us":
            timing["seconds"] += value / 1e6
        else:
            timing[name] += value
    return out


class LoadFn(beam.DoFn):
    """Read and decode one shard (:func:`pipelines.annotation.runner.load_shard`)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels

    def process(self, spec: ShardSpec) -> Iterator[tuple[ShardSpec, Batch]]:
        yield spec, load_shard(spec, max_pixels=self.max_pixels, clock=BeamClock())


class StageFn(beam.DoFn):
    """One pipeline stage: ``setup`` builds it (models load once per DoFn instance), ``process`` runs it on
    one shard's rows.

    ``adapter_kwargs``: the keyword arguments of :class:`pipelines.annotation.runner.StageAdapter` (its ``clock`` is
    replaced by a :class:`BeamClock`).
    """

    def __init__(self, adapter_kwargs: Mapping[str, Any]) -> None:
        self.adapter_kwargs = {**adapter_kwargs, "clock": None}
        self.adapter: StageAdapter | None = None

    def setup(self) -> None:
        self.adapter = StageAdapter(**{**self.adapter_kwargs, "clock": BeamClock()})

    def process(self, element: tuple[ShardSpec, Batch]) -> Iterator[tuple[ShardSpec, Batch]]:
        spec, rows = element
        yield spec, self.adapter(dict(rows))


class WriteShardFn(beam.DoFn):
    """Write one complete shard with the Ray job's sink; emits the shard's stats. Raises
    :class:`pipelines.io.sinks.IncompleteShardsError` when rows are missing (the runner retries the bundle)."""

    def __init__(self, out: str, split: str, run_fields: Mapping[str, str], parquet_images: bool) -> None:
        self.out, self.split, self.run_fields, self.parquet_images = out, split, dict(run_fields), parquet_images

    def setup(self) -> None:
        self.fs, self.root = annotate_job.output_filesystem(self.out)

    def process(self, element: tuple[ShardSpec, Batch]) -> Iterator[dict[str, Any]]:
        spec, rows = element
        committed: list[dict[str, Any]] = []
        sink = ShardSink(self.fs, self.root, self.split, [spec], self.run_fields, parquet_images=self.parquet_images,
                         on_commit=lambda name, stats: committed.append(stats))
        if rows:
            sink.add(rows)
        sink.finish()
        yield from committed


def build_pipeline(pipeline: beam.Pipeline, plan: RunPlan, out: str, run_fields: Mapping[str, str]) -> Any:
    """Add the job's transforms to ``pipeline``; returns the PCollection of committed shards' stats."""
    c = plan.config
    shards = (pipeline
              | "shards" >> beam.Create(plan.shards)
              | "reshuffle" >> beam.Reshuffle()  # spread the shards over the workers
              | "load" >> beam.ParDo(LoadFn(c.source.max_pixels)))
    for index, spec in enumerate(c.stages):
        shards = shards | spec.name >> beam.ParDo(StageFn(adapter_kwargs(plan, index, None)))
    return shards | "write shards" >> beam.ParDo(WriteShardFn(out, c.sink.split, run_fields, c.sink.parquet_images))


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


def run_beam_job(config: cfg.AnnotateConfig, pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run the job on Beam (``pipeline_args``: Beam pipeline options); returns the report, also written to
    OUT/report.json/html. The lock is held until the pipeline has finished."""
    with annotate_job.open_job(config) as job:
        t0 = time.perf_counter()
        timings: dict[str, dict[str, float]] = {}
        if job.todo:
            pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
            build_pipeline(pipeline, job.run_plan, job.plan.config.sink.out, job.run_fields)
            result = pipeline.run()
            result.wait_until_finish()
            timings = clock_snapshot(result)
        wall = time.perf_counter() - t0
        todo = {shard_name(job.plan.config.sink.split, spec.index) for spec in job.todo}
        done = [s for s in read_all_stats(job.fs, job.root) if s["shard"] in todo]
        return annotate_job.finish_job(job, wall_s=wall, timings=timings, shards_committed=len(done),
                                   samples=sum(int(s["samples"]) for s in done), runner=RUNNER_NAME)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The job's flags, with ``--runner`` naming the Beam runner; unknown flags are Beam pipeline options."""
    parser = argparse.ArgumentParser(prog="annotate_beam.py", description=__doc__.splitlines()[0],
                                     conflict_handler="resolve")
    annotate_job.add_arguments(parser)
    parser.add_argument("--runner", dest="beam_runner", default="DirectRunner", metavar="RUNNER",
                        help="Beam runner: DirectRunner (default), FlinkRunner, SparkRunner, DataflowRunner, ...")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or with ``--dry-run`` describe) the job on Beam; returns the exit status."""
    parser = build_parser()
    args, pipeline_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    args.runner = None  # the job's --runner (ray|loop) is replaced by Beam's
    pipeline_args = [f"--runner={args.beam_runner}", *pipeline_args]
    return annotate_job.run_cli(args, run=functools.partial(run_beam_job, pipeline_args=pipeline_args),
                                runner=RUNNER_NAME, dry_run_notes=[f"beam pipeline options: {' '.join(pipeline_args)}"])

