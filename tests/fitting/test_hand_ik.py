"""Hand inverse kinematics on the synthetic kit's MANO: known poses in, the same poses out."""

from __future__ import annotations

import pytest
import torch

from fitting.hand_ik import (
    MANO_TIP_VERTICES,
    MANO_TO_MEDIAPIPE,
    HandIkOptions,
    HandKeypoints,
    mirror_points,
    orient_hand_from_palm,
    solve_hand_ik,
    solve_right_hand_ik,
)
from model.assets.catalog import asset_file
from model.assets.loaders import load_mano_smplx_ids
from model.body_models import MANO, SMPLX
from model.rotations import mirror_rotvec, rotation_angle, rotvec_to_rotmat

F64 = torch.float64


@pytest.fixture(scope="module")
def manos(kit_dir):
    return {side: MANO.from_dir(kit_dir, side).to(F64) for side in ("right", "left")}


@pytest.fixture(scope="module")
def layer(manos):
    return HandKeypoints(manos["right"])


def mano_landmarks(mano: MANO, **params) -> torch.Tensor:
    """The 21 MediaPipe-ordered points of a full MANO forward pass (joints + fingertip vertices)."""
    out = mano(**params)
    return torch.cat([out.joints, out.vertices[:, list(MANO_TIP_VERTICES)]], 1)[:, list(MANO_TO_MEDIAPIPE)]


def bending_poses(layer: HandKeypoints, n: int, seed: int, max_angle: float = 1.2) -> torch.Tensor:
    """Random finger poses ``[n, 15, 3]`` whose joints bend without twisting about their bones (what
    21 points can determine), up to ``max_angle`` rad per joint."""
    g = torch.Generator().manual_seed(seed)
    bones = layer.rest_bones()
    axis = torch.randn(n, 15, 3, generator=g, dtype=F64)
    axis = axis - (axis * bones).sum(-1, keepdim=True) * bones
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return axis * torch.rand(n, 15, 1, generator=g, dtype=F64) * max_angle


