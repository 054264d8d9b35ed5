"""``pearl annotate``: the annotation job (see ``docs/annotate.md``)."""

from __future__ import annotations

import argparse

HELP = "annotate images and videos into EHM WebDataset + Parquet shards (Ray; local Ray when no cluster)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.annotation.job import add_arguments as job_arguments

    job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.annotation.job import run_cli

    return run_cli(args)
