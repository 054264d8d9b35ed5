"""Speed of the PEAR regressor (ViT-B/16 at 256 x 192, 6-layer decoder head) and of its data loading. Prints one
JSON object.

    python -m benchmarks.regressor_speed [--repeats 3] [--threads 2] [--body-models DIR]

Keys:

- ``cpu_images_per_s_b1`` / ``cpu_images_per_s_b64``: inference (float32, ``torch.inference_mode``) at batch 1
  and 64 on the CPU, from the median of ``--repeats`` timed calls after one warm-up;
- ``cuda_bf16_images_per_s_b256`` / ``cuda_latency_ms_b1``: the same on CUDA with bf16 autocast (only when
  ``torch.cuda.is_available()``; absent otherwise);
- ``train_samples_per_s``: a training step (forward, the losses with both EHM bodies posed, backward, AdamW) at
  ``--train-batch`` on the device training would use (CUDA with bf16 autocast when present, else the CPU);
- ``loader_samples_per_s``: one data-loading worker (reading the shard, decoding ``ehm.npz`` and the 384 px
  ``crop.jpg``, gating, re-cropping to 256 x 192 with scale / rotation / flip / colour augmentation) on a small
  synthetic corpus; with ``W`` workers loading scales about ``W`` times while the cores last. Training is
  loader-bound when ``loader_samples_per_s * workers < train_samples_per_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure after a warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the training-step figure (default 8)")
    parser.add_argument("--body-models", default=None, help="body-model folder (default: a fresh synthetic kit)")
    args = parser.parse_args()

    import torch

    from model.networks.pear import PEAR_B, PearRegressor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"model": "pear-b", "image_size": list(PEAR_B.image_size), "torch": torch.__version__,
                    "threads": args.threads, "cpu_count": os.cpu_count(), "load_avg_before": round(os.getloadavg()[0], 2)}
    net = PearRegressor(PEAR_B).eval()
    h, w = PEAR_B.image_size
    result["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    with torch.inference_mode():
        for batch in (1, 64):
            x = torch.randn(batch, 3, h, w)
            result[f"cpu_images_per_s_b{batch}"] = round(batch / _median_time(lambda: net(x), args.repeats), 2)
    if torch.cuda.is_available():
        gpu = net.cuda()
        result["cuda_device"] = torch.cuda.get_device_name()

        def run(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                gpu(x)
            torch.cuda.synchronize()

        with torch.inference_mode():
            x256 = torch.randn(256, 3, h, w, device="cuda")
            result["cuda_bf16_images_per_s_b256"] = round(256 / _median_time(lambda: run(x256), max(5, args.repeats)), 1)
            x1 = torch.randn(1, 3, h, w, device="cuda")
            result["cuda_latency_ms_b1"] = round(1000 * _median_time(lambda: run(x1), max(20, args.repeats)), 3)
        net = net.cpu()

    with tempfile.TemporaryDirectory(prefix="pearl-speed-") as tmp:
        result.update(_training_and_loading(Path(tmp), args))
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, sort_keys=True))


def _training_and_loading(tmp: Path, args: argparse.Namespace) -> dict:
    import torch

    from model.ehm import EHM
    from model.flip import ShapeMirror
    from model.losses import combine
    from pipelines.train.config import config_from_dict
    from pipelines.train.corpus import CorpusConfig, synthesize
    from pipelines.train.data import StreamSpec, TrainStream, collate, resolve_urls
    from pipelines.train.module import PearModule

    body_models = args.body_models
    if body_models is None:
        from model.assets.synthetic import synthesize_kit

        body_models = str(synthesize_kit(tmp / "kit", seed=0))
    synthesize(tmp / "corpus", body_models, CorpusConfig(count=96, per_shard=48, seed=1))  # 384 px crops
    urls = resolve_urls(str(tmp / "corpus" / "wds" / "train-*.tar"))
    config = config_from_dict({"out": str(tmp / "run"), "body_models": body_models, "model": {"preset": "pear-b"},
                               "data": {"train": [{"urls": urls}], "batch_size": args.train_batch}})
    mirror = ShapeMirror.from_ehm(EHM.from_dir(body_models))
    module = PearModule(config, body_models, mirror)
    stream = TrainStream(StreamSpec(((tuple(urls), 1.0),), seed=0, shuffle_buffer=32), module.preparer(),
                         batch_size=16, batches=6)
    t0 = time.perf_counter()
    samples = list(stream)
    loader = len(samples) / (time.perf_counter() - t0)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    module = module.to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    batch = {k: v.to(device) for k, v in collate(samples[: args.train_batch]).items()}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            outputs = module.regressor(module.regressor.normalize(batch["image"]))
            outputs = {k: v.float() for k, v in outputs.items()}
        total, _ = combine(module.loss_terms(outputs, batch), config.loss)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    train = args.train_batch / _median_time(step, max(1, args.repeats - 1))
    return {"loader_samples_per_s": round(loader, 2), "train_samples_per_s": round(train, 2),
            "train_batch": args.train_batch, "train_device": device.type}


if __name__ == "__main__":
    main()
