"""Proof that the trainer learns, on known answers: synthesize a corpus, train the tiny regressor on the CPU for a
fixed time budget, evaluate on the held-out split against the mean-parameter prediction. Prints one JSON object.

    python -m benchmarks.train_synthetic [--count 2000] [--val-count 200] [--budget-s 840] [--out DIR]

Steps: (1) ``pearl corpus synthesize`` into ``OUT/corpus`` (``--crop-size`` / ``--crop-scale``; the tiny model
reads 128 x 96 crops); (2) a 20-step calibration run measures the training rate on this machine, from which
``trainer.max_steps`` is set so that the cosine schedule ends near ``--budget-s`` seconds (``max_time_s`` stops
the run at the budget in any case); (3) the training run (``pear-tiny``, AdamW, warm-up, cosine, flips, scale,
rotation and colour augmentation); (4) ``pearl evaluate``'s metrics on the ``val`` split, for the model and for
its mean parameters; (5) the data loader's rate alone (one worker, decode + augment).

Keys: ``mpjpe_mm_model`` / ``mpjpe_mm_mean_pose`` / ``mpjpe_ratio_to_mean_pose`` (goal <= 0.6), ``pa_mpjpe_mm_*``,
``pve_mm_*``, ``pck_0.1_*``, ``pck_0.05_*``, ``hand_pa_pve_mm_*``, ``face_landmark_mm_*``, ``lip_vertex_mm_*``,
``train_s`` (fitting only), ``corpus_s``, ``steps``, ``samples_seen``, ``train_samples_per_s``,
``loader_samples_per_s``, ``load_avg_before`` / ``load_avg_after`` (the machine's 1-minute load average: the
figures depend on what else runs), ``cpu_count``, ``torch_threads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("benchmarks.train_synthetic")


def _config(out: Path, corpus: Path, body_models: str, args: argparse.Namespace, max_steps: int, budget: float | None):
    from pipelines.train.config import config_from_dict

    return config_from_dict({
        "out": str(out), "body_models": body_models, "seed": args.seed,
        "model": {"preset": "pear-tiny", "overrides": {"head": {"readout": args.readout}}},
        "data": {"train": [{"urls": _train_urls(corpus)}], "val": [], "batch_size": args.batch_size,
                 "num_workers": args.workers, "shuffle_buffer": 500, "epoch_size": args.count,
                 "stats_samples": min(args.count, 2000)},
        "optim": {"lr": args.lr, "warmup_steps": min(200, max(1, max_steps // 10)), "weight_decay": 1e-4},
        "trainer": {"max_steps": max_steps, "max_time_s": budget, "val_every_n_steps": 10**9,
                    "checkpoint_every_n_steps": max(1, max_steps), "log_every_n_steps": 20, "progress_bar": False,
                    "torch_threads": args.threads},
    })


def _train_urls(corpus: Path) -> list[str]:
    return sorted(str(p) for p in (corpus / "wds").glob("train-*.tar"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--body-models", default=None, help="body-model folder (default: a fresh synthetic kit)")
    parser.add_argument("--count", type=int, default=2000, help="training persons (default 2000)")
    parser.add_argument("--val-count", type=int, default=200, help="held-out persons (default 200)")
    parser.add_argument("--crop-size", type=int, default=192, help="corpus crop.jpg side in px (default 192)")
    parser.add_argument("--crop-scale", type=float, default=1.6, help="corpus crop side in box sides (default 1.6)")
    parser.add_argument("--yaw-range", type=float, default=0.8, help="corpus: largest yaw either way, rad (default 0.8)")
    parser.add_argument("--spread", type=float, default=0.5, help="corpus: joint spread in half-ranges (default 0.5)")
    parser.add_argument("--clutter", type=int, default=3, help="corpus: objects on each backdrop (default 3)")
    parser.add_argument("--budget-s", type=float, default=840.0, help="training time budget in s (default 840)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="data-loading workers (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process (default 2)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--readout", choices=("flat", "query"), default="flat",
                        help="the head's readout (model.head.readout; default flat, the pear-tiny preset's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "pipelines.io.sinks"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import lightning as L
    import torch

    from model.networks.pear import PEAR_TINY
    from model.synthetic_people import PoseDistribution
    from pipelines.train.corpus import CorpusConfig, synthesize
    from pipelines.train.evaluate import evaluate_shards
    from pipelines.train.run import fit

    load_before = os.getloadavg()[0]
    tmp = tempfile.TemporaryDirectory(prefix="pearl-train-bench-") if args.out is None else None
    work = Path(args.out or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    body_models = args.body_models
    if body_models is None:
        from model.assets.synthetic import synthesize_kit

        body_models = str(synthesize_kit(work / "kit", seed=0))
    corpus = work / "corpus"
    t0 = time.perf_counter()
    if not (corpus / "manifest.json").exists():
        pose = PoseDistribution(yaw_range=args.yaw_range, spread=args.spread)
        synthesize(corpus, body_models, CorpusConfig(count=args.count, val_count=args.val_count, per_shard=100,
                                                     seed=args.seed, crop_size=args.crop_size,
                                                     crop_scale=args.crop_scale, pose=pose, clutter=args.clutter))
    corpus_s = time.perf_counter() - t0

    class StepTimes(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *a, **k) -> None:  # noqa: ANN002, ANN003
            self.times.append(time.perf_counter())

    # calibration: the training rate on this machine now
    timer = StepTimes()
    fit(_config(work / "calibrate", corpus, body_models, args, 20, None), callbacks=[timer])
    rate = 15 / max(1e-6, timer.times[19] - timer.times[4])
    max_steps = max(50, int(rate * args.budget_s * 0.95))
    log.info("calibration: %.2f steps/s -> max_steps %d", rate, max_steps)

    timer = StepTimes()
    t1 = time.perf_counter()
    last = fit(_config(work / "run", corpus, body_models, args, max_steps, args.budget_s), callbacks=[timer])
    train_s = timer.times[-1] - t1 if timer.times else time.perf_counter() - t1
    steps = len(timer.times)

    val = sorted(str(p) for p in (corpus / "wds").glob("val-*.tar"))
    metrics = evaluate_shards(last, val, body_models=body_models, device="cpu", batch_size=32, baseline=True)

    # the data loader alone: one worker's decode + augment rate
    from model.ehm import EHM
    from model.flip import ShapeMirror
    from pipelines.train.augment import SamplePreparer
    from pipelines.train.data import StreamSpec, TrainStream

    config = _config(work / "loader", corpus, body_models, args, 1, None)
    preparer = SamplePreparer(config.data, PEAR_TINY, ShapeMirror.from_ehm(EHM.from_dir(body_models)))
    stream = TrainStream(StreamSpec(((tuple(_train_urls(corpus)), 1.0),), seed=1, shuffle_buffer=100), preparer,
                         batch_size=32, batches=8)
    t2 = time.perf_counter()
    loaded = sum(1 for _ in stream)
    loader_rate = loaded / (time.perf_counter() - t2)

    def get(key: str):
        return metrics.get(key)

    ratio = get("mpjpe_mm") / get("mpjpe_mm_mean_pose") if get("mpjpe_mm") and get("mpjpe_mm_mean_pose") else None
    result = {
        "mpjpe_mm_model": get("mpjpe_mm"), "mpjpe_mm_mean_pose": get("mpjpe_mm_mean_pose"),
        "mpjpe_ratio_to_mean_pose": ratio,
        "pa_mpjpe_mm_model": get("pa_mpjpe_mm"), "pa_mpjpe_mm_mean_pose": get("pa_mpjpe_mm_mean_pose"),
        "pve_mm_model": get("pve_mm"), "pve_mm_mean_pose": get("pve_mm_mean_pose"),
        "pck_0.1_model": get("pck_0.1"), "pck_0.1_mean_pose": get("pck_0.1_mean_pose"),
        "pck_0.05_model": get("pck_0.05"), "pck_0.05_mean_pose": get("pck_0.05_mean_pose"),
        "hand_pa_pve_mm_model": get("hand_pa_pve_mm"), "hand_pa_pve_mm_mean_pose": get("hand_pa_pve_mm_mean_pose"),
        "face_landmark_mm_model": get("face_landmark_mm"),
        "face_landmark_mm_mean_pose": get("face_landmark_mm_mean_pose"),
        "lip_vertex_mm_model": get("lip_vertex_mm"), "lip_vertex_mm_mean_pose": get("lip_vertex_mm_mean_pose"),
        "val_samples": metrics.get("samples"),
        "train_s": round(train_s, 1), "corpus_s": round(corpus_s, 1), "steps": steps,
        "samples_seen": steps * args.batch_size, "train_samples_per_s": round(steps * args.batch_size / train_s, 2),
        "loader_samples_per_s": round(loader_rate, 2), "calibration_steps_per_s": round(rate, 3),
        "train_count": args.count, "val_count": args.val_count, "batch_size": args.batch_size,
        "workers": args.workers, "torch_threads": args.threads, "cpu_count": os.cpu_count(),
        "model": "pear-tiny", "readout": args.readout, "image_size": list(PEAR_TINY.image_size), "crop_size": args.crop_size,
        "crop_scale": args.crop_scale, "yaw_range": args.yaw_range, "spread": args.spread, "clutter": args.clutter,
        "lr": args.lr, "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2), "torch": torch.__version__,
    }
    print(json.dumps(result, sort_keys=True))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
