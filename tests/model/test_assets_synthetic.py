"""The synthetic kit: smplx loads it unchanged, parts sit where they belong, correspondences are exact."""

from __future__ import annotations

import numpy as np
import pytest
import smplx
import torch

from model.assets import layouts
from model.assets.check import asset_hashes, kit_info, kit_kind
from model.assets.loaders import (
    load_body_model,
    load_deformation_transfer,
    load_mano_smplx_ids,
    load_mediapipe_embedding,
    load_smplx_flame_ids,
)
from model.assets.synthetic import synthesize_kit

# smplx appends these extra joints (vertex picks) after the model's own joints
EXTRA = ["nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel"]
EXTRA += [f"{s}{f}" for s in "lr" for f in ("thumb", "index", "middle", "ring", "pinky")]


@pytest.mark.parametrize(
    "model_type, kwargs, num_verts, num_joints",
    [
        ("smpl", {}, 6890, 24 + 21),
        ("smpl", {"gender": "female"}, 6890, 24 + 21),
        ("smplx", {}, 10475, 55 + 21 + 51),
        ("smplx", {"gender": "male", "use_face_contour": True}, 10475, 55 + 21 + 51 + 17),
        ("smplx", {"ext": "pkl", "num_betas": 300, "num_expression_coeffs": 100}, 10475, 55 + 21 + 51),
        ("flame", {"use_face_contour": True}, 5023, 5 + 51 + 17),
        ("mano", {"is_rhand": True}, 778, 16),
        ("mano", {"is_rhand": False}, 778, 16),
    ],
)
def test_smplx_loads_the_kit_unchanged(kit_dir, model_type, kwargs, num_verts, num_joints):
    model = smplx.create(str(kit_dir), model_type=model_type, **kwargs)
    with torch.no_grad():
        out = model()
    assert out.vertices.shape == (1, num_verts, 3)
    assert out.joints.shape == (1, num_joints, 3)
    assert torch.isfinite(out.vertices).all()


def _extra_joints(kit_dir, model_type):
    model = smplx.create(str(kit_dir), model_type=model_type)
    with torch.no_grad():
        joints = model().joints[0].numpy()
    n = 24 if model_type == "smpl" else 55
    names = layouts.SMPL_JOINTS if model_type == "smpl" else layouts.SMPLX_JOINTS
    own = dict(zip(names, joints[:n]))
    return own, dict(zip(EXTRA, joints[n : n + len(EXTRA)]))


@pytest.mark.parametrize("model_type", ["smpl", "smplx"])
def test_extra_joint_vertices_sit_on_the_right_parts(kit_dir, model_type):
    j, e = _extra_joints(kit_dir, model_type)
    head = j["head"]
    # face: nose in front of the head at head height, eyes left/right of it and above, ears outside
    assert e["nose"][2] > head[2] + 0.07 and abs(e["nose"][0]) < 0.01 and abs(e["nose"][1] - head[1]) < 0.15
    assert e["leye"][0] > 0.02 and e["reye"][0] < -0.02 and e["leye"][1] > e["nose"][1]
    assert e["nose"][2] > e["leye"][2] > head[2]
    assert e["lear"][0] > head[0] + 0.06 and e["rear"][0] < head[0] - 0.06
    # feet: toes in front at the bottom, heels behind, big toe on the inner side
    for side, s in (("L", "left"), ("R", "right")):
        ankle = j[f"{s}_ankle"]
        assert e[f"{side}BigToe"][2] > ankle[2] + 0.12 and e[f"{side}BigToe"][1] < ankle[1] - 0.04
        assert e[f"{side}SmallToe"][2] > ankle[2] + 0.08
        assert e[f"{side}Heel"][2] < ankle[2] - 0.03 and e[f"{side}Heel"][1] < ankle[1] - 0.04
        assert abs(e[f"{side}BigToe"][0]) < abs(e[f"{side}SmallToe"][0])
    # fingertips at the end of each arm, beyond the wrist; thumbs towards the front
    for side, s, sign in (("l", "left", 1.0), ("r", "right", -1.0)):
        wrist = j[f"{s}_wrist"]
        tips = np.stack([e[f"{side}{f}"] for f in ("thumb", "index", "middle", "ring", "pinky")])
        assert (sign * (tips[:, 0] - wrist[0]) > 0.07).all()
        assert (np.abs(tips[:, 1] - wrist[1]) < 0.05).all()
        assert tips[0, 2] > tips[1:, 2].max()
        assert tips[2, 0] * sign > tips[4, 0] * sign  # middle finger reaches further than the pinky


