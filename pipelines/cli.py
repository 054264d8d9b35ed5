"""The ``pearl`` command.

Subcommands live in :mod:`pipelines.commands`, one module each, listed in :data:`COMMANDS`. A command
module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; heavy imports
belong inside ``run`` so that ``pearl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> module path. Adding a subcommand = adding a module and one line here.
COMMANDS: dict[str, str] = {
    "annotate": "pipelines.commands.annotate",
    "submit": "pipelines.commands.submit",
    "assets": "pipelines.commands.assets",
    "demo": "pipelines.commands.demo",
    "models": "pipelines.commands.models",
    "review": "pipelines.commands.review",
    "stats": "pipelines.commands.stats",
    "filter": "pipelines.commands.filter",
    "train": "pipelines.commands.train",
    "evaluate": "pipelines.commands.evaluate",
    "predict": "pipelines.commands.predict",
    "corpus": "pipelines.commands.corpus",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pearl",
        description="EHM pseudo-ground-truth annotation (SMPL-X + FLAME + MANO) and the PEAR trainer.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_path in COMMANDS.items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
