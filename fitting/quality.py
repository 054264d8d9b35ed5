"""Per-part quality scores of EHM fits, and the thresholds that reject a sample.

- **Reprojection** (:func:`part_reprojection`): the mean pixel distance between the projected COCO-WholeBody
  points of the fit and the detected keypoints above a confidence threshold, per part (body = the 17 body
  and 6 foot points; face = the 68 face points; each hand's 21 points), and the same divided by a size:
  the longer side of ``bbox_xyxy`` for the body, of the part's confident keypoints' box for face and
  hands. NaN where a part has too few confident keypoints.
- **Silhouette** (:func:`silhouette_scores`), in the spirit of PostureHMR's trimap: the IoU of the rendered
  EHM silhouette (thresholded at 0.5) with the person mask, and the boundary-band IoU (Boundary IoU,
  Cheng et al. 2021): the IoU of the two masks' inner bands of ``band`` px along their contours, which
  weighs the outline instead of the bulk of the body.
- **Rejection** (:func:`rejection_reason`): a sample whose score crosses a threshold of
  :class:`QualityConfig` gets a one-line reason naming the part, the value and the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fitting.objectives import WHOLEBODY_PARTS, erode_mask, keypoint_box_side
from schemas import keypoints as kpl


@dataclass
class QualityConfig:
    """Scores and rejection thresholds of the quality stage (``None``: that check is off)."""

    keypoint_threshold: float = 0.3
    """Body, feet and face keypoints above this confidence are measured."""
    hand_keypoint_threshold: float = 0.5
    """Hand keypoints above this confidence are measured (the refinement's hand gate)."""
    max_reproj_norm_body: float | None = 0.05
    """Reject when the body's mean reprojection error exceeds this fraction of the box's longer side."""
    max_reproj_norm_face: float | None = 0.10
    """Reject when the face's mean reprojection error exceeds this fraction of the face keypoints' box."""
    max_reproj_norm_hands: float | None = 0.20
    """Reject when a hand's mean reprojection error exceeds this fraction of its keypoints' box."""
    max_final_loss: float | None = None
    """Reject when the refinement's final objective exceeds this."""
    min_silhouette_iou: float | None = 0.3
    """Reject when the silhouette IoU with the person mask is below this."""
    min_silhouette_boundary_iou: float | None = None
    """Reject when the boundary-band IoU is below this."""
    require_body: bool = True
    """Reject persons without a body fit (``has_body`` False): the corpus holds EHM fits."""
    silhouette: bool = True
    """Compute the silhouette scores (needs the ``image`` column; MediaPipe's person segmentation)."""
    mask_size: int = 128
    """Side in px of the square grid (the person crop, resampled) where silhouettes are compared."""
    crop_scale: float = 1.25
    """Side of the person crop as a multiple of the box's longer side."""
    band_px: int = 3
    """Width in grid px of the boundary bands."""
    sigma: float = 1e-4
    """Soft-rasteriser blur for the rendered silhouette, grid px^2. Near zero: the score wants the silhouette
    itself, and with a body mesh's many small triangles the coverage of those near a pixel adds up, so a
    blur of ``s`` dilates the outline by about ``sqrt(s)`` px."""

    def __post_init__(self) -> None:
        if self.mask_size < 8 or self.band_px < 1 or not self.crop_scale > 0 or not self.sigma > 0:
            raise ValueError(f"QualityConfig: mask_size >= 8, band_px >= 1, crop_scale > 0 and sigma > 0 required; "
                             f"got {self}")


def _mean_error(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean distance ``[B]`` over valid points (NaN where none)."""
    dist = (pred - target).norm(dim=-1)
    count = valid.sum(1)
    total = torch.where(valid, dist, torch.zeros_like(dist)).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def part_reprojection(
    pred_px: Tensor,  # [B, 133, 2] projected COCO-WholeBody points of the fit
    kp2d: Tensor,  # [B, 133, 3] detected keypoints (x px, y px, confidence)
    bbox_xyxy: Tensor,  # [B, 4] person box
    keypoint_threshold: float = 0.3,
    hand_keypoint_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """Reprojection errors per part: ``{"body", "face"}: [B]`` and ``"hands": [B, 2]`` in px, and the same
    with ``"_norm"`` appended, divided by the part's size (see the module docstring). NaN: not measured."""
    k = kpl.NUM_KEYPOINTS
    if pred_px.shape[-2:] != (k, 2) or kp2d.shape[-2:] != (k, 3) or bbox_xyxy.shape[-1] != 4:
        raise ValueError(f"pred_px [B, 133, 2], kp2d [B, 133, 3] and bbox_xyxy [B, 4] expected, got "
                         f"{list(pred_px.shape)}, {list(kp2d.shape)}, {list(bbox_xyxy.shape)}")
    out: dict[str, Tensor] = {}
    box_side = (bbox_xyxy[:, 2:] - bbox_xyxy[:, :2]).max(-1).values
    hands_px, hands_norm = [], []
    for part, sl in WHOLEBODY_PARTS.items():
        threshold = hand_keypoint_threshold if part.endswith("hand") else keypoint_threshold
        valid = kp2d[:, sl, 2] > threshold
        err = _mean_error(pred_px[:, sl], kp2d[:, sl, :2], valid)
        side = box_side if part == "body" else keypoint_box_side(kp2d[:, sl, :2], valid)
        norm = err / side
        if part.endswith("hand"):
            hands_px.append(err)
            hands_norm.append(norm)
        else:
            out[part], out[f"{part}_norm"] = err, norm
    out["hands"], out["hands_norm"] = torch.stack(hands_px, 1), torch.stack(hands_norm, 1)
    return out


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[B]`` of boolean masks ``[B, H, W]`` (NaN where both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"masks must have one shape, got {list(a.shape)} and {list(b.shape)}")
    inter = (a & b).flatten(1).sum(-1).float()
    union = (a | b).flatten(1).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, math.nan))