def test_person_is_about_1_7_m_in_t_pose(kit_dir):
    for name in ("smpl/SMPL_NEUTRAL.pkl", "smplx/SMPLX_NEUTRAL.npz"):
        v = load_body_model(kit_dir / name).v_template
        height = v[:, 1].max() - v[:, 1].min()
        span = v[:, 0].max() - v[:, 0].min()
        assert 1.6 < height < 1.8, name
        assert 1.55 < span < 1.9, name  # arms stretched out sideways
        assert v[:, 1].argmax() in np.flatnonzero(np.abs(v[:, 0]) < 0.1)  # the top is the head


def test_mano_fingertip_ids_are_fingertips(kit_dir):
    for side in ("RIGHT", "LEFT"):
        m = load_body_model(kit_dir / f"mano/MANO_{side}.pkl")
        wrist = m.rest_joints()[0]
        for finger in layouts.MANO_TIPS_SMPLX:
            a, b = m.v_template[layouts.MANO_TIPS_SMPLX[finger]], m.v_template[layouts.MANO_TIPS_COMMON[finger]]
            assert np.linalg.norm(a - b) < 0.012, finger
            assert np.linalg.norm(a - wrist) > 0.08, finger
            tip_joint = m.rest_joints()[layouts.MANO_JOINTS.index(f"{finger}3")]
            assert np.linalg.norm(a - wrist) > np.linalg.norm(tip_joint - wrist), finger


def test_flame_eyeballs_are_the_last_vertices_around_the_eye_joints(kit_dir):
    flame = load_body_model(kit_dir / "flame/generic_model.pkl")
    joints = flame.rest_joints()
    for rng, joint, side in ((layouts.FLAME_LEFT_EYEBALL, 3, 1.0), (layouts.FLAME_RIGHT_EYEBALL, 4, -1.0)):
        eye = flame.v_template[list(rng)]
        np.testing.assert_allclose(eye.mean(0), joints[joint], atol=1e-6)
        assert side * joints[joint][0] > 0.02
        np.testing.assert_allclose(np.linalg.norm(eye - joints[joint], axis=1), 0.0125, rtol=1e-6)
        assert (flame.weights[list(rng), joint] == 1.0).all()


def test_head_and_hand_correspondences_are_exact_at_rest(kit_dir):
    smplx_v = load_body_model(kit_dir / "smplx/SMPLX_NEUTRAL.npz").v_template
    flame = load_body_model(kit_dir / "flame/FLAME_NEUTRAL.pkl")
    head_ids = load_smplx_flame_ids(kit_dir / "smplx/SMPL-X__FLAME_vertex_ids.npy")
    offset = smplx_v[head_ids] - flame.v_template
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-5)
    hand_ids = load_mano_smplx_ids(kit_dir / "smplx/MANO_SMPLX_vertex_ids.pkl")
    for key, side in (("left_hand", "LEFT"), ("right_hand", "RIGHT")):
        mano = load_body_model(kit_dir / f"mano/MANO_{side}.pkl")
        offset = smplx_v[hand_ids[key]] - mano.v_template
        np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-5)
    ids = np.concatenate([head_ids, hand_ids["left_hand"], hand_ids["right_hand"]])
    assert len(np.unique(ids)) == len(ids)


def test_smpl_and_smplx_differ_like_the_real_ones(kit_dir):
    smpl = load_body_model(kit_dir / "smpl/SMPL_NEUTRAL.pkl")
    smplx_m = load_body_model(kit_dir / "smplx/SMPLX_NEUTRAL.npz")
    body = slice(0, 22)
    gap = np.linalg.norm(smpl.rest_joints()[body] - smplx_m.rest_joints()[body], axis=1)
    assert 0.004 < gap.max() < 0.015 and gap.mean() > 0.003  # same kind of body, different rest joints
    assert smpl.shapedirs.shape[2] == 10 and smplx_m.shapedirs.shape[2] == 400
    # the deformation transfer maps the SMPL template close to the SMPL-X template, but not onto it
    mtx = load_deformation_transfer(kit_dir / "transfer/smpl2smplx_deftrafo_setup.pkl")
    assert mtx.shape == (10475, 2 * 6890)
    mapped = mtx[:, :6890] @ smpl.v_template
    err = np.linalg.norm(mapped - smplx_m.v_template, axis=1)
    assert np.median(err) < 0.02
    assert err.max() > 0.003
    np.testing.assert_allclose(np.asarray(mtx[:, :6890].sum(1)).ravel(), 1.0, atol=1e-9)


