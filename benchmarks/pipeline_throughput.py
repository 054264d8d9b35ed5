"""Throughput of the annotation job on this machine; prints one JSON object.

The example images are copied ``--repeat`` times (default 25: 100 images for the four examples) and
annotated with the job's default stages (or ``--stages``) three times, side by side in one process:

- ``loop``: the plain-Python-loop runner (same stage objects, same inputs, one process);
- ``ray_1``: Ray Data with one actor per stage;
- ``ray_2``: Ray Data with two actors per stage (each with half the stage's CPU share).

Each time is the runner's wall time (stage construction included, Ray's own start excluded: a local
Ray is started once before). Reported: ``images_per_s`` (end to end, ``ray_2``),
``actors_2_over_1_speedup`` (``ray_1`` time / ``ray_2`` time), ``ray_over_plain_loop_time_ratio``
(``ray_2`` time / ``loop`` time) and each run's per-stage busy seconds (summed over actors).

    python benchmarks/pipeline_throughput.py [--repeat 25] [--num-cpus N] [--examples DIR] [--stages A,B,...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.annotation import config as cfg  # noqa: E402
from pipelines.annotation.job import run_job  # noqa: E402
from pipelines.annotation.runner import connect_ray  # noqa: E402


def copy_images(src: Path, dest: Path, repeat: int) -> int:
    """``repeat`` copies of every image of ``src`` in ``dest``; returns how many."""
    dest.mkdir(parents=True)
    n = 0
    for path in sorted(src.iterdir()):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
            for i in range(repeat):
                shutil.copy(path, dest / f"r{i:03d}_{path.name}")
                n += 1
    return n


def timed_run(config: cfg.AnnotateConfig) -> tuple[float, dict]:
    """(wall seconds of the runner, per-stage busy seconds) of one job."""
    report = run_job(config)
    stages = {k: v["seconds"] for k, v in report["throughput"]["stages"].items()}
    return report["run"]["wall_s"], {"wall_s": report["run"]["wall_s"], "stage_busy_s": stages,
                                     "persons": report["totals"]["persons"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25, help="copies of each example image (default 25)")
    parser.add_argument("--examples", type=Path, default=REPO / "examples", help="image folder (default examples/)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--stages", default=",".join(cfg.DEFAULT_STAGES),
                        help="comma-separated stage plan (default: the job's default plan)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # stdout carries only the JSON result: Ray forwards worker output to the driver's sys.stdout
    with tempfile.TemporaryDirectory(prefix="pearl-bench-") as tmp, contextlib.redirect_stdout(sys.stderr):
        images = Path(tmp) / "images"
        n = copy_images(args.examples, images, args.repeat)
        base = cfg.resolve(cfg.AnnotateConfig(source=cfg.SourceConfig(inputs=[str(images)]),
                                              stages=[cfg.StageSpec(name=s) for s in args.stages.split(",") if s],
                                              sink=cfg.SinkConfig(out=str(Path(tmp) / "out"), mode="overwrite"),
                                              ray=cfg.RayConfig(num_cpus=args.num_cpus, progress_bars=False)))

        def variant(name: str, runner: str, actors: int) -> cfg.AnnotateConfig:
            # more actors share the stage's CPU reservation, so every variant reserves the same CPUs
            stages = [dataclasses.replace(s, resources=dataclasses.replace(
                s.resources, num_actors=actors, num_cpus=s.resources.num_cpus / actors)) for s in base.stages]
            return dataclasses.replace(base, runner=runner, stages=stages,
                                       sink=dataclasses.replace(base.sink, out=str(Path(tmp) / name)))

        runs = {}
        runs["loop"] = timed_run(variant("loop", "loop", 1))
        t0 = time.perf_counter()
        connect_ray(base.ray)
        ray_start = time.perf_counter() - t0
        runs["ray_1"] = timed_run(variant("ray_1", "ray", 1))
        runs["ray_2"] = timed_run(variant("ray_2", "ray", 2))
    loop_s, ray1_s, ray2_s = runs["loop"][0], runs["ray_1"][0], runs["ray_2"][0]
    result = {
        "images": n,
        "cpus": os.cpu_count(),
        "stages": [s.name for s in base.stages],
        "images_per_s": round(n / ray2_s, 3),
        "actors_2_over_1_speedup": round(ray1_s / ray2_s, 3),
        "ray_over_plain_loop_time_ratio": round(ray2_s / loop_s, 3),
        "ray_start_s": round(ray_start, 3),
        "runs": {name: detail for name, (_, detail) in runs.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
