"""``pearl filter OUT --where SQL --out NEW``: a new shard set with only the chosen persons (see
``docs/review.md``)."""

from __future__ import annotations

import argparse
import logging

HELP = "write a new shard set (WebDataset + Parquet) with the persons a SQL condition and the review decisions select"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.review.filter import DECISION_MODES

    parser.add_argument("parent", metavar="OUT", help="the run to filter (a local path or s3://...)")
    parser.add_argument("--where", default=None, metavar="SQL",
                        help="a SQL condition over the Parquet columns, run by DuckDB as the WHERE clause of a "
                        "read-only SELECT, e.g. \"has_body AND quality_reproj_norm_body < 0.05 AND split = 'train'\" "
                        "(lists are 1-based: has_hands[2] is the right hand); default: every person")
    parser.add_argument("--decisions", choices=sorted(DECISION_MODES), default=None,
                        help="also apply the review decisions (OUT/review/decisions.parquet): 'accepted' keeps only "
                        "accepted persons, 'not-rejected' drops the rejected ones")
    parser.add_argument("--out", dest="out", required=True, metavar="NEW",
                        help="the new shard set's folder (local or s3://...); must not hold a run yet")
    parser.add_argument("--persons-per-shard", type=int, default=1000,
                        help="persons per output shard (default 1000); each split's shards are numbered from 0")


def run(args: argparse.Namespace) -> int:
    from pipelines.review.data import RunError
    from pipelines.review.filter import FilterError, filter_run

    try:
        result = filter_run(args.parent, args.out, args.where, decisions=args.decisions,
                            persons_per_shard=args.persons_per_shard)
    except (FilterError, RunError) as exc:
        log.error("%s", exc)
        return 2
    print(f"{result.persons} persons -> {result.out} "
          f"({', '.join(f'{s}: {n} shard(s)' for s, n in sorted(result.shards.items())) or 'no shards'})")
    return 0
