"""Partial forward passes and their closed-form Jacobian, against the full model and autograd."""

from __future__ import annotations

import pytest
import torch

from fitting.transfer_posing import PartialModel, pose_rotmats, shape_coefficients
from model.body_models import SMPL, SMPLX
from model.rotations import rotvec_to_rotmat

F64 = torch.float64


@pytest.fixture(scope="module")
def smplx(kit_dir) -> SMPLX:
    return SMPLX.from_dir(kit_dir).to(F64)


def _pose(model, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rv = {"global_orient": torch.randn(n, 3, generator=gen, dtype=F64) * 0.5,
          "body_pose": torch.randn(n, 21, 3, generator=gen, dtype=F64) * 0.4,
          "left_hand_pose": torch.randn(n, 15, 3, generator=gen, dtype=F64) * 0.3}
    betas = torch.randn(n, 10, generator=gen, dtype=F64)
    return rv, betas, torch.randn(n, 3, generator=gen, dtype=F64)


def test_partial_vertices_equal_the_full_model(smplx, kit_dir) -> None:
    ids = torch.tensor([0, 17, 5000, 10474, 333])
    rv, betas, transl = _pose(smplx, 3, 0)
    full = smplx(betas=betas, transl=transl, **rv)
    coeffs = shape_coefficients(smplx, {"betas": betas}, 3)
    verts, joints, _ = PartialModel(smplx, ids)(coeffs, pose_rotmats(smplx, rv, 3), transl)
    torch.testing.assert_close(verts, full.vertices[:, ids])
    torch.testing.assert_close(joints, full.joints)
    smpl = SMPL.from_dir(kit_dir).to(F64)
    body = {"global_orient": rv["global_orient"], "body_pose": torch.zeros(3, 23, 3, dtype=F64)}
    coeffs = shape_coefficients(smpl, {"betas": betas}, 3)
    out = PartialModel(smpl, ids[:3])(coeffs, pose_rotmats(smpl, body, 3), transl)[0]
    torch.testing.assert_close(out, smpl(betas=betas, transl=transl, **body).vertices[:, ids[:3]])
    with pytest.raises(ValueError, match="vertex_ids"):
        PartialModel(smplx, [20000])
    with pytest.raises(KeyError, match="jaw"):
        pose_rotmats(smpl, {"jaw_pose": torch.zeros(1, 3, dtype=F64)}, 1)


def test_jacobian_matches_autograd_without_pose_blend_shapes(kit_dir) -> None:
    model = SMPLX.from_dir(kit_dir).to(F64)
    model.posedirs.zero_()  # the closed form leaves out the pose blend shapes' derivative
    ids = torch.arange(0, 10475, 953)
    part = PartialModel(model, ids)
    rv, betas, transl = _pose(model, 2, 1)
    rot = pose_rotmats(model, rv, 2)
    coeffs = shape_coefficients(model, {"betas": betas}, 2)
    joints = list(range(22))
    verts, jac = part.forward_with_jacobian(coeffs, rot, transl, joints, 10)
    assert jac.shape == (2, len(ids), 3, 3 + 3 * 22 + 10)

    def moved(x: torch.Tensor) -> torch.Tensor:
        turned = rot.clone()
        turned[:, joints] = rot[:, joints] @ rotvec_to_rotmat(x[3:69].reshape(22, 3))
        c = coeffs.clone()
        c[:, :10] = coeffs[:, :10] + x[69:]
        return part(c, turned, transl + x[:3])[0]

    reference = torch.autograd.functional.jacobian(moved, torch.zeros(79, dtype=F64))
    torch.testing.assert_close(jac, reference, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(verts, moved(torch.zeros(79, dtype=F64)))
