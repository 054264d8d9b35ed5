"""Terms of the refinement objectives, as small pure functions (one value per sample).

- The COCO-WholeBody-133 points of an EHM mesh (:func:`ehm_wholebody_points`) and GUAVA's per-keypoint
  weights mapped onto that layout (:data:`WHOLEBODY_WEIGHTS`), with the confidence gate.
- A robust point distance (pseudo-Huber of the per-point Euclidean residual) and the size of a part's
  keypoint box, the scale its residuals are measured in.
- PostureHMR-style trimap silhouette loss and the mask morphology it needs.

Every loss returns ``[B]`` (or the leading dims) so that the solvers of :mod:`fitting.solvers` sum them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from schemas import keypoints as kpl


# Sources of the 133 points, as indices into cat([joints 55, vertex keypoints 21, landmarks68 68]).
_J, _K, _L = 0, 55, 76
_HAND = {  # SMPL-X joints of each hand: index 1-3, middle 1-3, pinky 1-3, ring 1-3, thumb 1-3
    "left": dict(wrist=20, index=25, middle=28, pinky=31, ring=34, thumb=37, tips=_K + 11),
    "right": dict(wrist=21, index=40, middle=43, pinky=46, ring=49, thumb=52, tips=_K + 16),
}


def _hand_sources(side: str) -> list[int]:
    h = _HAND[side]
    out = [h["wrist"]]
    # COCO-WholeBody order: thumb, forefinger, middle, ring, pinky (3 joints then the tip); smplx's
    # vertex keypoints list the tips as thumb, index, middle, ring, pinky
    for tip, finger in enumerate(("thumb", "index", "middle", "ring", "pinky")):
        out += [h[finger], h[finger] + 1, h[finger] + 2, h["tips"] + tip]
    return out


WHOLEBODY_SOURCES: np.ndarray = np.array(
    [_K + 0, _K + 2, _K + 1, _K + 4, _K + 3]  # nose, left eye, right eye, left ear, right ear
    + [16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8]  # shoulders, elbows, wrists, hips, knees, ankles (L, R)
    + [_K + 5, _K + 6, _K + 7, _K + 8, _K + 9, _K + 10]  # big toe, small toe, heel (L, then R)
    + list(range(_L, _L + 68))  # iBUG-68 face landmarks
    + _hand_sources("left")
    + _hand_sources("right"),
    dtype=np.int64,
)
"""For each COCO-WholeBody keypoint, its EHM source: an index into ``cat([joints [55], keypoints [21],
landmarks68 [68]])`` of :class:`model.body_models.BodyModelOutput` (SMPL-X joint order, smplx's vertex
keypoints, FLAME's 68 landmarks)."""


def _wholebody_weights() -> np.ndarray:
    w = np.ones(kpl.NUM_KEYPOINTS, np.float32)
    w[[5, 6]] = 50.0  # shoulders
    w[[7, 8]] = 100.0  # elbows
    w[[9, 10, 13, 14, 15, 16]] = 20.0  # wrists, knees, ankles
    w[kpl.FEET] = 20.0  # feet
    w[kpl.FACE.start:kpl.FACE.start + 17] = 5.0  # jaw contour
    w[kpl.LEFT_HAND.start:kpl.RIGHT_HAND.stop] = 10.0  # hands
    return w


WHOLEBODY_WEIGHTS: np.ndarray = _wholebody_weights()
"""Per-keypoint weights of the 2D keypoint term, GUAVA's EHM tracker table (``smplx_to_dwpose``) moved to
the COCO-WholeBody layout: shoulders 50, elbows 100, wrists / knees / ankles / feet 20, hands 10, jaw
contour 5, everything else 1. GUAVA gives nose, eyes and ears 0 (its head term places the head); here
they keep 1 so that a face under the gate still has its head placed by them."""

WHOLEBODY_PARTS: dict[str, slice] = kpl.SCORED_PARTS
"""Index ranges of the layout used for confidence thresholds and per-part reprojection (body = body + feet;
:data:`schemas.keypoints.SCORED_PARTS`)."""


def ehm_wholebody_points(
    joints: Tensor,  # [..., 55, 3]
    keypoints: Tensor,  # [..., 21, 3] smplx's vertex keypoints
    landmarks68: Tensor,  # [..., 68, 3]
) -> Tensor:
    """The COCO-WholeBody-133 points of posed EHM meshes, ``[..., 133, 3]`` (see :data:`WHOLEBODY_SOURCES`)."""
    for name, value, count in (("joints", joints, 55), ("keypoints", keypoints, 21), ("landmarks68", landmarks68, 68)):
        if value.dim() < 2 or tuple(value.shape[-2:]) != (count, 3):
            raise ValueError(f"{name}: expected shape [..., {count}, 3], got {list(value.shape)}")
    points = torch.cat([joints, keypoints, landmarks68], dim=-2)
    return points.index_select(-2, torch.as_tensor(WHOLEBODY_SOURCES, device=points.device))


def keypoint_box_side(points: Tensor, valid: Tensor) -> Tensor:
    """Longer side ``[B]`` of the box of ``points  # [B, K, 2]`` where ``valid  # [B, K]``; NaN with fewer than
    two valid points or an empty box."""
    big = torch.finfo(points.dtype).max
    lo = torch.where(valid[..., None], points, big).min(1).values
    hi = torch.where(valid[..., None], points, -big).max(1).values
    side = (hi - lo).max(-1).values
    return torch.where((valid.sum(1) >= 2) & (side > 0), side, torch.full_like(side, float("nan")))


def confidence_gate(confidence: Tensor, threshold: Tensor | float) -> Tensor:
    """Per-keypoint weights from detector confidences, GUAVA's rule: ``2 * confidence`` where the
    confidence is above ``threshold``, else 0.

    confidence  # [..., K] in [0, 1]
    threshold   # [K] or a scalar
    returns     # [..., K]
    """
    return torch.where(confidence > threshold, 2.0 * confidence, torch.zeros_like(confidence))


def pseudo_huber(distance: Tensor, delta: float) -> Tensor:
    """``sqrt(d^2 + delta^2) - delta``: quadratic (``d^2 / 2 delta``) below ``delta``, linear (``~|d|``) above."""
    return torch.sqrt(distance * distance + delta * delta) - delta


def robust_point_loss(
    pred: Tensor,  # [..., K, D]
    target: Tensor,  # [..., K, D]
    weight: Tensor,  # [..., K] (or broadcastable)
    delta: float = 1.0,
) -> Tensor:
    """Mean over the ``K`` points of ``weight * pseudo_huber(|pred - target|)``, ``[...]``.

    Divides by ``K`` (not by the weights' sum), as GUAVA's losses do, so that dropping a point lowers
    the loss instead of re-weighting the rest.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must have one shape")
    dist = (pred - target).square().sum(-1).add(1e-12).sqrt()
    return (weight * pseudo_huber(dist, delta)).mean(-1)


def mean_square(values: Tensor, start_dim: int = 1) -> Tensor:
    """Mean of squares over every dimension from ``start_dim`` on, ``[leading dims]``."""
    return values.square().flatten(start_dim).mean(-1)


def dilate_mask(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of ``mask  # [B, H, W]`` by a ``(2 radius + 1)`` square, same shape (float)."""
    if radius <= 0:
        return mask.float()
    return torch.nn.functional.max_pool2d(mask.float()[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]


def erode_mask(mask: Tensor, radius: int) -> Tensor:
    """Binary erosion of ``mask  # [B, H, W]`` by a ``(2 radius + 1)`` square (outside the image counts as
    foreground, so a person cut by the border is not eroded there), same shape (float)."""
    return 1.0 - dilate_mask(1.0 - mask.float(), radius)


def trimap_silhouette_loss(
    silhouette: Tensor,  # [B, H, W] soft silhouette in [0, 1]
    mask: Tensor,  # [B, H, W] person mask in [0, 1] (thresholded at 0.5)
    band: int,
) -> Tensor:
    """PostureHMR-style trimap loss ``[B]``: the mask eroded by ``band`` px is sure foreground, outside
    the mask dilated by ``band`` px is sure background, the band between is unknown and ignored.
    Returns the mean over sure pixels of ``(1 - S)^2`` (foreground) and ``S^2`` (background)."""
    if silhouette.shape != mask.shape or silhouette.dim() != 3:
        raise ValueError(f"silhouette and mask must both be [B, H, W], got {list(silhouette.shape)} and "
                         f"{list(mask.shape)}")
    binary = (mask > 0.5).float()
    fg = erode_mask(binary, band)
    bg = 1.0 - dilate_mask(binary, band)
    err = fg * (1.0 - silhouette).square() + bg * silhouette.square()
    return err.flatten(1).sum(-1) / (fg + bg).flatten(1).sum(-1).clamp(min=1.0)
