"""``pearl stats OUT``: per-part distributions, acceptance rates and throughput of a run, as PNG plots, a
Markdown table file and JSON (see ``docs/review.md``)."""

from __future__ import annotations

import argparse
import logging

HELP = "per-part quality / confidence / parameter distributions, acceptance by source and reason, throughput"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the run folder (pearl annotate's --out): a local path or s3://...")
    parser.add_argument("--out", dest="stats_out", default=None, metavar="DIR",
                        help="where to write stats.md, stats.json and the PNG plots (default OUT/review/stats)")


def run(args: argparse.Namespace) -> int:
    from pipelines.review.data import ReviewRun, RunError
    from pipelines.review.stats import write_stats

    try:
        review = ReviewRun(args.out)
    except RunError as exc:
        log.error("%s", exc)
        return 2
    target = args.stats_out or f"{args.out.rstrip('/')}/review/stats"
    try:
        written = write_stats(review, target)
    finally:
        review.close()
    log.info("wrote %s", ", ".join(written))
    return 0
