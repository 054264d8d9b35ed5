"""2D keypoint metrics: normalised errors, PCK, NME against known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import metrics
from model.rotations import rotvec_to_rotmat


def test_pck_and_nme_known_answers():
    gt = np.zeros((2, 4, 3))
    gt[..., 2] = 1
    pred = gt.copy()
    pred[0, :, 0] = [0.0, 4.0, 6.0, 20.0]  # errors 0, 4, 6, 20 px on a 100 px box
    pred[1, :, 1] = [1.0, 1.0, 1.0, 1.0]
    norm = np.array([100.0, 10.0])
    visible = np.ones((2, 4), bool)
    visible[1, 3] = False
    assert metrics.pck(pred, gt, visible, norm, 0.05) == pytest.approx(2 / 7)
    assert metrics.pck(pred, gt, visible, norm, 0.15) == pytest.approx(6 / 7)
    assert metrics.nme(pred, gt, visible, norm) == pytest.approx((0.075 + 0.1) / 2)
    assert metrics.box_size(np.array([[10, 20, 30, 70]])) == pytest.approx([50])
    face = np.zeros((68, 2))
    face[45] = [3.0, 4.0]
    assert metrics.interocular(face) == pytest.approx(5.0)


def test_metrics_reject_bad_input():
    gt = np.zeros((1, 3, 2))
    with pytest.raises(ValueError, match="disagree"):
        metrics.pck(np.zeros((1, 2, 2)), gt, np.ones((1, 3), bool), np.ones(1), 0.1)
    with pytest.raises(ValueError, match="positive"):
        metrics.nme(gt, gt, np.ones((1, 3), bool), np.zeros(1))
    with pytest.raises(ValueError, match="visible"):
        metrics.pck(gt, gt, np.zeros((1, 3), bool), np.ones(1), 0.1)


def test_3d_errors_known_answers():
    gt = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]], dtype=torch.float64)
    shifted = gt + torch.tensor([5.0, -1.0, 2.0], dtype=torch.float64)
    assert metrics.mpjpe(shifted, gt, shifted[:, 0], gt[:, 0]).item() == pytest.approx(0.0, abs=1e-12)
    moved = gt.clone()
    moved[0, 3, 2] += 0.4  # one joint off by 0.4 (pelvis-relative)
    assert metrics.mpjpe(moved, gt, moved[:, 0], gt[:, 0]).item() == pytest.approx(0.1)
    # a similarity transform of the same points has no PA-MPJPE but a large MPJPE
    c, s = np.cos(0.7), np.sin(0.7)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    similar = 1.3 * gt @ rot.T + 2.0
    assert metrics.pa_mpjpe(similar, gt).item() == pytest.approx(0.0, abs=1e-9)
    assert metrics.mpjpe(similar, gt, similar[:, 0], gt[:, 0]).item() > 0.5
    assert metrics.lip_vertex_error(moved, gt).item() == pytest.approx(0.4)
    eyes = torch.zeros(1, 2, 3, dtype=torch.float64)
    assert metrics.face_landmark_error(shifted, gt, eyes + torch.tensor([5.0, -1.0, 2.0], dtype=torch.float64),
                                       eyes).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="both roots"):
        metrics.mpjpe(gt, gt, gt[:, 0], None)


def test_similarity_align_recovers_a_known_similarity():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    rot = rotvec_to_rotmat(torch.randn(4, 3, generator=g, dtype=torch.float64))
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    shift = torch.randn(4, 3, generator=g, dtype=torch.float64)
    dst = scale[:, None, None] * src @ rot.transpose(1, 2) + shift[:, None]
    r, s, t = metrics.similarity_align(src, dst)
    torch.testing.assert_close(r, rot)
    torch.testing.assert_close(s, scale)
    torch.testing.assert_close(t, shift)
    # a mirror image is not a rotation: the fit stays a proper rotation
    r, _, _ = metrics.similarity_align(src, src * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(torch.linalg.det(r), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="source"):
        metrics.similarity_align(src, dst[:, :5])
