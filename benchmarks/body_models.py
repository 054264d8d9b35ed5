"""Speed of the EHM forward pass against plain SMPL-X, side by side in one run.

Prints one JSON object:

- ``smplx_forward_per_s_b64`` / ``ehm_forward_per_s_b64``: forward passes per second at batch 64
  (no autograd), from the median of the timed repeats;
- ``ehm_over_smplx_time_ratio``: EHM time / SMPL-X time, the median of the ratios of back-to-back
  pairs (target <= 1.5);
- ``smplx_fwd_bwd_*``, ``ehm_fwd_bwd_*`` and ``ehm_over_smplx_time_ratio_fwd_bwd``: the same for a
  forward + backward pass (what batched fitting pays);
- ``*_ms_b64``: the median milliseconds behind each rate;
- ``cuda_*`` versions of all of them when ``torch.cuda.is_available()``.

Usage, from the repository root: ``python -m benchmarks.body_models [--body-models DIR] [--batch 64]
[--repeats 15] [--threads 1]``.
Without ``--body-models`` the synthetic kit is written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.body_models import SMPLX
from model.ehm import EHM


def _params(specs: dict, batch: int, device: str, seed: int, grad: bool) -> dict[str, torch.Tensor]:
    """Plausible random parameters: small joint rotations, unit-ish coefficients, scales near one."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in specs.items():
        if name in ("eyelids", "flame_eyelids"):
            continue
        value = torch.randn(batch, *spec.shape, generator=gen) * (0.05 if "scale" in name else 0.3) + spec.fill
        out[name] = value.to(device).requires_grad_(grad)
    return out


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def _step(model: torch.nn.Module, params: dict[str, torch.Tensor], backward: bool) -> Callable[[], object]:
    def forward() -> None:
        out = model(**params)
        if backward:
            (out.vertices.square().mean() + out.joints.square().mean()).backward()
        elif out.vertices.requires_grad:
            raise RuntimeError("benchmark forward ran with autograd on")

    return forward


def measure(smplx: SMPLX, ehm: EHM, batch: int, repeats: int, device: str) -> dict[str, float]:
    """Interleaved timings of both models (forward, then forward + backward) on ``device``."""
    timed = _timer(device)
    figures: dict[str, float] = {}
    for mode, backward in (("forward", False), ("fwd_bwd", True)):
        steps = {
            "smplx": _step(smplx, _params(smplx.param_specs(), batch, device, 0, backward), backward),
            "ehm": _step(ehm, _params(ehm.param_specs(), batch, device, 1, backward), backward),
        }
        times: dict[str, list[float]] = {"smplx": [], "ehm": []}
        with torch.set_grad_enabled(backward):
            for step in steps.values():  # warm-up (allocator, kernels)
                step()
                step()
            for _ in range(repeats):
                for name, step in steps.items():
                    times[name].append(timed(step))
        ratios = [e / s for e, s in zip(times["ehm"], times["smplx"])]
        for name in steps:
            figures[f"{name}_{mode}_ms_b{batch}"] = round(statistics.median(times[name]) * 1e3, 3)
            figures[f"{name}_{mode}_per_s_b{batch}"] = round(1.0 / statistics.median(times[name]), 3)
        figures["ehm_over_smplx_time_ratio" + ("" if mode == "forward" else "_fwd_bwd")] = round(statistics.median(ratios), 4)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-models", type=Path, help="body-model folder (default: a fresh synthetic kit)")
    parser.add_argument("--batch", type=int, default=64, help="meshes per forward pass (default 64)")
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per model and mode (default 15)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads for the CPU figures (default 1, what a one-CPU Ray actor runs with)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="pearl-bench-kit-") as tmp:
        kit = args.body_models
        if kit is None:
            from model.assets.synthetic import synthesize_kit

            kit = synthesize_kit(Path(tmp) / "kit", seed=0)
        smplx = SMPLX.from_dir(kit, num_betas=10, num_expression=10)
        ehm = EHM.from_dir(kit)

    result: dict[str, object] = {
        "benchmark": "body_models",
        "kit": "synthetic" if args.body_models is None else str(args.body_models),
        "batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "num_vertices": smplx.num_vertices,
        "flame_components": ehm.flame.shape_sizes,
    }
    result.update(measure(smplx, ehm, args.batch, args.repeats, "cpu"))
    if torch.cuda.is_available():
        smplx.to("cuda")
        ehm.to("cuda")
        result["cuda_device"] = torch.cuda.get_device_name()
        result.update({f"cuda_{k}": v for k, v in measure(smplx, ehm, args.batch, args.repeats, "cuda").items()})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
