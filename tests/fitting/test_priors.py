"""Joint limits, pose and shape priors, and the plausible-pose sampler."""

from __future__ import annotations

import pytest
import torch

from fitting.priors import joint_limit_penalty, joint_limits, pose_prior, sample_body_pose, sample_rotvec, shape_prior


def test_limits_are_mirrored_and_contain_zero() -> None:
    lo, hi = joint_limits()
    assert lo.shape == hi.shape == (21, 3)
    assert torch.all(lo <= 0) and torch.all(hi >= 0)
    mirror = torch.tensor([1.0, -1.0, -1.0])
    for left, right in ((1, 2), (4, 5), (16, 17), (18, 19), (20, 21)):  # joint numbers; rows are joint - 1
        torch.testing.assert_close(lo[right - 1, 0], lo[left - 1, 0])
        torch.testing.assert_close(torch.sort(torch.stack([lo[right - 1], hi[right - 1]]) * mirror[None], 0).values,
                                   torch.stack([lo[left - 1], hi[left - 1]]))
    assert lo[3, 0] == 0.0 and hi[3, 0] > 2.0  # the left knee bends one way only


def test_penalty_is_zero_inside_and_quadratic_outside() -> None:
    pose = sample_body_pose(64, torch.Generator().manual_seed(0), scale=1.0)
    assert torch.all(joint_limit_penalty(pose) == 0)
    bent = torch.zeros(2, 21, 3)
    bent[0, 3, 0] = -0.5  # the knee bent backwards by 0.5 rad
    bent[1, 3, 0] = -1.0
    penalty = joint_limit_penalty(bent)
    torch.testing.assert_close(penalty, torch.tensor([0.25, 1.0]))
    with pytest.raises(ValueError, match="body_pose"):
        joint_limit_penalty(torch.zeros(2, 23, 3))


def test_pose_and_shape_priors() -> None:
    lo, hi = joint_limits()
    assert float(pose_prior((0.5 * (lo + hi))[None])) == pytest.approx(0.0, abs=1e-9)
    assert float(pose_prior(hi[None])) > float(pose_prior(torch.zeros(1, 21, 3)))
    torch.testing.assert_close(shape_prior(torch.tensor([[3.0, 4.0]])), torch.tensor([25.0]))


def test_samplers_are_seeded_and_bounded() -> None:
    a = sample_body_pose(8, torch.Generator().manual_seed(3), scale=0.5)
    b = sample_body_pose(8, torch.Generator().manual_seed(3), scale=0.5)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    lo, hi = joint_limits()
    assert torch.all(a >= 0.5 * lo - 1e-6) and torch.all(a <= 0.5 * hi + 1e-6)
    r = sample_rotvec(100, torch.Generator().manual_seed(0), max_angle=1.0)
    assert torch.all(r.norm(dim=-1) <= 1.0 + 1e-6)
    with pytest.raises(ValueError, match="scale"):
        sample_body_pose(1, torch.Generator(), scale=1.5)
