"""The regressor's loss terms (PEAR eq. 1-3) against known answers, with masks."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import LossWeights, combine, masked_l1, masked_mse, root_relative, rotation_mse
from model.rotations import rotvec_to_rotmat


def test_rotation_mse_known_answer_and_masks():
    angle = 0.3
    pred = rotvec_to_rotmat(torch.tensor([[[0.0, 0.0, angle], [0.0, 0.0, 0.0]]]))  # [1, 2, 3, 3]
    target = torch.eye(3).expand(1, 2, 3, 3)
    # ||R_z(a) - I||_F^2 = 4 (1 - cos a)
    expected = 4 * (1 - math.cos(angle))
    assert rotation_mse(pred, target, torch.ones(1)).item() == pytest.approx(expected, rel=1e-5)
    assert rotation_mse(pred, target, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="must be"):
        rotation_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1))


def test_masked_sums_per_sample():
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.zeros(2, 2)
    assert masked_l1(pred, target, torch.tensor([1.0, 0.0])).tolist() == [3.0, 0.0]
    assert masked_mse(pred, target, torch.tensor([0.5, 1.0])).tolist() == [2.5, 34.0]
    points = torch.ones(1, 3, 2)
    weights = torch.tensor([[1.0, 0.0, 0.5]])
    assert masked_l1(points, torch.zeros(1, 3, 2), weights).item() == pytest.approx(3.0)
    rel = root_relative(torch.tensor([[[1.0, 1.0, 1.0], [2.0, 3.0, 4.0]]]), torch.tensor([[1.0, 1.0, 1.0]]))
    assert rel[0, 1].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="differ"):
        masked_l1(pred, torch.zeros(3), torch.ones(2))


def test_combine_weighs_and_averages():
    weights = LossWeights(kp3d_body=2.0, betas=0.5)
    total, terms = combine({"kp3d_body": torch.tensor([1.0, 3.0]), "betas": torch.tensor([4.0, 0.0])}, weights)
    assert terms["kp3d_body"].item() == 4.0 and terms["betas"].item() == 1.0 and total.item() == 5.0
    with pytest.raises(KeyError, match="no weight"):
        combine({"nope": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match="must be >= 0"):
        LossWeights(kp2d_face=-1.0)
