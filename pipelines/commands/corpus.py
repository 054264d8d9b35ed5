"""``pearl corpus synthesize --out DIR --count N``: a training corpus with known answers (see
``docs/training.md``)."""

from __future__ import annotations

import argparse
import logging

HELP = "synthesize a corpus of posed, rendered body-model people with exact EHM labels (shards like pearl annotate's)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("synthesize", help=HELP, description=HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (local or s3://...; must not hold a run)")
    p.add_argument("--count", type=int, required=True, help="training persons (split train)")
    p.add_argument("--val-count", type=int, default=0, help="held-out persons (split val; default 0)")
    p.add_argument("--per-shard", type=int, default=64, help="persons per shard (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything drawn (default 0)")
    p.add_argument("--crop-scale", type=float, default=2.0, help="crop.jpg side in person-box sides (default 2.0)")
    p.add_argument("--crop-size", type=int, default=384, help="crop.jpg side in px (default 384)")
    p.add_argument("--yaw-range", type=float, default=1.6, help="largest yaw (rad) either way; 0 faces the camera")
    p.add_argument("--body-models", metavar="DIR", default=None,
                   help="body-model folder (default: $PEARL_BODY_MODELS, else the cached synthetic kit)")


def run(args: argparse.Namespace) -> int:
    from model.synthetic_people import PoseDistribution
    from pipelines.io.body_models import BodyModelsError, resolve_body_models
    from pipelines.train.corpus import CorpusConfig, synthesize

    try:
        config = CorpusConfig(count=args.count, val_count=args.val_count, per_shard=args.per_shard, seed=args.seed,
                              crop_scale=args.crop_scale, crop_size=args.crop_size,
                              pose=PoseDistribution(yaw_range=args.yaw_range))
        folder = resolve_body_models(args.body_models).folder
        corpus = synthesize(args.out, folder, config)
    except (BodyModelsError, FileExistsError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    counts = ", ".join(f"{split}: {n}" for split, n in corpus.persons.items())
    print(f"{counts} persons -> {corpus.out} ({corpus.seconds:.0f} s)")
    return 0
