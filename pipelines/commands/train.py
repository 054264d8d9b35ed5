"""``pearl train``: fit the PEAR regressor on pearl's shards (see ``docs/training.md``)."""

from __future__ import annotations

import argparse
import logging

HELP = "train the PEAR regressor on WebDataset shards (one process, torchrun DDP, or Ray Train)"

log = logging.getLogger(__name__)

FLAGS: dict[str, tuple[str, type, str]] = {
    "--out": ("out", str, "output folder (checkpoints, logs, config.yaml, mean_params.npz)"),
    "--body-models": ("body_models", str, "body-model folder, or 'synthetic' (default: the config's, else synthetic)"),
    "--preset": ("model.preset", str, "model configuration: pear-b or pear-tiny"),
    "--max-steps": ("trainer.max_steps", int, "optimiser steps of the run (and of the cosine schedule)"),
    "--batch-size": ("data.batch_size", int, "samples per batch and process"),
    "--num-workers": ("data.num_workers", int, "data-loading workers per process"),
    "--lr": ("optim.lr", float, "peak learning rate"),
    "--seed": ("seed", int, "seed of weights, data order and augmentation"),
    "--resume": ("resume", str, "checkpoint to resume from exactly, or 'auto' (OUT/checkpoints/last.ckpt if any)"),
    "--accelerator": ("trainer.accelerator", str, "auto, cpu or gpu"),
    "--devices": ("trainer.devices", str, "devices per node (auto: all; torchrun sets it)"),
    "--precision": ("trainer.precision", str, "auto (bf16 on CUDA), 32, bf16-mixed, 16-mixed"),
    "--ray-address": ("ray.address", str, "run under Ray Train on this cluster (auto, ray://host:10001, local)"),
    "--ray-workers": ("ray.num_workers", int, "Ray Train workers (one process each)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML run config (flags override it)")
    parser.add_argument("--train-shards", action="append", default=None, metavar="URLS",
                        help="training shards: a brace pattern, paths, a run folder, pipe: or s3:// URLs; repeat the "
                        "flag for several sets (equal weights; set weights in the config)")
    parser.add_argument("--val-shards", action="append", default=None, metavar="URLS",
                        help="held-out shards for the periodic evaluation")
    for flag, (key, kind, text) in FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=f"{text} [{key}]")
    parser.add_argument("--ray-gpu", action="store_true", help="one GPU per Ray Train worker [ray.use_gpu]")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, e.g. --set optim.warmup_steps=200 --set data.augment.flip_prob=0")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace):  # -> TrainConfig
    """The resolved config: defaults, then ``--config``, then the flags, then ``--set``."""
    from pipelines.train.config import config_from_dict, parse_assignment, read_config_file, set_key

    data = read_config_file(args.config) if args.config else {}
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            set_key(data, key, int(value) if key == "trainer.devices" and str(value).isdigit() else value)
    if args.train_shards:
        set_key(data, "data.train", [{"urls": u} for u in args.train_shards])
    if args.val_shards:
        set_key(data, "data.val", list(args.val_shards))
    if args.ray_gpu:
        set_key(data, "ray.use_gpu", True)
    for text in args.assignments:
        set_key(data, *parse_assignment(text))
    return config_from_dict(data, args.config or "flags")


def run(args: argparse.Namespace) -> int:
    import yaml

    from pipelines.train.config import TrainConfigError, to_dict
    from pipelines.train.data import DataError

    try:
        config = config_from_args(args)
        if args.dry_run:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        from pipelines.train.run import fit, fit_on_ray

        last = fit_on_ray(config) if config.ray.address else fit(config)
    except (TrainConfigError, DataError) as exc:
        log.error("%s", exc)
        return 2
    print(f"last checkpoint: {last}")
    return 0
