"""``pearl evaluate``: metrics of a trained regressor on held-out shards and against COCO-WholeBody labels
(see ``docs/training.md`` and ``docs/metrics.md``)."""

from __future__ import annotations

import argparse
import json
import logging

HELP = "evaluate a pearl train checkpoint: MPJPE, PA-MPJPE, PVE, hand PA-PVE, PCK, face and lip errors"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by pearl train")
    parser.add_argument("--shards", action="append", default=[], metavar="URLS",
                        help="held-out shards (brace pattern, paths, a run folder, pipe: or s3:// URLs); repeatable")
    parser.add_argument("--coco-wholebody", metavar="FILE.json", default=None,
                        help="also the 2D PCK against these COCO-WholeBody labels (images beside the json, or "
                        "--image-root)")
    parser.add_argument("--image-root", metavar="DIR", default=None, help="folder of the COCO-WholeBody images")
    parser.add_argument("--body-models", metavar="DIR", default=None,
                        help="body-model folder (default: the one the checkpoint was trained with)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many shard samples")
    parser.add_argument("--batch-size", type=int, default=16, help="crops per network call (default 16)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--mean-pose", action="store_true",
                        help="also report the mean-parameter prediction on the shards (keys *_mean_pose)")
    parser.add_argument("--out", metavar="FILE.json", default=None, help="also write the JSON to this file")


def run(args: argparse.Namespace) -> int:
    from model.checkpoints import CheckpointError
    from pipelines.io.body_models import BodyModelsError
    from pipelines.train.config import TrainConfigError
    from pipelines.train.data import DataError
    from pipelines.train.evaluate import evaluate_coco_wholebody, evaluate_shards

    if not args.shards and not args.coco_wholebody:
        log.error("nothing to evaluate: pass --shards URLS and/or --coco-wholebody FILE.json")
        return 2
    result: dict = {}
    try:
        if args.shards:
            result.update(evaluate_shards(args.checkpoint, args.shards, body_models=args.body_models,
                                          device=args.device, batch_size=args.batch_size, limit=args.limit,
                                          baseline=args.mean_pose))
        if args.coco_wholebody:
            result.update(evaluate_coco_wholebody(args.checkpoint, args.coco_wholebody, image_root=args.image_root,
                                                  body_models=args.body_models, device=args.device,
                                                  batch_size=args.batch_size))
    except (CheckpointError, TrainConfigError, DataError, BodyModelsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0
