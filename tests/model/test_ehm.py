"""EHM assembly on the synthetic kit: head = aligned FLAME, hands = placed MANO, body = SMPL-X."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.body_models import FLAME, MANO, SMPLX
from model.ehm import EHM
from model.rotations import rotvec_to_rotmat

F64 = torch.float64


@pytest.fixture(scope="module")
def parts(kit_dir):
    """EHM and its stand-alone parts, float64, loaded once for the module."""
    return {
        "ehm": EHM.from_dir(kit_dir, num_flame_shape=50, num_flame_expression=20).to(F64),
        "smplx": SMPLX.from_dir(kit_dir, num_expression=0).to(F64),
        "flame": FLAME.from_dir(kit_dir, num_betas=50, num_expression=20).to(F64),
        "mano_left": MANO.from_dir(kit_dir, side="left").to(F64),
        "mano_right": MANO.from_dir(kit_dir, side="right").to(F64),
    }


def _params(ehm: EHM, batch: tuple[int, ...], seed: int = 0, body: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in ehm.param_specs().items():
        if name == "flame_eyelids" and not ehm.flame.has_eyelids:
            continue
        value = torch.randn(*batch, *spec.shape, generator=gen, dtype=F64) * 0.3
        out[name] = value + 1.0 if name in ("hand_scale", "head_scale") else value
    if not body:
        out["body_pose"] = torch.zeros_like(out["body_pose"])
    return out


def _rigid(global_orient: torch.Tensor, pelvis: torch.Tensor, transl: torch.Tensor, points: torch.Tensor):
    """Points of the rest pose under a pure root rotation about the pelvis, then the translation."""
    rot = rotvec_to_rotmat(global_orient)
    return (points - pelvis[:, None]) @ rot.transpose(-1, -2) + pelvis[:, None] + transl[:, None]


def test_head_vertices_are_the_aligned_flame(parts):
    ehm, flame, smplx = parts["ehm"], parts["flame"], parts["smplx"]
    p = _params(ehm, (3,), body=False)
    out = ehm(**p)
    face = flame(
        betas=p["flame_shape"], expression=p["flame_expression"], jaw_pose=p["flame_jaw_pose"],
        eye_pose=p["flame_eye_pose"], eyelids=p.get("flame_eyelids"),
    )
    rest = smplx(betas=p["betas"]).joints  # SMPL-X rest joints of this shape
    flame_eyes = face.joints[:, [FLAME.LEFT_EYE, FLAME.RIGHT_EYE]].mean(1, keepdim=True)
    smplx_eyes = rest[:, [SMPLX.LEFT_EYE, SMPLX.RIGHT_EYE]].mean(1, keepdim=True)
    aligned = p["head_scale"][:, None] * (face.vertices - flame_eyes) + smplx_eyes
    want = _rigid(p["global_orient"], rest[:, 0], p["transl"], aligned)
    torch.testing.assert_close(out.vertices[:, ehm.head_vertex_ids], want)
    # the FLAME joints (jaw, eyes) and landmarks ride along the same way
    placed_joints = p["head_scale"][:, None] * (face.joints[:, 2:] - flame_eyes) + smplx_eyes
    torch.testing.assert_close(out.joints[:, 22:25], _rigid(p["global_orient"], rest[:, 0], p["transl"], placed_joints))
    placed_lmk = p["head_scale"][:, None] * (face.landmarks_mediapipe - flame_eyes) + smplx_eyes
    torch.testing.assert_close(out.landmarks_mediapipe, _rigid(p["global_orient"], rest[:, 0], p["transl"], placed_lmk))
    lmk68, _ = flame.face_landmarks(want, rotvec_to_rotmat(p["global_orient"]))  # contour row from the head's turn
    torch.testing.assert_close(out.landmarks68, lmk68)


@pytest.mark.parametrize("side", [0, 1])
def test_hand_vertices_are_the_scaled_placed_mano(parts, side):
    ehm, smplx = parts["ehm"], parts["smplx"]
    mano = parts[("mano_left", "mano_right")[side]]
    p = _params(ehm, (2,), seed=1, body=False)
    out = ehm(**p)
    hand = mano(betas=p["mano_betas"][:, side], hand_pose=p["mano_hand_pose"][:, side])
    rest = smplx(betas=p["betas"]).joints
    wrist = rest[:, (SMPLX.LEFT_WRIST, SMPLX.RIGHT_WRIST)[side], None]
    scale = p["hand_scale"][:, side, None, None]
    placed = scale * (hand.vertices - hand.joints[:, :1]) + wrist
    ids = (ehm.left_hand_vertex_ids, ehm.right_hand_vertex_ids)[side]
    torch.testing.assert_close(out.vertices[:, ids], _rigid(p["global_orient"], rest[:, 0], p["transl"], placed))
    joints = scale * (hand.joints[:, 1:] - hand.joints[:, :1]) + wrist
    first = 25 + 15 * side
    torch.testing.assert_close(
        out.joints[:, first : first + 15], _rigid(p["global_orient"], rest[:, 0], p["transl"], joints)
    )


def test_body_vertices_and_joints_are_plain_smplx(parts):
    """Away from the head and hands EHM is SMPL-X (posed body, zero face and fingers)."""
    ehm, smplx = parts["ehm"], parts["smplx"]
    p = _params(ehm, (2,), seed=2)
    out = ehm(**p)
    ref = smplx(betas=p["betas"], global_orient=p["global_orient"], body_pose=p["body_pose"], transl=p["transl"])
    body = torch.ones(smplx.num_vertices, dtype=torch.bool)
    body[ehm.head_vertex_ids] = False
    body[ehm.left_hand_vertex_ids] = False
    body[ehm.right_hand_vertex_ids] = False
    torch.testing.assert_close(out.vertices[:, body], ref.vertices[:, body])
    torch.testing.assert_close(out.joints[:, :22], ref.joints[:, :22])
    torch.testing.assert_close(out.joint_rotations[:, :22], ref.joint_rotations[:, :22])
    torch.testing.assert_close(out.faces, ref.faces)


def test_head_turn_moves_the_face_with_the_smplx_head(parts):
    """Turning the SMPL-X head joint turns the landmarks; the contour row follows the yaw."""
    ehm = parts["ehm"]
    p = _params(ehm, (1,), seed=3, body=False)
    p["global_orient"] = torch.tensor([[np.pi, 0.0, 0.0]], dtype=F64)  # upright, facing an OpenCV camera
    ahead = ehm(**p)
    p["body_pose"] = p["body_pose"].clone()
    p["body_pose"][:, SMPLX.HEAD - 1] = torch.tensor([0.0, 0.4, 0.0], dtype=F64)
    turned = ehm(**p)
    moved = (turned.landmarks68 - ahead.landmarks68).norm(dim=-1)
    assert moved.min() > 1e-3
    torch.testing.assert_close(
        turned.joint_rotations[:, 22:25],
        turned.joint_rotations[:, SMPLX.HEAD, None] @ rotvec_to_rotmat(
            torch.cat([p["flame_jaw_pose"][:, None], p["flame_eye_pose"].reshape(1, 2, 3)], 1)
        ),
    )


@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_batch_shapes(parts, batch):
    ehm = parts["ehm"]
    out = ehm(**_params(ehm, batch))
    n_verts = parts["smplx"].num_vertices
    assert out.vertices.shape == (*batch, n_verts, 3)
    assert out.joints.shape == (*batch, 55, 3)
    assert out.joint_rotations.shape == (*batch, 55, 3, 3)
    assert out.keypoints.shape == (*batch, 21, 3)
    assert out.landmarks68.shape == (*batch, 68, 3)


def test_batched_equals_one_by_one(parts):
    ehm = parts["ehm"]
    p = _params(ehm, (3,), seed=4)
    out = ehm(**p)
    for i in range(3):
        single = ehm(**{k: v[i] for k, v in p.items()})
        torch.testing.assert_close(out.vertices[i], single.vertices)
        torch.testing.assert_close(out.landmarks68[i], single.landmarks68)


def test_float32_agrees_with_float64(parts):
    ehm = parts["ehm"]
    p = _params(ehm, (2,), seed=5)
    out64 = ehm(**p)
    out32 = copy.deepcopy(ehm).to(torch.float32)(**{k: v.float() for k, v in p.items()})
    assert out32.vertices.dtype == torch.float32
    torch.testing.assert_close(out32.vertices.double(), out64.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(out32.joints.double(), out64.joints, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter(parts):
    ehm = parts["ehm"]
    for seed, body in ((6, False), (7, True)):
        p = {k: v.requires_grad_(True) for k, v in _params(ehm, (2,), seed=seed, body=body).items()}
        out = ehm(**p)
        (out.vertices.square().sum() + out.joints.square().sum() + out.landmarks68.square().sum()).backward()
        for name, value in p.items():
            assert torch.isfinite(value.grad).all(), name
            assert value.grad.abs().sum() > 0, name


def test_shape_errors_name_the_tensor(parts):
    ehm = parts["ehm"]
    with pytest.raises(ValueError, match=r"mano_hand_pose: expected shape \[\.\.\., 2, 15, 3\]"):
        ehm(mano_hand_pose=torch.zeros(15, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"flame_expression: expected shape \[\.\.\., 20\] \(last dimension at most 20\)"):
        ehm(flame_expression=torch.zeros(21, dtype=F64))
    with pytest.raises(ValueError, match=r"head_scale: expected shape \[\.\.\., 3\]"):
        ehm(head_scale=torch.ones(2, dtype=F64))
    if not ehm.flame.has_eyelids:
        with pytest.raises(ValueError, match="flame_eyelids: this FLAME has no eyelid blend shapes"):
            ehm(flame_eyelids=torch.zeros(2, dtype=F64))


def test_correspondence_errors_name_the_file(parts):
    ehm, smplx, flame = parts["ehm"], parts["smplx"], parts["flame"]
    head = ehm.head_vertex_ids.numpy()
    hands = {"left_hand": ehm.left_hand_vertex_ids.numpy(), "right_hand": ehm.right_hand_vertex_ids.numpy()}
    left, right = parts["mano_left"], parts["mano_right"]
    with pytest.raises(ValueError, match=r"SMPL-X__FLAME_vertex_ids\.npy: expected 5023 vertex ids"):
        EHM(smplx, flame, left, right, head[:-1], hands)
    with pytest.raises(ValueError, match=r"MANO_SMPLX_vertex_ids\.pkl\['right_hand'\]: vertex ids repeat or overlap"):
        EHM(smplx, flame, left, right, head, {**hands, "right_hand": hands["left_hand"]})
    with pytest.raises(ValueError, match="no 'left_hand' entry"):
        EHM(smplx, flame, left, right, head, {"right_hand": hands["right_hand"]})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(parts):
    ehm = parts["ehm"]
    p = _params(ehm, (2,), seed=8)
    cpu = ehm(**p)
    gpu = copy.deepcopy(ehm).to("cuda")(**{k: v.cuda() for k, v in p.items()})
    torch.testing.assert_close(gpu.vertices.cpu(), cpu.vertices)
    torch.testing.assert_close(gpu.landmarks68.cpu(), cpu.landmarks68)
