"""SMPL -> SMPL-X transfer: accuracy and speed of the closed forms and the refinement, against a per-sample
optimisation baseline, side by side in one run.

Prints one JSON object. On ``samples`` random plausible SMPL bodies (uniform random global orientation,
body poses from :func:`fitting.priors.sample_body_pose`, SMPL hand joints uniform in +-0.3 rad, betas
N(0, 1) clipped to +-2.5, random translation):

- ``additive_*`` / ``composed_*`` / ``refined_*``: ``mean_vertex_error_mm`` (mean over samples of the mean
  over all SMPL-X vertices of the distance to the source SMPL mesh through the deformation-transfer
  correspondence, with its normal offsets), ``max_vertex_error_mm`` (the worst sample's mean) and
  ``mean_joint_error_mm`` (SMPL-X body joints 0..21 against the SMPL ones);
- ``refined_mean_vertex_error_mm_without_normals``: the refined error against targets on the SMPL surface;
- ``closed_form_samples_per_s``: the composed closed form over all samples in one batch (best of 5);
- ``refined_samples_per_s``: closed form + correspondence targets + refinement, in the configured chunks;
- ``per_sample_optimisation_samples_per_s`` and ``per_sample_mean_vertex_error_mm``: a baseline that, like
  smplx's transfer_model, optimises every SMPL-X parameter from zero for one sample at a time against its
  source mesh (full mesh; L-BFGS on an edge loss for the pose, then the translation, then all parameters
  on the vertex loss), on the first ``baseline_samples`` samples; ``refined_mean_vertex_error_mm_on_baseline_samples``
  is the refinement's error on the same samples;
- ``refined_speedup_vs_per_sample``: the ratio of the two rates;
- ``floor_mean_vertex_error_mm``: on the baseline samples, the refinement run to convergence on every SMPL-X
  vertex (10 Levenberg-Marquardt iterations): the best any SMPL-X body (10 betas, body pose) of this model
  pair reaches, i.e. how far the two models' shape spaces and skinning differ;
- ``targets``: whether each target of the issue is met on this run;
- the same under ``cuda`` when ``torch.cuda.is_available()``.

Usage, from the repository root: ``python -m benchmarks.smpl2smplx [--body-models DIR] [--samples 1000]
[--baseline-samples 8] [--threads N]``. Without ``--body-models`` the synthetic kit is written to a
temporary folder; the calibration is cached in a temporary folder unless ``--cache-dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fitting.priors import sample_body_pose, sample_rotvec
from fitting.transfer import Correspondence, SmplToSmplx, TransferConfig
from model.assets.catalog import asset_file
from model.assets.loaders import load_deformation_transfer

TARGET_REFINED_MM = 3.0
TARGET_CLOSED_FORM_PER_S = 20_000
TARGET_SPEEDUP = 50.0


def random_smpl(count: int, seed: int) -> dict[str, torch.Tensor]:
    """Random plausible SMPL bodies (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    body = torch.cat([sample_body_pose(count, gen), 0.3 * (2 * torch.rand(count, 2, 3, generator=gen) - 1)], 1)
    return {"global_orient": sample_rotvec(count, gen), "body_pose": body,
            "betas": torch.randn(count, 10, generator=gen).clamp(-2.5, 2.5),
            "transl": torch.randn(count, 3, generator=gen)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def joint_error_mm(transfer: SmplToSmplx, smpl: dict[str, torch.Tensor],
                   params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean distance (mm) ``[N]`` between the SMPL-X and SMPL body joints 0..21."""
    with torch.no_grad():
        a = transfer.smpl(**smpl).joints[:, :22]
        b = transfer.smplx(**params).joints[:, :22]
    return (a - b).norm(dim=-1).mean(-1) * 1000.0


def _edges(faces: torch.Tensor) -> torch.Tensor:
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(pairs, dim=0)


def per_sample_baseline(transfer: SmplToSmplx, smpl: dict[str, torch.Tensor], targets: torch.Tensor,
                        iterations: tuple[int, int, int] = (30, 10, 60)) -> dict[str, torch.Tensor]:
    """One sample (``[1, ...]`` tensors): SMPL-X parameters from zero, optimised against ``targets [1, V, 3]``
    as smplx's transfer_model does (edge loss on the pose, then translation, then everything)."""
    model = transfer.smplx
    dtype, device = targets.dtype, targets.device
    names = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "betas", "transl")
    shapes = {"global_orient": (1, 3), "body_pose": (1, 21, 3), "left_hand_pose": (1, 15, 3),
              "right_hand_pose": (1, 15, 3), "betas": (1, 10), "transl": (1, 3)}
    var = {k: torch.zeros(shapes[k], dtype=dtype, device=device, requires_grad=True) for k in names}
    edges = _edges(model.faces)
    target_edges = targets[:, edges[:, 0]] - targets[:, edges[:, 1]]

    def edge_loss() -> torch.Tensor:
        v = model(**var).vertices
        return ((v[:, edges[:, 0]] - v[:, edges[:, 1]] - target_edges) ** 2).sum(-1).mean() * 1e6

    def vertex_loss() -> torch.Tensor:
        return ((model(**var).vertices - targets) ** 2).sum(-1).mean() * 1e6

    stages = [([var[k] for k in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose")], edge_loss),
              ([var["transl"]], vertex_loss), (list(var.values()), vertex_loss)]
    for (params, loss_fn), budget in zip(stages, iterations):
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=budget, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
    return {k: v.detach() for k, v in var.items()}


def run(transfer: SmplToSmplx, smpl: dict[str, torch.Tensor], no_normals: Correspondence, floor: SmplToSmplx,
        device: str, baseline_samples: int) -> dict[str, object]:
    """All figures on one device."""
    transfer = transfer.to(device)
    floor = floor.to(device)
    no_normals = no_normals.to(device)
    smpl = {k: v.to(device) for k, v in smpl.items()}
    n = len(smpl["betas"])
    out: dict[str, object] = {"device": device, "samples": n}
    targets = transfer.source_targets(**smpl)
    with torch.no_grad():
        for mode in ("additive", "composed"):
            params = transfer.closed_form(**smpl, mode=mode)
            err = transfer.vertex_error_mm(params, targets)
            out[f"{mode}_mean_vertex_error_mm"] = float(err.mean())
            out[f"{mode}_max_vertex_error_mm"] = float(err.max())
            out[f"{mode}_mean_joint_error_mm"] = float(joint_error_mm(transfer, smpl, params).mean())
        times = []
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            transfer.closed_form(**smpl)
            _sync(device)
            times.append(time.perf_counter() - start)
        out["closed_form_samples_per_s"] = n / min(times)
    _sync(device)
    start = time.perf_counter()
    refined = transfer(**smpl, refine=True, error=False).params
    _sync(device)
    refine_s = time.perf_counter() - start
    out["refined_samples_per_s"] = n / refine_s
    err = transfer.vertex_error_mm(refined, targets)
    out["refined_mean_vertex_error_mm"] = float(err.mean())
    out["refined_max_vertex_error_mm"] = float(err.max())
    out["refined_mean_joint_error_mm"] = float(joint_error_mm(transfer, smpl, refined).mean())
    with torch.no_grad():
        surface = no_normals(transfer.smpl(**smpl).vertices)
        out["refined_mean_vertex_error_mm_without_normals"] = float(transfer.vertex_error_mm(refined, surface).mean())
    k = min(baseline_samples, n)
    baseline_err = []
    _sync(device)
    start = time.perf_counter()
    for i in range(k):
        one = {key: v[i:i + 1] for key, v in smpl.items()}
        target = transfer.source_targets(**one)
        found = per_sample_baseline(transfer, one, target)
        baseline_err.append(float(transfer.vertex_error_mm(found, target)[0]))
    _sync(device)
    baseline_s = time.perf_counter() - start
    out["baseline_samples"] = k
    out["per_sample_optimisation_samples_per_s"] = k / baseline_s
    out["per_sample_mean_vertex_error_mm"] = float(np.mean(baseline_err)) if k else float("nan")
    out["refined_mean_vertex_error_mm_on_baseline_samples"] = float(err[:k].mean()) if k else float("nan")
    out["refined_speedup_vs_per_sample"] = out["refined_samples_per_s"] / out["per_sample_optimisation_samples_per_s"]
    first = {key: v[:k] for key, v in smpl.items()}
    out["floor_mean_vertex_error_mm"] = float(floor(**first, refine=True).vertex_error_mm.mean()) if k else float("nan")
    out["targets"] = {
        "refined_mean_vertex_error_mm<=3": out["refined_mean_vertex_error_mm"] <= TARGET_REFINED_MM,
        "closed_form_samples_per_s>=20000": out["closed_form_samples_per_s"] >= TARGET_CLOSED_FORM_PER_S,
        "refined_speedup_vs_per_sample>=50": out["refined_speedup_vs_per_sample"] >= TARGET_SPEEDUP,
        "refined_error<=per_sample_error": out["refined_mean_vertex_error_mm_on_baseline_samples"]
        <= out["per_sample_mean_vertex_error_mm"],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body-models", type=Path, help="body-model folder (default: a fresh synthetic kit)")
    parser.add_argument("--cache-dir", type=Path, help="calibration cache (default: a temporary folder)")
    parser.add_argument("--samples", type=int, default=1000, help="random SMPL bodies (default 1000)")
    parser.add_argument("--baseline-samples", type=int, default=8, help="samples the per-sample baseline runs on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random bodies")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        kit = args.body_models
        if kit is None:
            from model.assets.synthetic import synthesize_kit

            kit = Path(tmp) / "kit"
            synthesize_kit(kit, seed=0)
        config = TransferConfig(cache_dir=str(args.cache_dir or Path(tmp) / "cache"))
        start = time.perf_counter()
        transfer = SmplToSmplx.from_dir(kit, config)
        calibration_s = time.perf_counter() - start
        matrix = load_deformation_transfer(asset_file(kit, "smpl2smplx_deftrafo"))
        no_normals = Correspondence(matrix, transfer.smpl.faces, use_normals=False)
        floor = SmplToSmplx(transfer.smpl, transfer.smplx, matrix, transfer.calibration,
                            TransferConfig(refine_vertices=transfer.smplx.num_vertices, refine_iterations=10,
                                           refine_chunk=4))
        smpl = random_smpl(args.samples, args.seed)
        result: dict[str, object] = run(transfer, smpl, no_normals, floor, "cpu", args.baseline_samples)
        result.update(calibration_s=calibration_s, calibration_residual_mm=transfer.calibration.residual_mm,
                      torch_threads=torch.get_num_threads(), config={
                          "refine_solver": config.refine_solver, "refine_iterations": config.refine_iterations,
                          "refine_vertices": config.refine_vertices, "hand_joints": config.hand_joints})
        if torch.cuda.is_available():
            result["cuda"] = run(transfer, smpl, no_normals, floor, "cuda", args.baseline_samples)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
