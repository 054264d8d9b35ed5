"""Rotation conversions against scipy, round trips, edge angles and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model.rotations import (
    quat_to_rotmat,
    quat_to_rotvec,
    rot6d_to_rotmat,
    rotmat_to_quat,
    rotmat_to_rot6d,
    rotmat_to_rotvec,
    rotvec_to_rotmat,
    skew,
)


@pytest.fixture(scope="module")
def rotations() -> Rotation:
    """Random rotations plus the awkward ones: identity, tiny angles, angles at and next to pi."""
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(6, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    edge = axes * np.array([0.0, 1e-9, 1e-5, np.pi - 1e-7, np.pi, np.pi - 1e-3])[:, None]
    edge = np.concatenate([edge, np.pi * np.eye(3)])  # half turns about the coordinate axes
    return Rotation.concatenate([Rotation.random(64, random_state=1), Rotation.from_rotvec(edge)])


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float64)


def test_rotvec_to_rotmat_matches_scipy(rotations):
    got = rotvec_to_rotmat(_t(rotations.as_rotvec()))
    np.testing.assert_allclose(got.numpy(), rotations.as_matrix(), atol=1e-12)


def test_rotmat_to_rotvec_matches_scipy_up_to_the_half_turn_sign(rotations):
    got = rotmat_to_rotvec(_t(rotations.as_matrix())).numpy()
    want = rotations.as_rotvec()
    # at exactly pi, v and -v are the same rotation: compare as rotations there, as vectors elsewhere
    np.testing.assert_allclose(Rotation.from_rotvec(got).as_matrix(), rotations.as_matrix(), atol=1e-9)
    angles = np.linalg.norm(want, axis=-1)
    regular = angles < np.pi - 1e-4
    np.testing.assert_allclose(got[regular], want[regular], atol=1e-9)
    assert np.all(np.linalg.norm(got, axis=-1) <= np.pi + 1e-9)


def test_quaternions_match_scipy(rotations):
    quat = rotmat_to_quat(_t(rotations.as_matrix())).numpy()
    want = rotations.as_quat()
    want = np.where(want[:, 3:] < 0, -want, want)
    regular = np.abs(want[:, 3]) > 1e-6  # w == 0: q and -q both have w >= 0
    np.testing.assert_allclose(quat[regular], want[regular], atol=1e-9)
    np.testing.assert_allclose(quat_to_rotmat(_t(rotations.as_quat())).numpy(), rotations.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(
        Rotation.from_rotvec(quat_to_rotvec(_t(rotations.as_quat())).numpy()).as_matrix(),
        rotations.as_matrix(),
        atol=1e-9,
    )


def test_rot6d_round_trip_and_gram_schmidt(rotations):
    rotmat = _t(rotations.as_matrix())
    np.testing.assert_allclose(rot6d_to_rotmat(rotmat_to_rot6d(rotmat)).numpy(), rotmat.numpy(), atol=1e-12)
    # an unnormalised, non-orthogonal 6D input still gives a proper rotation with column 0 along a1
    raw = torch.tensor([2.0, 0.0, 0.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    rotmat = rot6d_to_rotmat(raw)
    np.testing.assert_allclose(rotmat.numpy(), np.eye(3), atol=1e-12)


def test_leading_batch_dims_are_kept():
    rotvec = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    rotmat = rotvec_to_rotmat(rotvec)
    assert rotmat.shape == (2, 5, 7, 3, 3)
    assert rotmat_to_rot6d(rotmat).shape == (2, 5, 7, 6)
    assert rotmat_to_quat(rotmat).shape == (2, 5, 7, 4)
    torch.testing.assert_close(rotvec_to_rotmat(rotmat_to_rotvec(rotmat)), rotmat)
    assert rotvec_to_rotmat(torch.zeros(3)).shape == (3, 3)


@pytest.mark.parametrize(
    "fn, make",
    [
        (rotvec_to_rotmat, lambda: torch.zeros(4, 3, dtype=torch.float64)),
        (rotmat_to_rotvec, lambda: torch.eye(3, dtype=torch.float64).expand(4, 3, 3).clone()),
        (rotmat_to_rotvec, lambda: rotvec_to_rotmat(torch.tensor([[np.pi, 0.0, 0.0]], dtype=torch.float64))),
        (rot6d_to_rotmat, lambda: torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=torch.float64)),
        (rotmat_to_quat, lambda: torch.eye(3, dtype=torch.float64)[None]),
    ],
)
def test_gradients_are_finite_at_the_edges(fn, make):
    x = make().requires_grad_(True)
    fn(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_rotvec_to_rotmat_gradient_at_zero_is_the_skew_generator():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(rotvec_to_rotmat, x)  # [3, 3, 3]
    for i in range(3):
        np.testing.assert_allclose(jac[..., i].numpy(), skew(torch.eye(3, dtype=torch.float64)[i]).numpy())


def test_wrong_shapes_name_the_input():
    with pytest.raises(ValueError, match=r"rotvec: expected shape \[\.\.\., 3\], got \[4, 4\]"):
        rotvec_to_rotmat(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="rotmat"):
        rotmat_to_rotvec(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="rot6d"):
        rot6d_to_rotmat(torch.zeros(5))
