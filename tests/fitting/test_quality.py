"""Quality scores against known answers, and the rejection rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitting.quality import QualityConfig, boundary_band, mask_iou, part_reprojection, rejection_reason, silhouette_scores


def _keypoints(batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    kp = torch.zeros(batch, 133, 3)
    kp[..., :2] = torch.rand(batch, 133, 2, generator=gen) * 100 + 50
    kp[..., 2] = 0.9
    return kp


def test_reprojection_per_part_in_px_and_normalised():
    kp = _keypoints()
    pred = kp[..., :2] + torch.tensor([3.0, 4.0])  # every point 5 px off
    box = torch.tensor([[0.0, 0.0, 200.0, 100.0], [10.0, 10.0, 60.0, 260.0]])
    kp[1, 23:91, 2] = 0.1  # second sample: no confident face point
    kp[0, 112:133, 2] = 0.4  # first sample: right hand under the hand threshold
    out = part_reprojection(pred, kp, box, keypoint_threshold=0.3, hand_keypoint_threshold=0.5)
    assert out["body"].tolist() == pytest.approx([5.0, 5.0])
    assert out["body_norm"].tolist() == pytest.approx([5.0 / 200.0, 5.0 / 250.0])
    assert out["face"][0] == pytest.approx(5.0) and math.isnan(out["face"][1])
    face_side = (kp[0, 23:91, :2].max(0).values - kp[0, 23:91, :2].min(0).values).max()
    assert out["face_norm"][0] == pytest.approx(5.0 / float(face_side))
    assert out["hands"].shape == (2, 2) and math.isnan(out["hands"][0, 1]) and out["hands"][0, 0] == pytest.approx(5.0)


def test_reprojection_rejects_bad_shapes():
    with pytest.raises(ValueError, match="kp2d"):
        part_reprojection(torch.zeros(1, 133, 2), torch.zeros(1, 17, 3), torch.zeros(1, 4))


def test_mask_iou_and_boundary_band():
    a = torch.zeros(1, 10, 10, dtype=torch.bool)
    b = torch.zeros(1, 10, 10, dtype=torch.bool)
    a[0, 2:6, 2:6] = True  # 16 px
    b[0, 4:8, 2:6] = True  # overlaps 8 px
    assert mask_iou(a, b).item() == pytest.approx(8 / 24)
    assert math.isnan(mask_iou(a & False, b & False).item())
    band = boundary_band(a, 1)
    assert band.sum() == 16 - 4  # a 4x4 square minus its 2x2 interior
    iou, boundary = silhouette_scores(a.float(), a.float(), 1)
    assert iou.item() == 1.0 and boundary.item() == 1.0
    iou, boundary = silhouette_scores(a.float(), b.float(), 1)
    assert boundary.item() < iou.item() < 1.0  # outlines agree less than areas do


def test_rejection_reasons_name_the_part_and_value():
    cfg = QualityConfig(max_reproj_norm_body=0.05, max_reproj_norm_hands=0.2, min_silhouette_iou=0.3)
    good = {"has_body": True, "quality_reproj_norm_body": 0.01, "quality_reproj_norm_face": np.nan,
            "quality_reproj_norm_hands": np.array([0.1, np.nan]), "quality_silhouette_iou": 0.8}
    assert rejection_reason(good, cfg) == ""
    # "<check>: <value> <relation> <setting> <limit>": the text before the ':' is the reason's kind in the report
    assert rejection_reason({**good, "quality_reproj_norm_body": 0.08}, cfg) == \
        "body reprojection: 0.08 > max_reproj_norm_body 0.05"
    assert rejection_reason({**good, "quality_reproj_norm_hands": np.array([0.1, 0.5])}, cfg) == \
        "right hand reprojection: 0.5 > max_reproj_norm_hands 0.2"
    assert "silhouette IoU: 0.1 < min_silhouette_iou 0.3" in rejection_reason({**good, "quality_silhouette_iou": 0.1}, cfg)
    assert "has_body" in rejection_reason({**good, "has_body": False}, cfg)
    off = QualityConfig(max_reproj_norm_body=None, require_body=False)
    assert rejection_reason({**good, "quality_reproj_norm_body": 9.0, "has_body": False}, off) == ""


def test_config_validation():
    with pytest.raises(ValueError, match="mask_size"):
        QualityConfig(mask_size=2)
