"""Rotation conversions and helpers against scipy, round trips, edge angles and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from model.rotations import (
    mirror_rotvec,
    quat_multiply,
    quat_to_rotmat,
    quat_to_rotvec,
    rot6d_to_rotmat,
    rotation_angle,
    rotation_between,
    rotmat_to_quat,
    rotmat_to_rot6d,
    rotmat_to_rotvec,
    rotvec_to_quat,
    rotvec_to_rotmat,
    skew,
)

F64 = torch.float64


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


def test_rotvec_to_quat_matches_scipy(rotations):
    rotvec = rotations.as_rotvec()
    got = rotvec_to_quat(_t(rotvec)).numpy()
    want = rotations.as_quat()
    want = np.where(want[:, 3:] < 0, -want, want)  # rotation vectors up to pi give w >= 0
    regular = np.abs(want[:, 3]) > 1e-6
    np.testing.assert_allclose(got[regular], want[regular], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-12)
    # the series branch near zero agrees with the closed form just outside it
    tiny = torch.tensor([[1e-4, -2e-4, 3e-4]], dtype=F64)
    np.testing.assert_allclose(rotvec_to_quat(tiny).numpy(), Rotation.from_rotvec(tiny.numpy()).as_quat(), rtol=0,
                               atol=1e-15)


def test_quat_multiply_composes_rotations_and_broadcasts(rotations):
    a, b = rotations[:32], rotations[32:64]
    got = quat_multiply(_t(a.as_quat()), _t(b.as_quat())).numpy()  # b first, then a
    np.testing.assert_allclose(Rotation.from_quat(got).as_matrix(), (a * b).as_matrix(), atol=1e-12)
    one = _t(a[:1].as_quat())  # [1, 4] against [32, 4], either way round
    np.testing.assert_allclose(quat_multiply(one, _t(b.as_quat())).numpy(),
                               quat_multiply(one.expand(32, 4), _t(b.as_quat())).numpy())
    assert quat_multiply(_t(b.as_quat())[:, None], one).shape == (32, 1, 4)


def test_rotation_between_turns_a_onto_b():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(50, 3, generator=g, dtype=F64)
    a[0], b[0] = torch.tensor([1.0, 2.0, 3.0]), -torch.tensor([1.0, 2.0, 3.0])  # antiparallel
    a[1], b[1] = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 5.0])  # parallel: no rotation
    turned = (rotvec_to_rotmat(rotation_between(a, b)) @ a[..., None])[..., 0]
    unit = b / b.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(turned / turned.norm(dim=-1, keepdim=True), unit)
    assert rotation_between(a, b)[1].norm() < 1e-12
    # the smallest rotation: its axis is perpendicular to both directions
    r = rotation_between(a[2:], b[2:])
    assert (r * a[2:]).sum(-1).abs().max() < 1e-9 and (r * b[2:]).sum(-1).abs().max() < 1e-9


def test_rotation_angle_is_the_angle_of_the_relative_rotation(rotations):
    a, b = rotations[:32], rotations[32:64]
    got = rotation_angle(_t(a.as_rotvec()), _t(b.as_rotvec())).numpy()
    np.testing.assert_allclose(got, (a.inv() * b).magnitude(), atol=1e-7)
    assert float(rotation_angle(_t(a.as_rotvec()), _t(a.as_rotvec())).abs().max()) < 1e-6


def test_mirror_rotvec_is_the_rotation_seen_in_the_mirror():
    v = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    m = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
    torch.testing.assert_close(rotvec_to_rotmat(mirror_rotvec(v)), m @ rotvec_to_rotmat(v) @ m)
    as_array = mirror_rotvec(v.numpy())
    assert isinstance(as_array, np.ndarray)
    np.testing.assert_array_equal(as_array, mirror_rotvec(v).numpy())
    torch.testing.assert_close(mirror_rotvec(mirror_rotvec(v)), v)


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
        (rotvec_to_quat, lambda: torch.zeros(4, 3, dtype=torch.float64)),
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
    with pytest.raises(ValueError, match=r"rotvec: expected shape \[\.\.\., 3\], got \[2, 4\]"):
        rotvec_to_quat(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"b: expected shape \[\.\.\., 4\]"):
        quat_multiply(torch.zeros(4), torch.zeros(3))
