"""Accuracy metrics. Definitions in ``docs/metrics.md``.

- 2D keypoints in image space (plain numpy): normalised point errors, PCK and NME, and the lengths they are
  normalised by (person box size, inter-ocular distance); layouts are in :mod:`schemas.keypoints`.
- 3D errors of posed meshes (torch, batched, any device): MPJPE, PA-MPJPE (through the Umeyama similarity
  :func:`similarity_align`, which the fitting code uses too), PVE, the head-centred face landmark error and
  the lip vertex error. Each returns one value per sample (``[N]``, in the points' unit) so that callers
  average over the samples a part's mask admits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def box_size(box_xyxy: np.ndarray) -> np.ndarray:
    """``max(width, height)`` of ``box_xyxy  # [..., 4]`` -> ``[...]``."""
    box = np.asarray(box_xyxy, dtype=np.float64)
    return np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1])


def normalized_errors(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Point errors divided by a per-instance length.

    ``pred, gt  # [N, K, >=2]`` (x, y first), ``norm  # [N]`` -> ``[N, K]``.
    """
    pred, gt, norm = np.asarray(pred), np.asarray(gt), np.asarray(norm, dtype=np.float64)
    if pred.shape[:2] != gt.shape[:2] or norm.shape != pred.shape[:1]:
        raise ValueError(f"pred {pred.shape}, gt {gt.shape} and norm {norm.shape} disagree")
    if np.any(~(norm > 0)):
        raise ValueError("norm must be positive for every instance")
    return np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1) / norm[:, None]


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray, threshold: float) -> float:
    """Percentage of correct keypoints: share of ``visible  # [N, K]`` keypoints whose error is below
    ``threshold * norm`` (``pred, gt  # [N, K, >=2]``, ``norm  # [N]``, e.g. :func:`box_size`).
    A keypoint that was not predicted must be given a far-away prediction by the caller (it counts as
    wrong, never as absent)."""
    visible = np.asarray(visible, dtype=bool)
    if not visible.any():
        raise ValueError("pck needs at least one visible ground-truth keypoint")
    return float((normalized_errors(pred, gt, norm)[visible] < threshold).mean())


def nme(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray) -> float:
    """Normalised mean error: mean over instances of the mean visible-point error over ``norm  # [N]``."""
    err = normalized_errors(pred, gt, norm)
    visible = np.asarray(visible, dtype=bool)
    per_instance = [err[i][visible[i]].mean() for i in range(len(err)) if visible[i].any()]
    if not per_instance:
        raise ValueError("nme needs at least one instance with a visible ground-truth point")
    return float(np.mean(per_instance))


def interocular(face68: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance (iBUG points 36 and 45) of ``face68  # [..., 68, >=2]`` -> ``[...]``."""
    face68 = np.asarray(face68, dtype=np.float64)
    return np.linalg.norm(face68[..., 36, :2] - face68[..., 45, :2], axis=-1)


# --------------------------------------------------------------------------------------------------
# 3D errors (torch): one value per sample
# --------------------------------------------------------------------------------------------------


def _check_points(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() != 3:
        raise ValueError(f"pred {list(pred.shape)} and gt {list(gt.shape)} must both be [N, K, D]")


def similarity_align(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity ``target ~ s R source + t`` (Umeyama), batched.

    source, target  # [N, K, D] corresponding points (K >= D)
    returns         # R [N, D, D] (a rotation, det +1), s [N], t [N, D]
    """
    if source.shape != target.shape or source.dim() != 3:
        raise ValueError(f"source {list(source.shape)} and target {list(target.shape)} must both be [N, K, D]")
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    xs, xt = source - mu_s, target - mu_t
    cov = xt.transpose(1, 2) @ xs  # [N, D, D]
    u, sigma, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.ones_like(sigma)
    fix[:, -1] = sign
    rot = u @ torch.diag_embed(fix) @ vh
    scale = (sigma * fix).sum(-1) / (xs * xs).sum((1, 2)).clamp(min=1e-20)
    shift = mu_t[:, 0] - scale[:, None] * (rot @ mu_s[:, 0, :, None])[..., 0]
    return rot, scale, shift


def procrustes_aligned(pred: Tensor, gt: Tensor) -> Tensor:
    """``pred  # [N, K, 3]`` moved by the similarity that best aligns it onto ``gt  # [N, K, 3]``."""
    _check_points(pred, gt)
    rot, scale, shift = similarity_align(pred.double(), gt.double())
    aligned = scale[:, None, None] * (pred.double() @ rot.transpose(1, 2)) + shift[:, None]
    return aligned.to(pred.dtype)


def mpjpe(pred: Tensor, gt: Tensor, pred_root: Tensor | None = None, gt_root: Tensor | None = None) -> Tensor:
    """Mean per-joint position error ``[N]`` after moving each set's root to the origin.

    pred, gt            # [N, K, 3] points
    pred_root, gt_root  # [N, 3] roots (pelvis for bodies, wrist for hands); None: no root alignment
    """
    _check_points(pred, gt)
    if (pred_root is None) != (gt_root is None):
        raise ValueError("give both roots or neither")
    if pred_root is not None:
        pred, gt = pred - pred_root[:, None], gt - gt_root[:, None]
    return (pred - gt).norm(dim=-1).mean(-1)


def pa_mpjpe(pred: Tensor, gt: Tensor) -> Tensor:
    """Procrustes-aligned MPJPE ``[N]``: the error left after the best similarity (scale, rotation,
    translation) of ``pred`` onto ``gt`` (``[N, K, 3]``). Over mesh vertices it is PA-PVE."""
    return (procrustes_aligned(pred, gt) - gt).norm(dim=-1).mean(-1)


def face_landmark_error(pred68: Tensor, gt68: Tensor, pred_eyes: Tensor, gt_eyes: Tensor) -> Tensor:
    """Head-centred face landmark error ``[N]``: each set of 68 landmarks ``[N, 68, 3]`` taken relative to the
    midpoint of its two eye joints (``pred_eyes, gt_eyes  # [N, 2, 3]``), mean point distance."""
    return mpjpe(pred68, gt68, pred_eyes.mean(1), gt_eyes.mean(1))


def lip_vertex_error(pred: Tensor, gt: Tensor) -> Tensor:
    """Lip vertex error ``[N]`` (MeshTalk / FaceFormer): the largest distance over the lip vertices
    ``pred, gt  # [N, L, 3]`` of one sample (meshes posed without global and neck rotation)."""
    _check_points(pred, gt)
    return (pred - gt).norm(dim=-1).amax(-1)
