"""2D keypoint metrics: normalised errors, PCK, NME against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from model import metrics


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