def test_smpl_shape_space_is_a_mixed_basis_of_smplx_first_components(kit_dir):
    smpl = load_body_model(kit_dir / "smpl/SMPL_NEUTRAL.pkl")
    smplx_m = load_body_model(kit_dir / "smplx/SMPLX_NEUTRAL.npz")
    mtx = load_deformation_transfer(kit_dir / "transfer/smpl2smplx_deftrafo_setup.pkl")[:, :6890]
    mapped = np.stack([mtx @ smpl.shapedirs[:, :, i] for i in range(10)], -1).reshape(-1, 10)

    def fit(count: int) -> tuple[np.ndarray, float]:  # SMPL components from SMPL-X's first ``count``
        basis = smplx_m.shapedirs[:, :, :count].reshape(-1, count)
        coeffs = np.linalg.lstsq(basis, mapped, rcond=None)[0]
        return coeffs, np.linalg.norm(basis @ coeffs - mapped) / np.linalg.norm(mapped)

    coeffs, residual = fit(10)
    assert 0.005 < residual < 0.06  # largely shared span, a small part outside it
    assert fit(5)[1] > 2 * residual  # every one of the 10 SMPL-X components is needed
    off_diagonal = coeffs - np.diag(np.diag(coeffs))
    assert np.linalg.norm(off_diagonal) > 0.5 * np.linalg.norm(coeffs)  # a different basis, not a copy


def test_face_landmarks_sit_on_the_face(kit_dir):
    flame = smplx.create(str(kit_dir), model_type="flame")
    with torch.no_grad():
        lmk = flame().joints[0, 5:].numpy()  # the 51 static landmarks
    assert lmk.shape == (51, 3)
    nose_tip = lmk[13]  # iBUG 30
    assert nose_tip[2] == lmk[:, 2].max()
    right_eye, left_eye = lmk[19:25].mean(0), lmk[25:31].mean(0)  # iBUG 36-41 / 42-47
    assert right_eye[0] < -0.02 and left_eye[0] > 0.02
    mouth = lmk[31:].mean(0)
    assert mouth[1] < nose_tip[1] < right_eye[1]
    m = load_body_model(kit_dir / "flame/FLAME_NEUTRAL.pkl")
    mp = load_mediapipe_embedding(kit_dir / "flame/mediapipe_landmark_embedding.npz", len(m.faces))
    points = np.einsum("lk,lkd->ld", mp.bary, m.v_template[m.faces[mp.face_idx]])
    by_index = dict(zip(mp.landmark_indices.tolist(), points))
    assert by_index[4][2] > points[:, 2].max() - 0.003  # MediaPipe 4: nose tip, the frontmost
    assert by_index[263][0] > 0.03 and by_index[33][0] < -0.03  # outer eye corners, left and right
    assert by_index[13][1] > by_index[14][1]  # upper inner lip above the lower


@pytest.mark.parametrize("model_type", ["smpl", "smplx"])
def test_bending_joints_keeps_the_surface_in_one_piece(kit_dir, model_type):
    model = smplx.create(str(kit_dir), model_type=model_type)
    pose = torch.zeros(1, model.NUM_BODY_JOINTS, 3)
    pose[0, 17, 1] = 1.5  # left elbow (joint 18), forwards
    pose[0, 4, 0] = 1.2  # right knee (joint 5)
    pose[0, 0, 0] = -0.8  # left hip (joint 1), leg forwards
    with torch.no_grad():
        rest = model().vertices[0].numpy()
        bent = model(body_pose=pose.view(1, -1)).vertices[0].numpy()
    edges = np.concatenate([model.faces[:, [0, 1]], model.faces[:, [1, 2]], model.faces[:, [2, 0]]]).astype(np.int64)
    length = lambda v: np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)  # noqa: E731
    ratio = length(bent) / length(rest)
    assert 0.05 < ratio.min() and ratio.max() < 3.0  # folds squeeze (the groin: to ~0.1), nothing tears
    assert np.abs(bent - rest).max() > 0.2  # the forearm and the legs moved


def test_kit_is_marked_synthetic(kit_dir, tmp_path):
    info = kit_info(kit_dir)
    assert kit_kind(kit_dir) == "synthetic" and info["seed"] == 0 and info["kit_version"] >= 1
    assert kit_kind(tmp_path) == "official"


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(kit_dir, tmp_path):
    reference = asset_hashes(kit_dir)
    assert asset_hashes(synthesize_kit(tmp_path / "again", seed=0)) == reference
    other = asset_hashes(synthesize_kit(tmp_path / "other", seed=1))
    assert other.keys() == reference.keys()
    models = [k for k in other if not k.startswith(("smplx/SMPL-X__", "smplx/MANO_", "flame/flame_", "flame/mediapipe"))]
    assert len(models) == 14 and all(other[k] != reference[k] for k in models)
