"""``pearl assets``: check a body-model folder, write the synthetic kit, convert pickles to ``.npz``."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

HELP = "body-model files: check a folder, write the synthetic kit, convert pickles to .npz"
ENV_DIR = "PEARL_BODY_MODELS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="assets_action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a body-model folder; exit status 1 when a required file is missing or any file is wrong",
        description="One line per expected file: OK, MISSING (required), ABSENT (optional) or WRONG (which "
        "key or shape); missing files say where they officially come from and where to put them.",
    )
    check.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=None,
        metavar="DIR",
        help=f"the body-model folder (layout in docs/assets.md); default: ${ENV_DIR}",
    )
    synth = sub.add_parser(
        "synthesize",
        help="write the synthetic (licence-free) kit in the official formats and layout",
        description="Write SMPL, SMPL-X, FLAME and MANO stand-ins with every correspondence file to DIR; "
        "records made with it carry body_model_kit='synthetic'.",
    )
    synth.add_argument("dir", type=Path, metavar="DIR", help="output folder (created; existing kit files are replaced)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the kit's proportions and blend shapes (default 0); same seed, same bytes")
    conv = sub.add_parser(
        "convert",
        help="write pickle-free .npz copies of every pickled file",
        description="Every .pkl (and .npy/.npz with pickled members) under SRC becomes an .npz at the same relative "
        "path under DST; plain .npy/.npz files are copied. The loaders read the copies like the originals.",
    )
    conv.add_argument("src", type=Path, metavar="SRC", help="folder with the official (pickled) files")
    conv.add_argument("dst", type=Path, metavar="DST", help="output folder (may be SRC itself: the .npz files go beside the pickles)")


def run(args: argparse.Namespace) -> int:
    action = {"check": _check, "synthesize": _synthesize, "convert": _convert}[args.assets_action]
    return action(args)


def _check(args: argparse.Namespace) -> int:
    from model.assets.check import check_assets, check_passed, format_report, kit_info

    root = args.dir if args.dir is not None else (Path(os.environ[ENV_DIR]) if os.environ.get(ENV_DIR) else None)
    if root is None:
        print(f"error: give the body-model folder (pearl assets check DIR) or set ${ENV_DIR}", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"error: {root} is not a folder; create it and put the body-model files in it (see docs/assets.md)", file=sys.stderr)
        return 2
    info = kit_info(root)
    kind = f"synthetic kit (seed {info.get('seed')}, kit version {info.get('kit_version')})" if info else "official models"
    print(f"checking {root}: {kind}")
    results = check_assets(root)
    for line in format_report(results, root):
        print(line)
    if not check_passed(results):
        print(f"FAILED: {sum(r.failed for r in results)} file(s) missing or wrong")
        return 1
    print("all required files present and valid")
    return 0


def _synthesize(args: argparse.Namespace) -> int:
    from model.assets.synthetic import synthesize_kit

    out = synthesize_kit(args.dir, seed=args.seed)
    print(f"wrote the synthetic body-model kit (seed {args.seed}) to {out}; records made with it carry body_model_kit='synthetic'")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from model.assets.convert import convert_assets

    try:
        pairs = convert_assets(args.src, args.dst)
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for src, dst in pairs:
        print(f"{src} -> {dst}")
    print(f"{len(pairs)} file(s) written under {args.dst}; none of them holds a pickle")
    return 0
