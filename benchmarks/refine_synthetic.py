"""Refinement against known answers on the synthetic kit, and batched against one-by-one speed.

Samples (``make_problem``) are drawn on the synthetic kit with known EHM parameters and camera:

- **Ground truth**: SMPL-X body pose from :func:`fitting.priors.sample_body_pose` (scale 0.6), betas
  ``N(0, 1)``, an upright person facing the camera (yaw ``U(-40, 40)`` deg, tilt ``N(0, 5)`` deg) with the
  pelvis at ``x, y ~ U(-0.3, 0.3)`` m and depth ``U(2.5, 3.5)`` m; MANO finger poses = the mean hand pose
  ``+ N(0, 0.15)`` rad, MANO betas ``N(0, 0.5)``; FLAME shape ``N(0, 1)`` (first 50), expression ``N(0, 1)``
  (first 20), jaw opening ``U(0, 0.3)`` rad, eyes ``N(0, 0.1)`` rad; head and hand scales ``1 + N(0, 0.03)``.
  Camera: ``f = 1100`` px, principal point at the centre of a 1024 x 1024 image.
- **Keypoints (noise model)**: the 133 COCO-WholeBody points of the true mesh projected, plus Gaussian
  pixel noise (body 3 px, face 1 px, hands 1.5 px); confidences ``U(0.6, 1)``; each point dropped
  (confidence 0) with probability 0.1. MediaPipe face landmarks: FLAME's MediaPipe points and pupils
  projected plus 1 px noise. Box: the keypoints' box grown by 10 %. Face and hands confident
  (``U(0.7, 1)``), except 10 % of hands under the gate (confidence 0.3).
- **Initial fit, perturbed the way annotators err**: body pose ``+ N(0, 0.12)`` rad per component and the
  forearm twist (invisible in body keypoints) off by ``N(0, 60)`` deg at each elbow; root rotated by
  ``N(0, 0.08)`` rad; translation ``+ N(0, (0.03, 0.03, 0.2))`` m; betas ``+ N(0, 0.5)``. Hands (IK from
  MediaPipe): wrist orientation off by ``N(0, 0.1)`` rad, fingers ``+ N(0, 0.15)`` rad, betas ``+ N(0, 0.3)``.
  Face (landmark fit): shape ``+ N(0, 0.5)``, expression ``+ N(0, 0.5)``, jaw ``+ N(0, 0.08)``, eyes
  ``+ N(0, 0.1)`` rad. Scales start at 1.

Prints one JSON object: ``body_pve_mm_*`` (all EHM vertices, pelvis-aligned), ``hand_pa_pve_mm_*``
(Procrustes-aligned MANO vertices of the integrated hands), ``face_landmark_err_mm_*`` (68 landmarks
relative to the eye midpoint), ``reproj_px_refined`` (mean px error of confident keypoints against the
observed ones) and ``reproj_px_refined_vs_clean`` (against the noise-free projections),
``wrist_err_deg_copy_paste`` / ``wrist_err_deg_adaptive`` (angle between the integrated and the true
wrist rotation relative to the forearm, right after integration) and ``wrist_err_deg_refined``,
``samples_per_s_batched`` (all samples in one call), ``samples_per_s_one_by_one`` (the same code on the
first ``--one-by-one`` samples, one call each) and ``batched_speedup``; ``cuda_*`` twins on CUDA when present.

Both modes run with the same torch thread count (``--threads``, 1 by default, so that the ratio measures
batching rather than thread scaling).

Usage, from the repository root: ``python -m benchmarks.refine_synthetic [--samples 64] [--one-by-one 4]
[--threads 1] [--body-models DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from fitting.camera import project
from fitting.face_fit import IRIS_CENTRES
from fitting.objectives import WHOLEBODY_PARTS, ehm_wholebody_points
from fitting.priors import sample_body_pose
from fitting.refine import ELBOWS, WRISTS, RefineInputs, Refiner
from fitting.refine_config import RefineConfig
from fitting.wrist import hand_gate, twist_rotmat
from model.metrics import procrustes_aligned
from model.rotations import rotmat_to_rotvec, rotvec_to_rotmat

IMAGE = 1024
FOCAL = 1100.0


def _normal(gen: torch.Generator, *shape: int, std: float | Tensor = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen) * std


def _uniform(gen: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def _rotate(rotvec: Tensor, gen: torch.Generator, std: float) -> Tensor:
    """``rotvec`` composed (on the left) with a random rotation of angle ``|N(0, std)|`` about a random axis."""
    axis = _normal(gen, rotvec.shape[0], 3)
    noise = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-9) * _normal(gen, rotvec.shape[0], 1, std=std)
    return rotmat_to_rotvec(rotvec_to_rotmat(noise) @ rotvec_to_rotmat(rotvec))


def truth(refiner: Refiner, n: int, gen: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """True EHM parameters ``[n, ...]`` and intrinsics ``[n, 3, 3]`` (see the module docstring)."""
    yaw = torch.deg2rad(_uniform(gen, -40, 40, n))
    tilt = torch.deg2rad(_normal(gen, n, 2, std=5.0))
    upright = torch.tensor([math.pi, 0.0, 0.0]).expand(n, 3)  # body y up -> camera y down, facing the camera
    body_turn = torch.stack([tilt[:, 0], yaw, tilt[:, 1]], -1)
    orient = rotmat_to_rotvec(rotvec_to_rotmat(upright) @ rotvec_to_rotmat(body_turn))
    mean_hand = refiner.mean_hand_pose.cpu()
    flame_shape, expression = torch.zeros(n, 300), torch.zeros(n, 100)
    flame_shape[:, :50] = _normal(gen, n, 50)
    expression[:, :20] = _normal(gen, n, 20)
    params = {
        "betas": _normal(gen, n, 10),
        "global_orient": orient,
        "body_pose": sample_body_pose(n, gen, scale=0.6),
        "transl": torch.zeros(n, 3),
        "mano_hand_pose": mean_hand.expand(n, 2, 15, 3) + _normal(gen, n, 2, 15, 3, std=0.15),
        "mano_betas": _normal(gen, n, 2, 10, std=0.5),
        "hand_scale": 1.0 + _normal(gen, n, 2, std=0.03),
        "flame_shape": flame_shape,
        "flame_expression": expression,
        "flame_jaw_pose": torch.stack([_uniform(gen, 0.0, 0.3, n), torch.zeros(n), torch.zeros(n)], -1),
        "flame_eye_pose": _normal(gen, n, 6, std=0.1),
        "head_scale": 1.0 + _normal(gen, n, 3, std=0.03),
    }
    with torch.no_grad():
        pelvis = refiner.ehm(**_on(params, refiner)).joints[:, 0].cpu()
    where = torch.stack([_uniform(gen, -0.3, 0.3, n), _uniform(gen, -0.3, 0.3, n), _uniform(gen, 2.5, 3.5, n)], -1)
    params["transl"] = where - pelvis
    intr = torch.tensor([[FOCAL, 0.0, IMAGE / 2], [0.0, FOCAL, IMAGE / 2], [0.0, 0.0, 1.0]]).expand(n, 3, 3)
    return params, intr.clone()


def _on(params: dict[str, Tensor], refiner: Refiner) -> dict[str, Tensor]:
    return {k: v.to(refiner.device, refiner.dtype) for k, v in params.items()}


def observe(refiner: Refiner, gt: dict[str, Tensor], intr: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
    """Keypoints, face landmarks, box and confidences of the true meshes (the noise model)."""
    n = intr.shape[0]
    with torch.no_grad():
        out = refiner.ehm(**_on(gt, refiner))
        k = intr.to(refiner.device, refiner.dtype)
        clean = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), k).cpu()
        mp_pts = project(out.landmarks_mediapipe, k).cpu()
        head = out.vertices[:, refiner.ehm.head_vertex_ids[refiner.pupils]]
        pupils = project(head, k).cpu()
    sigma = torch.full((133,), 3.0)
    sigma[WHOLEBODY_PARTS["face"]] = 1.0
    sigma[WHOLEBODY_PARTS["left_hand"].start:] = 1.5
    xy = clean + _normal(gen, n, 133, 2) * sigma[:, None]
    conf = _uniform(gen, 0.6, 1.0, n, 133) * (torch.rand(n, 133, generator=gen) > 0.1)
    mp_face = torch.zeros(n, 478, 3)
    mp_face[:, refiner.ehm.flame.mediapipe_landmark_indices.cpu(), :2] = mp_pts + _normal(gen, *mp_pts.shape)
    mp_face[:, list(IRIS_CENTRES), :2] = pupils + _normal(gen, *pupils.shape)
    lo, hi = clean.min(1).values, clean.max(1).values
    pad = 0.05 * (hi - lo)
    conf_hands = _uniform(gen, 0.7, 1.0, n, 2)
    conf_hands[torch.rand(n, 2, generator=gen) < 0.1] = 0.3
    return {
        "kp2d": torch.cat([xy, conf[..., None]], -1),
        "kp2d_clean": clean,
        "mp_face": mp_face,
        "bbox_xyxy": torch.cat([lo - pad, hi + pad], -1),
        "has_face": torch.ones(n, dtype=torch.bool),
        "conf_face": _uniform(gen, 0.7, 1.0, n),
        "has_hands": torch.ones(n, 2, dtype=torch.bool),
        "conf_hands": conf_hands,
    }


def perturb(refiner: Refiner, gt: dict[str, Tensor], gen: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """Initial fits as the annotators would give them, and the hands' global orientations ``[n, 2, 3]``."""
    n = gt["betas"].shape[0]
    with torch.no_grad():
        out = refiner.ehm(**_on(gt, refiner))
    hand_world = rotmat_to_rotvec(out.joint_rotations[:, list(WRISTS)]).cpu()
    init = {k: v.clone() for k, v in gt.items()}
    pose = gt["body_pose"] + _normal(gen, n, 21, 3, std=0.12)
    for elbow, wrist in zip(ELBOWS, WRISTS):  # forearm twist: invisible in body keypoints
        axis = (out.joints[:, wrist] - out.joints[:, elbow]).cpu()
        axis = (out.joint_rotations[:, elbow].cpu().transpose(-1, -2) @ axis[..., None])[..., 0]
        axis = axis / axis.norm(dim=-1, keepdim=True)
        twist = twist_rotmat(axis, torch.deg2rad(_normal(gen, n, std=60.0)))
        pose[:, elbow - 1] = rotmat_to_rotvec(rotvec_to_rotmat(pose[:, elbow - 1]) @ twist)
    init["body_pose"] = pose
    init["global_orient"] = _rotate(gt["global_orient"], gen, 0.08)
    init["transl"] = gt["transl"] + _normal(gen, n, 3, std=torch.tensor([0.03, 0.03, 0.2]))
    init["betas"] = gt["betas"] + _normal(gen, n, 10, std=0.5)
    init["mano_hand_pose"] = gt["mano_hand_pose"] + _normal(gen, n, 2, 15, 3, std=0.15)
    init["mano_betas"] = gt["mano_betas"] + _normal(gen, n, 2, 10, std=0.3)
    init["flame_shape"] = gt["flame_shape"] + torch.cat([_normal(gen, n, 50, std=0.5), torch.zeros(n, 250)], -1)
    init["flame_expression"] = gt["flame_expression"] + torch.cat([_normal(gen, n, 20, std=0.5), torch.zeros(n, 80)], -1)
    init["flame_jaw_pose"] = gt["flame_jaw_pose"] + _normal(gen, n, 3, std=0.08)
    init["flame_eye_pose"] = gt["flame_eye_pose"] + _normal(gen, n, 6, std=0.1)
    init["hand_scale"] = torch.ones(n, 2)
    init["head_scale"] = torch.ones(n, 3)
    mano = torch.stack([_rotate(hand_world[:, s], gen, 0.1) for s in range(2)], 1)
    return init, mano


