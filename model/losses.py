"""The regressor's losses, PEAR eq. 1-3, as small functions returning one value per sample (``[B]``).

- **Eq. 1** (SMPL-X parameters): squared error of rotation matrices (:func:`rotation_mse`: global
  orientation, body joints, each hand's 15 joints) and of the betas (:func:`masked_mse`).
- **Eq. 2** (FLAME parameters): squared error of the jaw rotation matrix (:func:`rotation_mse`, like the
  body's rotations) and absolute error of the shape and expression coefficients, the eyelids and the head
  scale (:func:`masked_l1`).
- **Eq. 3** (keypoints): absolute error of root-relative 3D keypoints (the targets posed from the record's
  EHM parameters through the body models) and of 2D keypoints in the crop against the record's confident
  keypoints (:func:`masked_l1` on points).

Every term is a sum over its elements weighted by a mask (``has_*`` flags after quality gating, keypoint
confidences); :func:`combine` weighs the terms (:class:`LossWeights`) and averages over the batch, so a
sample whose part is masked contributes zero to that part's term (as HMR2 does). Definitions of the inputs
and of the masks are in ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


def _weights(mask: Tensor, like: Tensor) -> Tensor:
    """``mask  # [B, ...]`` with trailing unit dims to broadcast over ``like`` (as ``like``'s dtype)."""
    w = mask.to(like.dtype)
    return w.reshape(*w.shape, *([1] * (like.dim() - w.dim())))


def rotation_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``sum_j mask_j ||P_j - T_j||_F^2`` per sample, ``[B]``.

    pred, target  # [B, J, 3, 3] rotation matrices
    mask          # [B, J] or [B] (0/1 or weights)
    """
    if pred.shape != target.shape or pred.shape[-2:] != (3, 3):
        raise ValueError(f"rotation_mse: pred {list(pred.shape)} and target {list(target.shape)} must be [B, J, 3, 3]")
    err = ((pred - target) ** 2).sum((-1, -2))  # [B, J]
    return (err * _weights(mask, err)).reshape(err.shape[0], -1).sum(-1)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``sum mask (P - T)^2`` per sample, ``[B]`` (``pred, target  # [B, ...]``, ``mask  # [B]`` or ``[B, ...]``
    broadcast over the rest)."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_mse: pred {list(pred.shape)} and target {list(target.shape)} differ")
    err = (pred - target) ** 2
    return (err * _weights(mask, err)).reshape(err.shape[0], -1).sum(-1)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``sum mask |P - T|`` per sample, ``[B]`` (``pred, target  # [B, ...]``, ``mask  # [B]`` or ``[B, K]``
    broadcast over the rest; for points ``[B, K, D]`` with a per-point mask ``[B, K]``)."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_l1: pred {list(pred.shape)} and target {list(target.shape)} differ")
    err = (pred - target).abs()
    return (err * _weights(mask, err)).reshape(err.shape[0], -1).sum(-1)


def root_relative(points: Tensor, root: Tensor) -> Tensor:
    """``points  # [B, K, 3]`` minus ``root  # [B, 3]``."""
    return points - root[:, None]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (each term is a per-sample sum, averaged over the batch). Defaults follow
    HMR2's ratios for the body (3D keypoints 0.05, 2D keypoints 0.01, rotations 0.001, shape 0.0005); the face
    (68 points) and hand (42 points) keypoint terms, sums over more points, weigh less."""

    smplx_pose: float = 0.001
    """Eq. 1: rotation-matrix squared error of the global orientation and the 21 body joints (``has_body``)."""
    hand_pose: float = 0.001
    """Eq. 1: rotation-matrix squared error of each hand's 15 joints (``has_hands``)."""
    betas: float = 0.0005
    """Eq. 1: squared error of the SMPL-X betas (``has_body``)."""
    flame_pose: float = 0.001
    """Eq. 2: rotation-matrix squared error of the jaw (``has_face``)."""
    flame_shape: float = 0.0005
    """Eq. 2: absolute error of the predicted leading FLAME shape coefficients (``has_face``)."""
    flame_expression: float = 0.0005
    """Eq. 2: absolute error of the predicted leading FLAME expression coefficients (``has_face``)."""
    flame_extra: float = 0.0005
    """Eq. 2: absolute error of the eyelid weights and the head scale (``has_face``)."""
    kp3d_body: float = 0.05
    """Eq. 3: absolute error of the 23 body and feet 3D keypoints, pelvis-relative (``has_body``)."""
    kp3d_face: float = 0.02
    """Eq. 3: the 68 face landmarks, pelvis-relative (``has_body`` and ``has_face``)."""
    kp3d_hands: float = 0.02
    """Eq. 3: each hand's 21 keypoints, pelvis-relative (``has_body`` and that hand's ``has_hands``)."""
    kp2d_body: float = 0.01
    """Eq. 3: absolute error of the body and feet keypoints in the crop (normalised by its height) against the
    record's keypoints, weighted by their confidence where above ``data.kp2d_min_confidence``."""
    kp2d_face: float = 0.005
    """Eq. 3: the same for the 68 face keypoints."""
    kp2d_hands: float = 0.005
    """Eq. 3: the same for the 42 hand keypoints."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) >= 0:
                raise ValueError(f"loss weight {f.name} must be >= 0, got {getattr(self, f.name)}")

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def combine(terms: Mapping[str, Tensor], weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """The total loss (a scalar) and each weighted term averaged over the batch (``terms``: name ->
    per-sample values ``[B]``, names of :class:`LossWeights`)."""
    known = weights.as_dict()
    unknown = sorted(set(terms) - set(known))
    if unknown:
        raise KeyError(f"loss term(s) {unknown} have no weight; weights: {sorted(known)}")
    weighted = {name: known[name] * value.mean() for name, value in terms.items()}
    total = torch.stack(list(weighted.values())).sum() if weighted else torch.zeros(())
    return total, weighted