def random_orient(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_hand_keypoints_equal_the_full_mano_forward(manos, layer):
    g = torch.Generator().manual_seed(3)
    pose = torch.randn(5, 15, 3, generator=g, dtype=F64) * 0.5
    orient = torch.randn(5, 3, generator=g, dtype=F64)
    betas = torch.randn(5, 10, generator=g, dtype=F64)
    expected = mano_landmarks(manos["right"], betas=betas, global_orient=orient, hand_pose=pose)
    rotmats = rotvec_to_rotmat(torch.cat([orient[:, None], pose], 1))
    torch.testing.assert_close(layer(betas, rotmats), expected)


def test_ik_recovers_a_right_hand_pose_to_under_one_degree(manos, layer):
    pose, orient = bending_poses(layer, 8, seed=4), random_orient(8, 5)
    offset = torch.tensor([0.02, -0.01, 0.4], dtype=F64)
    target = 1.1 * mano_landmarks(manos["right"], global_orient=orient, hand_pose=pose) + offset
    result = solve_right_hand_ik(layer, target)
    assert rotation_angle(result.hand_pose, pose).rad2deg().mean() < 1.0
    assert rotation_angle(result.global_orient, orient).rad2deg().max() < 1.0
    torch.testing.assert_close(result.scale, torch.full((8,), 1.1, dtype=F64), atol=0.01, rtol=0)
    assert result.rmse.max() < 5e-4  # metres
    torch.testing.assert_close(result.keypoints, target, atol=2e-3, rtol=0)


def test_ik_recovers_a_left_hand_through_the_mirror(manos, layer):
    right_pose, orient = bending_poses(layer, 8, seed=6), random_orient(8, 7)
    left_pose = mirror_rotvec(right_pose)
    target = mano_landmarks(manos["left"], global_orient=orient, hand_pose=left_pose)
    result = solve_hand_ik(layer, target, torch.ones(8, dtype=torch.bool))
    assert rotation_angle(result.hand_pose, left_pose).rad2deg().mean() < 1.0
    assert rotation_angle(result.global_orient, orient).rad2deg().max() < 1.0
    assert result.rmse.max() < 5e-4
    # the mirror round trip: the same hand seen as a right hand's mirror image gives the mirrored pose
    as_right = solve_right_hand_ik(layer, mirror_points(target))
    torch.testing.assert_close(mirror_rotvec(as_right.hand_pose), result.hand_pose)
    # solved as a right hand, a left hand fits badly: sides are not interchangeable
    assert solve_right_hand_ik(layer, target).rmse.mean() > 5 * result.rmse.mean()


def test_palm_triangle_orients_both_hands_whatever_the_fingers_and_scale(manos, layer):
    orient, fingers = random_orient(6, 8), bending_poses(layer, 6, seed=9)
    is_left = torch.tensor([False, True] * 3)
    palms = []
    for i in range(6):
        mano = manos["left" if is_left[i] else "right"]
        pose = mirror_rotvec(fingers[i:i + 1]) if is_left[i] else fingers[i:i + 1]
        points = mano_landmarks(mano, global_orient=orient[i:i + 1], hand_pose=pose)[:, [0, 5, 17]]
        palms.append(points * 900.0 + 300.0)  # pixels: any scale and offset
    found = orient_hand_from_palm(layer, torch.cat(palms), is_left)
    assert rotation_angle(found, orient).rad2deg().max() < 0.01
    # a left hand read as a right one is a different (wrong) rotation
    wrong = orient_hand_from_palm(layer, torch.cat(palms), torch.zeros(6, dtype=torch.bool))
    assert rotation_angle(wrong[is_left], orient[is_left]).rad2deg().min() > 10
    with pytest.raises(ValueError, match="palm"):
        orient_hand_from_palm(layer, torch.cat(palms)[:, :2], is_left)
    with pytest.raises(ValueError, match="is_left"):
        orient_hand_from_palm(layer, torch.cat(palms), is_left[:3])


def test_ik_output_is_the_smplx_hand_pose(kit_dir, layer):
    """Poses come out in SMPL-X's left/right_hand_pose convention (flat hand = zero, same joint order)."""
    smplx = SMPLX.from_dir(kit_dir).to(F64)
    ids = load_mano_smplx_ids(asset_file(kit_dir, "mano_smplx_ids"))
    left_pose, right_pose = mirror_rotvec(bending_poses(layer, 3, seed=8)), bending_poses(layer, 3, seed=9)
    out = smplx(global_orient=random_orient(3, 10), left_hand_pose=left_pose, right_hand_pose=right_pose)
    for side, wrist, first, pose in (("left", 20, 25, left_pose), ("right", 21, 40, right_pose)):
        joints = torch.cat([out.joints[:, [wrist]], out.joints[:, first:first + 15]], 1)
        tips = out.vertices[:, ids[f"{side}_hand"][list(MANO_TIP_VERTICES)]]
        target = torch.cat([joints, tips], 1)[:, list(MANO_TO_MEDIAPIPE)]
        result = solve_hand_ik(layer, target, torch.full((3,), side == "left"))
        assert rotation_angle(result.hand_pose, pose).rad2deg().mean() < 1.0, side


def test_ik_fits_shape_and_scale(manos, layer):
    betas = torch.randn(4, 10, generator=torch.Generator().manual_seed(11), dtype=F64)
    pose, orient = bending_poses(layer, 4, seed=12, max_angle=0.8), random_orient(4, 13)
    target = 0.9 * mano_landmarks(manos["right"], betas=betas, global_orient=orient, hand_pose=pose)
    fitted = solve_right_hand_ik(layer, target)
    rigid = solve_right_hand_ik(layer, target, HandIkOptions(fit_shape=False))
    assert fitted.rmse.max() < 1.5e-3 and (fitted.rmse < rigid.rmse).all()
    assert (rigid.betas == 0).all() and fitted.betas.abs().sum() > 0
    assert rotation_angle(fitted.hand_pose, pose).rad2deg().mean() < 3.0


def test_bad_landmarks_are_refused(layer):
    with pytest.raises(ValueError, match=r"target: expected hand landmarks \[N, 21, 3\]"):
        solve_right_hand_ik(layer, torch.zeros(2, 20, 3, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        solve_right_hand_ik(layer, torch.full((1, 21, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="MANO model is torch.float64"):
        solve_right_hand_ik(layer, torch.zeros(1, 21, 3))
    with pytest.raises(ValueError, match="is_left"):
        solve_hand_ik(layer, torch.zeros(2, 21, 3, dtype=F64), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="point_sigma"):
        HandIkOptions(point_sigma=0.0)