def make_problem(refiner: Refiner, n: int, seed: int = 0) -> tuple[RefineInputs, dict[str, Tensor], dict[str, Tensor]]:
    """``(inputs, true parameters, observations)`` for ``n`` synthetic persons (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    gt, intr = truth(refiner, n, gen)
    obs = observe(refiner, gt, intr, gen)
    init, mano = perturb(refiner, gt, gen)
    inputs = RefineInputs(
        params=init, mano_global_orient=mano, intrinsics=intr, bbox_xyxy=obs["bbox_xyxy"], kp2d=obs["kp2d"],
        mp_face=obs["mp_face"], has_face=obs["has_face"], conf_face=obs["conf_face"], has_hands=obs["has_hands"],
        conf_hands=obs["conf_hands"],
    )
    return inputs, gt, obs


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def errors(refiner: Refiner, params: dict[str, Tensor], gt_out, visible: Tensor) -> dict[str, float]:
    """Body PVE, hand PA-PVE and face landmark error (mm) of ``params`` against the true meshes."""
    with torch.no_grad():
        out = refiner.ehm(**_on(params, refiner))
    body = (out.vertices - out.joints[:, :1]) - (gt_out.vertices - gt_out.joints[:, :1])
    hands = []
    for side, ids in enumerate(refiner.hand_ids):
        err = (procrustes_aligned(out.vertices[:, ids], gt_out.vertices[:, ids]) - gt_out.vertices[:, ids]).norm(dim=-1)
        hands.append(err.mean(-1)[visible[:, side]])
    eyes = list(range(23, 25))
    face = (out.landmarks68 - out.joints[:, eyes].mean(1, keepdim=True)) - (
        gt_out.landmarks68 - gt_out.joints[:, eyes].mean(1, keepdim=True))
    return {
        "body_pve_mm": 1000.0 * body.norm(dim=-1).mean().item(),
        "hand_pa_pve_mm": 1000.0 * torch.cat(hands).mean().item(),
        "face_landmark_err_mm": 1000.0 * face.norm(dim=-1).mean().item(),
    }


def wrist_error_deg(pose: Tensor, gt_pose: Tensor, visible: Tensor) -> float:
    """Mean angle (deg) between estimated and true wrist rotations (relative to the forearm), visible hands."""
    errs = []
    for side, wrist in enumerate(WRISTS):
        rel = rotvec_to_rotmat(pose[:, wrist - 1]).transpose(-1, -2) @ rotvec_to_rotmat(gt_pose[:, wrist - 1])
        angle = rotmat_to_rotvec(rel).norm(dim=-1)
        errs.append(angle[visible[:, side]])
    return math.degrees(torch.cat(errs).mean().item())


def integrated_pose(refiner: Refiner, inputs: RefineInputs, mode: str) -> Tensor:
    """Body pose right after wrist integration with ``mode`` (``adaptive`` / ``copy_paste``)."""
    saved = refiner.config.wrist
    refiner.config.wrist = mode
    try:
        params = _on(inputs.params, refiner)
        visible = hand_gate(inputs.has_hands, inputs.conf_hands, refiner.config.hand_gate).to(refiner.device)
        with torch.no_grad():
            body = refiner.ehm(**params)
            refiner.integrate_hands(params, body, inputs.mano_global_orient.to(refiner.device, refiner.dtype), visible)
    finally:
        refiner.config.wrist = saved
    return params["body_pose"].cpu()


def _reproj(refiner: Refiner, params: dict[str, Tensor], inputs: RefineInputs, clean: Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = refiner.ehm(**_on(params, refiner))
        uv = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68),
                            inputs.intrinsics.to(refiner.device, refiner.dtype)).cpu()
    seen = inputs.kp2d[..., 2] > 0.3
    observed = (uv - inputs.kp2d[..., :2]).norm(dim=-1)[seen].mean().item()
    return observed, (uv - clean).norm(dim=-1)[seen].mean().item()


def _subset(inputs: RefineInputs, rows: slice) -> RefineInputs:
    fields = {f: getattr(inputs, f)[rows] for f in ("mano_global_orient", "intrinsics", "bbox_xyxy", "kp2d", "mp_face",
                                                     "has_face", "conf_face", "has_hands", "conf_hands")}
    return RefineInputs(params={k: v[rows] for k, v in inputs.params.items()}, **fields)


def run(refiner: Refiner, samples: int, one_by_one: int, seed: int) -> dict[str, float]:
    """Every figure of the module docstring on ``refiner``'s device."""
    inputs, gt, obs = make_problem(refiner, samples, seed)
    visible = hand_gate(inputs.has_hands, inputs.conf_hands, refiner.config.hand_gate)
    with torch.no_grad():
        gt_out = refiner.ehm(**_on(gt, refiner))
    sync = torch.cuda.synchronize if refiner.device.type == "cuda" else (lambda: None)
    refiner.refine(_subset(inputs, slice(0, 1)))  # warm-up (allocations, lazy init)
    sync()
    t0 = time.perf_counter()
    result = refiner.refine(inputs)
    sync()
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(one_by_one):
        refiner.refine(_subset(inputs, slice(i, i + 1)))
    sync()
    single_s = time.perf_counter() - t0
    refined = {k: v.cpu() for k, v in result.params.items()}
    init_err = errors(refiner, inputs.params, gt_out, visible.to(refiner.device))
    ref_err = errors(refiner, refined, gt_out, visible.to(refiner.device))
    reproj, reproj_clean = _reproj(refiner, refined, inputs, obs["kp2d_clean"])
    out = {f"{k}_init": v for k, v in init_err.items()}
    out.update({f"{k}_refined": v for k, v in ref_err.items()})
    out.update({
        "reproj_px_refined": reproj,
        "reproj_px_refined_vs_clean": reproj_clean,
        "wrist_err_deg_copy_paste": wrist_error_deg(integrated_pose(refiner, inputs, "copy_paste"), gt["body_pose"], visible),
        "wrist_err_deg_adaptive": wrist_error_deg(integrated_pose(refiner, inputs, "adaptive"), gt["body_pose"], visible),
        "wrist_err_deg_refined": wrist_error_deg(refined["body_pose"], gt["body_pose"], visible),
        "samples_per_s_batched": samples / batched_s,
        "samples_per_s_one_by_one": one_by_one / single_s,
        "samples": samples,
        "one_by_one_samples": one_by_one,
    })
    out["batched_speedup"] = out["samples_per_s_batched"] / out["samples_per_s_one_by_one"]
    out["body_pve_reduction"] = 1.0 - out["body_pve_mm_refined"] / out["body_pve_mm_init"]
    out["face_landmark_err_reduction"] = 1.0 - out["face_landmark_err_mm_refined"] / out["face_landmark_err_mm_init"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="samples refined in one batched call")
    parser.add_argument("--one-by-one", type=int, default=4, help="samples refined one call each, for the speed ratio")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of both modes (0: torch's default; 1 so that the ratio measures batching)")
    parser.add_argument("--body-models", default=None, help="body-model folder (default: a fresh synthetic kit)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.body_models
        if folder is None:
            from model.assets.synthetic import synthesize_kit

            folder = str(synthesize_kit(Path(tmp) / "kit", seed=0))
        report = run(Refiner.from_dir(folder, RefineConfig()), args.samples, args.one_by_one, args.seed)
        if torch.cuda.is_available():
            cuda = run(Refiner.from_dir(folder, RefineConfig(), device="cuda"), args.samples, args.one_by_one, args.seed)
            report.update({f"cuda_{k}": v for k, v in cuda.items()})
    report["device"] = "cpu" + (" + cuda" if torch.cuda.is_available() else "")
    report["torch_threads"] = torch.get_num_threads()
    json.dump(report, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
