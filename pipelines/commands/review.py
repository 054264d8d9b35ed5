"""``pearl review OUT``: browse a run's persons with overlays, filter and sort them, record decisions
(see ``docs/review.md``)."""

from __future__ import annotations

import argparse
import logging
import time

from pipelines.io.body_models import ENV_BODY_MODELS, ENV_CACHE, KIT_SEED

HELP = "browse a run in a local web page: overlays, filters on quality fields, 3D view, accept/reject decisions"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the run folder (pearl annotate's --out): a local path or s3://...")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only; the page has no login, so "
                        "serve on other addresses only on a trusted network)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000; 0: any free port)")
    parser.add_argument(
        "--body-models", default=None, metavar="DIR",
        help=f"body models to draw the meshes with, as for pearl annotate: a folder (checked), or 'synthetic'; default "
        f"${ENV_BODY_MODELS}, else the synthetic kit cached under ${ENV_CACHE}/kits/synthetic-v<kit "
        f"version>-seed{KIT_SEED}. The page warns when their files differ from the run's (manifest asset_hashes)",
    )
    parser.add_argument("--no-mesh", action="store_true", help="draw keypoints only (no body models needed)")
    parser.add_argument("--reviewer", default=None,
                        help="name written with each decision in OUT/review/decisions.parquet (default: the OS user)")


def run(args: argparse.Namespace) -> int:
    from pipelines.review.app import ReviewServer, open_review
    from pipelines.review.data import RunError

    t0 = time.perf_counter()
    try:
        state = open_review(args.out, body_models=args.body_models, mesh=not args.no_mesh, reviewer=args.reviewer)
    except RunError as exc:
        log.error("%s", exc)
        return 2
    try:
        server = ReviewServer(state, args.host, args.port)
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s (is another review running? pass --port)", args.host, args.port, exc)
        return 2
    log.info("reviewing %s: %d persons, %d quarantined; decisions go to %s", args.out, state.run.count(),
             state.run.quarantine_count(), state.run.url(state.run.decisions.path))
    log.info("serving on %s (started in %.1f s; Ctrl-C to stop)", server.url, time.perf_counter() - t0)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    return 0