def boundary_band(mask: Tensor, width: int) -> Tensor:
    """Inner band of ``width`` px along the contour of boolean ``mask  # [B, H, W]`` (mask minus its erosion)."""
    return mask & ~(erode_mask(mask, width) > 0.5)


def silhouette_scores(silhouette: Tensor, person_mask: Tensor, band: int) -> tuple[Tensor, Tensor]:
    """IoU and boundary-band IoU ``([B], [B])`` of a rendered silhouette and a person mask (both
    ``[B, H, W]`` in [0, 1], thresholded at 0.5)."""
    sil, mask = silhouette > 0.5, person_mask > 0.5
    return mask_iou(sil, mask), mask_iou(boundary_band(sil, band), boundary_band(mask, band))


def rejection_reason(scores: Mapping[str, float | np.ndarray], config: QualityConfig) -> str:
    """Why one sample fails its quality checks (``""`` when it passes): ``"<check>: <value> <relation> <setting>
    <limit>"``, e.g. ``"body reprojection: 0.0619 > max_reproj_norm_body 0.05"`` (the first failing check).

    ``scores`` holds the sample's values by record field name (``has_body``, ``quality_final_loss``,
    ``quality_reproj_norm_body`` / ``_face`` / ``_hands``, ``quality_silhouette_iou``,
    ``quality_silhouette_boundary_iou``); NaN or missing values are not checked.
    """
    if config.require_body and not bool(scores.get("has_body", True)):
        return "no body fit: has_body is False"
    checks = [
        ("quality_final_loss", "final refinement loss", config.max_final_loss, "max_final_loss", 1),
        ("quality_reproj_norm_body", "body reprojection", config.max_reproj_norm_body, "max_reproj_norm_body", 1),
        ("quality_reproj_norm_face", "face reprojection", config.max_reproj_norm_face, "max_reproj_norm_face", 1),
        ("quality_silhouette_iou", "silhouette IoU", config.min_silhouette_iou, "min_silhouette_iou", -1),
        ("quality_silhouette_boundary_iou", "silhouette boundary IoU", config.min_silhouette_boundary_iou,
         "min_silhouette_boundary_iou", -1),
    ]
    for field, what, limit, setting, sign in checks:
        value = float(np.asarray(scores.get(field, math.nan)))
        if limit is not None and not math.isnan(value) and sign * (value - limit) > 0:
            relation = ">" if sign > 0 else "<"
            return f"{what}: {value:.4g} {relation} {setting} {limit:g}"
    hands = np.asarray(scores.get("quality_reproj_norm_hands", [math.nan, math.nan]), dtype=np.float64).reshape(-1)
    limit = config.max_reproj_norm_hands
    for side, value in zip(("left", "right"), hands):
        if limit is not None and not math.isnan(value) and value > limit:
            return f"{side} hand reprojection: {value:.4g} > max_reproj_norm_hands {limit:g}"
    return ""
