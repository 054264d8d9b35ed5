"""Throughput of the reference annotator networks, side by side in one run.

Prints one JSON object:

- ``hamer_cpu_crops_per_s``: ``{"1": ..., "64": ...}`` hand crops per second of the full-size HaMeR
  network (ViT-H/16 + MANO transformer decoder, random weights) at batch 1 and 64, float32, on the
  CPU; ``hamer_cpu_b64_over_b1`` is their ratio (what batching buys);
- ``teaser_cpu_crops_per_s`` / ``teaser_cpu_b64_over_b1``: the same for the three TEASER encoders
  (MobileNetV3 large, large, small) on 224 px face crops;
- ``hamer_cuda_bf16_crops_per_s`` and ``teaser_cuda_bf16_crops_per_s``: at batch 256 with bfloat16
  autocast on the first CUDA device (``null`` without one), and ``cuda_device``;
- ``mediapipe_ms_per_crop``: ``{"pose", "face", "hands", "total"}`` milliseconds per person crop of
  the ``keypoints/mediapipe`` stage on ``--image`` (the whole image as the person box), or ``null``
  when no image is given or that stage cannot be imported;
- ``seconds``, ``threads`` and ``iterations``: how each figure was measured (median seconds per call
  of the timed calls, after one untimed warm-up call, except HaMeR at batch 64 on the CPU: ViT-H takes
  minutes per call there, it follows the already warmed batch-1 calls, and ``--hamer-iters-64``
  defaults to 2).

Networks only: crops are random tensors already on the device (crop warping and onnxruntime are not
timed). Usage, from the repository root:
``python -m benchmarks.annotator_speed [--threads N] [--hamer-iters-64 2] [--image examples/x.jpg]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

from model.networks.hamer import HamerNetwork
from model.networks.teaser import TeaserEncoder


def random_network(factory: type[nn.Module]) -> nn.Module:
    """The network with N(0, 0.02) weights, built without PyTorch's slow default initialisers."""
    with torch.device("meta"):
        network = factory()
    network = network.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if tensor.is_floating_point():
                (tensor.fill_(1.0) if name.endswith("running_var") else tensor.normal_(0.0, 0.02))
    return network.eval()


def crops_per_s(network: nn.Module, shape: tuple[int, ...], batch: int, iters: int, device: str,
                dtype: torch.dtype = torch.float32, warmup: bool = True) -> tuple[float, float]:
    """(crops per second, median seconds per call) of ``network`` on random ``[batch, *shape]`` input,
    over ``iters`` timed calls after one untimed warm-up call (when ``warmup``)."""
    if iters < 1:
        raise ValueError(f"iterations must be at least 1, got {iters}")
    x = torch.randn(batch, *shape, device=device)
    times = []
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        for i in range(iters + warmup):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            network(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if i or not warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return batch / median, median


def mediapipe_ms_per_crop(image_path: str | None, runs: int = 10) -> dict[str, float] | None:
    """Mean milliseconds per person crop of the MediaPipe keypoints stage on one image (graphs built
    before timing), or None."""
    if not image_path:
        return None
    try:
        import numpy as np
        from PIL import Image

        from annotators.keypoints import KeypointsStage
    except ImportError as e:
        print(f"annotator_speed: mediapipe timing skipped ({e})", file=sys.stderr)
        return None
    image = np.asarray(Image.open(image_path).convert("RGB"))
    box = np.array([0.0, 0.0, image.shape[1], image.shape[0]])
    stage = KeypointsStage()
    stage.models()
    for _ in range(runs):
        stage.annotate(image, box)
    return {k: round(v, 2) for k, v in stage.latency_ms().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
    parser.add_argument("--hamer-iters-1", type=int, default=3, help="timed HaMeR calls at batch 1")
    parser.add_argument("--hamer-iters-64", type=int, default=2, help="timed HaMeR calls at batch 64 (slow on CPU)")
    parser.add_argument("--teaser-iters", type=int, default=5, help="timed TEASER calls per batch size")
    parser.add_argument("--cuda-iters", type=int, default=10, help="timed calls at batch 256 on CUDA")
    parser.add_argument("--image", help="image for the MediaPipe per-crop timing (skipped when absent)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__}
    seconds: dict[str, float] = {}

    hamer, teaser = random_network(HamerNetwork), random_network(TeaserEncoder)
    out["hamer_params_m"] = round(sum(p.numel() for p in hamer.parameters()) / 1e6, 1)
    out["teaser_params_m"] = round(sum(p.numel() for p in teaser.parameters()) / 1e6, 2)
    for name, network, shape, iters in (
        ("hamer", hamer, (3, 256, 256), {1: args.hamer_iters_1, 64: args.hamer_iters_64}),
        ("teaser", teaser, (3, 224, 224), {1: args.teaser_iters, 64: args.teaser_iters}),
    ):
        rates = {}
        for batch, n in iters.items():
            # the batch-1 calls already warmed the kernels; ViT-H at 64 is minutes per call on a small CPU
            rate, sec = crops_per_s(network, shape, batch, n, "cpu", warmup=not (name == "hamer" and batch == 64))
            rates[str(batch)] = round(rate, 3)
            seconds[f"{name}_cpu_b{batch}"] = round(sec, 3)
        out[f"{name}_cpu_crops_per_s"] = rates
        out[f"{name}_cpu_b64_over_b1"] = round(rates["64"] / rates["1"], 2)

    out["cuda_device"] = None
    out["hamer_cuda_bf16_crops_per_s"] = out["teaser_cuda_bf16_crops_per_s"] = None
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
        for name, network, shape in (("hamer", hamer, (3, 256, 256)), ("teaser", teaser, (3, 224, 224))):
            rate, sec = crops_per_s(network.cuda(), shape, 256, args.cuda_iters, "cuda", torch.bfloat16)
            out[f"{name}_cuda_bf16_crops_per_s"] = round(rate, 1)
            seconds[f"{name}_cuda_bf16_b256"] = round(sec, 4)

    out["mediapipe_ms_per_crop"] = mediapipe_ms_per_crop(args.image)
    out["seconds"] = seconds
    out["iterations"] = {"hamer_b1": args.hamer_iters_1, "hamer_b64": args.hamer_iters_64,
                         "teaser": args.teaser_iters, "cuda_b256": args.cuda_iters}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
