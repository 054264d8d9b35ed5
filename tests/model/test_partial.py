"""Partial forward passes and their closed-form Jacobian, against the full model and autograd; the landmark
FLAME against the full FLAME."""

from __future__ import annotations

import pytest
import torch

from model.body_models import FLAME, SMPL, SMPLX
from model.partial import LandmarkFLAME, PartialModel, vertex_subset
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
    coeffs = smplx.shape_coefficients({"betas": betas}, 3)
    verts, joints, _ = PartialModel(smplx, ids)(coeffs, smplx.local_rotmats(rv, 3), transl)
    torch.testing.assert_close(verts, full.vertices[:, ids])
    torch.testing.assert_close(joints, full.joints)
    smpl = SMPL.from_dir(kit_dir).to(F64)
    body = {"global_orient": rv["global_orient"], "body_pose": torch.zeros(3, 23, 3, dtype=F64)}
    coeffs = smpl.shape_coefficients({"betas": betas}, 3)
    out = PartialModel(smpl, ids[:3])(coeffs, smpl.local_rotmats(body, 3), transl)[0]
    torch.testing.assert_close(out, smpl(betas=betas, transl=transl, **body).vertices[:, ids[:3]])
    with pytest.raises(ValueError, match="vertex_ids"):
        PartialModel(smplx, [20000])


def test_jacobian_matches_autograd_without_pose_blend_shapes(kit_dir) -> None:
    model = SMPLX.from_dir(kit_dir).to(F64)
    model.posedirs.zero_()  # the closed form leaves out the pose blend shapes' derivative
    ids = torch.arange(0, 10475, 953)
    part = PartialModel(model, ids)
    rv, betas, transl = _pose(model, 2, 1)
    rot = model.local_rotmats(rv, 2)
    coeffs = model.shape_coefficients({"betas": betas}, 2)
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


def test_vertex_subset_maps_full_ids_to_rows() -> None:
    ids, remap = vertex_subset(torch.tensor([7, 2, 7, 5]), 9)
    assert ids.tolist() == [2, 5, 7]
    assert remap.tolist() == [0, 0, 0, 0, 0, 1, 0, 2, 0]
    assert isinstance(ids, torch.Tensor) and isinstance(remap, torch.Tensor)


def test_landmark_flame_equals_the_full_flame_on_its_vertices(kit_dir) -> None:
    flame = FLAME.from_dir(kit_dir, num_betas=20, num_expression=10).to(F64)
    assert not flame.has_eyelids
    pupils = torch.tensor([100, 200])
    face = LandmarkFLAME(flame, pupils)
    assert face.partial is not None and face.partial.num_vertices < flame.num_vertices
    gen = torch.Generator().manual_seed(3)
    shape, expression = torch.randn(2, 20, generator=gen, dtype=F64), torch.randn(2, 10, generator=gen, dtype=F64)
    jaw, eyes = torch.randn(2, 3, generator=gen, dtype=F64) * 0.2, torch.randn(2, 6, generator=gen, dtype=F64) * 0.2
    verts, faces, pupil_rows = face(shape, expression, jaw, eyes, None)
    full = flame(betas=shape, expression=expression, jaw_pose=jaw, eye_pose=eyes)
    eye_mid = full.joints[:, [FLAME.LEFT_EYE, FLAME.RIGHT_EYE]].mean(1, keepdim=True)
    torch.testing.assert_close(verts, (full.vertices - eye_mid)[:, face.partial.vertex_ids])
    torch.testing.assert_close(verts[:, pupil_rows], (full.vertices - eye_mid)[:, pupils])
    # the subset faces index the same corners: FLAME's landmarks come out the same on either mesh
    lmk, mp = flame.face_landmarks(verts, full.joint_rotations[:, FLAME.NECK], faces)
    lmk_full, mp_full = flame.face_landmarks(full.vertices - eye_mid, full.joint_rotations[:, FLAME.NECK])
    torch.testing.assert_close(lmk, lmk_full)
    torch.testing.assert_close(mp, mp_full)
