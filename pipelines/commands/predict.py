"""``pearl predict IMAGES... --checkpoint CKPT --out DIR``: a trained regressor on images (see
``docs/training.md``)."""

from __future__ import annotations

import argparse
import json
import logging

HELP = "run a trained PEAR regressor on images: EHM records (WebDataset + Parquet) and mesh overlays"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by pearl train")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold a run yet)")
    parser.add_argument("--boxes", metavar="FILE.json", default=None,
                        help='person boxes {"image name": [[x0, y0, x1, y1], ...]} instead of the detector')
    parser.add_argument("--body-models", metavar="DIR", default=None,
                        help="body-model folder (default: the one the checkpoint was trained with)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="crops per network call (default 16)")


def run(args: argparse.Namespace) -> int:
    from model.checkpoints import CheckpointError
    from pipelines.io.body_models import BodyModelsError
    from pipelines.io.samples import SourceError
    from pipelines.train.predict import predict_images

    boxes = None
    try:
        if args.boxes:
            with open(args.boxes, encoding="utf-8") as f:
                boxes = json.load(f)
        result = predict_images(args.images, args.checkpoint, args.out, body_models=args.body_models, boxes=boxes,
                                device=args.device, batch_size=args.batch_size)
    except (CheckpointError, BodyModelsError, SourceError, FileNotFoundError, FileExistsError,
            json.JSONDecodeError) as exc:
        log.error("%s", exc)
        return 2
    for image, reason in sorted(result.failed.items()):
        log.warning("%s: %s", image, reason)
    print(f"{result.persons} persons in {result.images} images -> {result.out}")
    return 0
