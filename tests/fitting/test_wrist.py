"""Swing-twist wrist integration: hand orientation preserved, twist clamping, sign, gate."""

from __future__ import annotations

import math

import pytest
import torch

from fitting.wrist import hand_gate, integrate_wrist, swing_twist, twist_rotmat
from model.rotations import rotvec_to_rotmat

F64 = torch.float64


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return rotvec_to_rotmat(torch.randn(n, 3, generator=gen, dtype=F64) * 1.5)


def _unit(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, generator=gen, dtype=F64)
    return a / a.norm(dim=-1, keepdim=True)


def test_hand_orientation_is_preserved_exactly():
    n = 64
    elbow_world, elbow_local, hand = _random_rotations(n, 0), _random_rotations(n, 1), _random_rotations(n, 2)
    axis = _unit(n, 3)
    res = integrate_wrist(elbow_world, elbow_local, hand, axis)
    parent = elbow_world @ elbow_local.transpose(-1, -2)  # the shoulder's world rotation
    new_elbow_world = parent @ res.elbow_local
    assert torch.allclose(new_elbow_world @ res.wrist_local, hand, atol=1e-6)
    # the twist goes about the forearm: the wrist joint (on the axis) does not move
    assert torch.allclose(new_elbow_world @ axis[..., None], elbow_world @ axis[..., None], atol=1e-9)
    assert res.clamped.any() and (~res.clamped).any()  # random rotations exercise both branches


def test_twist_beyond_90_degrees_moves_into_the_elbow():
    axis = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=F64)
    swing = rotvec_to_rotmat(torch.tensor([[0.0, 0.3, -0.2]] * 3, dtype=F64))  # axis perpendicular to x
    twist = torch.tensor([math.radians(150.0), math.radians(-150.0), math.radians(45.0)], dtype=F64)
    wrist = twist_rotmat(axis, twist) @ swing
    eye = torch.eye(3, dtype=F64).expand(3, 3, 3)
    res = integrate_wrist(eye, eye, wrist, axis)
    assert res.twist == pytest.approx(twist, abs=1e-9)
    assert res.clamped.tolist() == [True, True, False]
    _, kept = swing_twist(res.wrist_local, axis)
    assert torch.rad2deg(kept).tolist() == pytest.approx([90.0, -90.0, 45.0], abs=1e-6)
    _, elbow_twist = swing_twist(res.elbow_local, axis)
    assert torch.rad2deg(elbow_twist).tolist() == pytest.approx([60.0, -60.0, 0.0], abs=1e-6)
    assert torch.allclose(res.wrist_local[2], wrist[2])  # within the limit: untouched


def test_twist_sign_follows_the_right_hand_rule():
    axis = _unit(4, 5)
    angles = torch.tensor([0.3, -0.3, 2.5, -2.5], dtype=F64)
    swing, twist = swing_twist(twist_rotmat(axis, angles), axis)
    assert twist == pytest.approx(angles, abs=1e-9)
    assert torch.allclose(swing, torch.eye(3, dtype=F64).expand(4, 3, 3), atol=1e-9)
    _, flipped = swing_twist(twist_rotmat(axis, angles), -axis)
    assert flipped == pytest.approx(-angles, abs=1e-9)


def test_swing_axis_is_perpendicular_to_the_twist_axis():
    rot, axis = _random_rotations(32, 6), _unit(32, 7)
    swing, twist = swing_twist(rot, axis)
    assert torch.allclose(twist_rotmat(axis, twist) @ swing, rot, atol=1e-9)
    _, residual = swing_twist(swing, axis)
    assert residual.abs().max() < 1e-9


def test_copy_paste_keeps_every_twist():
    elbow_world, elbow_local, hand = _random_rotations(8, 8), _random_rotations(8, 9), _random_rotations(8, 10)
    res = integrate_wrist(elbow_world, elbow_local, hand, _unit(8, 11), max_twist=None)
    assert torch.equal(res.elbow_local, elbow_local)
    assert torch.allclose(res.wrist_local, elbow_world.transpose(-1, -2) @ hand, atol=1e-12)
    assert not res.clamped.any()


def test_hand_gate():
    has = torch.tensor([[True, True], [False, True]])
    conf = torch.tensor([[0.9, 0.2], [0.9, 0.5]])
    assert hand_gate(has, conf, 0.5).tolist() == [[True, False], [False, True]]
    with pytest.raises(ValueError, match="has_hand"):
        hand_gate(has, conf[:, :1], 0.5)


def test_bad_shapes_and_limits():
    eye = torch.eye(3, dtype=F64)[None]
    with pytest.raises(ValueError, match="axis"):
        integrate_wrist(eye, eye, eye, torch.zeros(1, 2, dtype=F64))
    with pytest.raises(ValueError, match="max_twist"):
        integrate_wrist(eye, eye, eye, torch.tensor([[1.0, 0, 0]], dtype=F64), max_twist=4.0)
