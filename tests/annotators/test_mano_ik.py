"""The ``hands/mano-ik`` stage: rows in, MANO hands out; on synthetic hands and on a real image."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy, StageContext
from annotators.hands.mano_ik import HAND_FIELDS, ManoIkConfig, ManoIkStage
from schemas.keypoints import POSE_HAND_POINTS
from fitting.hand_ik import MANO_TIP_VERTICES, MANO_TO_MEDIAPIPE, HandKeypoints
from model.rotations import mirror_rotvec, rotation_angle
from model.assets.loaders import load_mean_hand_pose
from model.body_models import MANO
from model.rotations import rotvec_to_rotmat

REPO = Path(__file__).resolve().parents[2]
EVALDATA = REPO.parent / "shared" / "evaldata"


@pytest.fixture(scope="module")
def stage(kit_dir):
    return ManoIkStage(ManoIkConfig(), policy=ErrorPolicy.QUARANTINE, context=StageContext(body_models=str(kit_dir)))


def known_hands(kit_dir, n: int, seed: int):
    """Landmarks ``[n, 2, 21, 3]`` of MANO hands (left from the left model) with known finger poses."""
    g = torch.Generator().manual_seed(seed)
    right = MANO.from_dir(kit_dir, "right").to(torch.float64)
    bones = HandKeypoints(right).rest_bones()
    axis = torch.randn(n, 2, 15, 3, generator=g, dtype=torch.float64)
    axis = axis - (axis * bones).sum(-1, keepdim=True) * bones
    pose = axis / axis.norm(dim=-1, keepdim=True) * torch.rand(n, 2, 15, 1, generator=g, dtype=torch.float64)
    pose[:, 0] = mirror_rotvec(pose[:, 0])  # the left hand bends the mirror way
    landmarks = []
    for side, name in enumerate(("left", "right")):
        mano = MANO.from_dir(kit_dir, name).to(torch.float64)
        out = mano(global_orient=torch.randn(n, 3, generator=g, dtype=torch.float64), hand_pose=pose[:, side])
        points = torch.cat([out.joints, out.vertices[:, list(MANO_TIP_VERTICES)]], 1)[:, list(MANO_TO_MEDIAPIPE)]
        landmarks.append(points - points.mean(1, keepdim=True))  # MediaPipe's world origin is near the hand centre
    return torch.stack(landmarks, 1).numpy().astype(np.float32), pose


def test_registered_as_the_default_hands_backend():
    assert STAGES.get("hands/mano-ik") is ManoIkStage
    assert ManoIkStage.default_backend and ManoIkStage.name == "hands"


def test_fits_the_hands_of_each_row_and_fills_the_rest(stage, kit_dir):
    landmarks, pose = known_hands(kit_dir, 4, seed=0)
    batch = {
        "mp_hand_landmarks_3d": landmarks,
        "has_hands": np.array([[True, True], [True, False], [False, False], [True, True]]),
        "conf_hands": np.full((4, 2), 0.9, np.float32),
        ERROR_STAGE: np.array(["", "", "", "keypoints"], dtype=object),
        ERROR_REASON: np.array(["", "", "", "earlier failure"], dtype=object),
    }
    out = stage(batch)
    np.testing.assert_array_equal(out["has_hands"], [[True, True], [True, False], [False, False], [False, False]])
    assert out["mano_hand_pose"].shape == (4, 2, 15, 3) and out["mano_hand_pose"].dtype == np.float32
    assert out["mano_global_orient"].shape == (4, 2, 3) and out["mano_betas"].shape == (4, 2, 10)
    fitted = torch.from_numpy(out["mano_hand_pose"][[0, 0, 1], [0, 1, 0]].astype(np.float64))
    error = rotation_angle(fitted, pose[[0, 0, 1], [0, 1, 0]]).rad2deg()
    assert error.mean() < 1.0
    assert np.all((out["conf_hands"][out["has_hands"]] > 0.8) & (out["conf_hands"][out["has_hands"]] <= 0.9))
    np.testing.assert_allclose(out["hand_scale"][out["has_hands"]], 1.0, atol=0.02)
    # hands not fitted keep the schema's fill values
    assert (out["mano_hand_pose"][~out["has_hands"]] == 0).all() and (out["hand_scale"][~out["has_hands"]] == 1).all()
    assert (out["conf_hands"][~out["has_hands"]] == 0).all()
    assert list(out[ERROR_STAGE]) == ["", "", "", "keypoints"]


def test_results_do_not_depend_on_the_batch(stage, kit_dir):
    landmarks, _ = known_hands(kit_dir, 3, seed=1)
    full = stage({"mp_hand_landmarks_3d": landmarks, "has_hands": np.ones((3, 2), bool)})
    alone = stage({"mp_hand_landmarks_3d": landmarks[1:2], "has_hands": np.ones((1, 2), bool)})
    for name in HAND_FIELDS:
        np.testing.assert_allclose(full[name][1:2], alone[name], atol=1e-5)


def test_bad_landmarks_fail_their_row_only(stage, kit_dir):
    landmarks, _ = known_hands(kit_dir, 2, seed=2)
    landmarks[0, 1, 3] = np.nan
    batch = {"mp_hand_landmarks_3d": landmarks, "has_hands": np.ones((2, 2), bool)}
    out = stage(batch)
    assert list(out[ERROR_STAGE]) == ["hands", ""]
    assert "right hand has NaN" in out[ERROR_REASON][0]
    np.testing.assert_array_equal(out["has_hands"], [[False, False], [True, True]])
    raising = ManoIkStage(stage.config, policy=ErrorPolicy.RAISE, context=stage.context)
    with pytest.raises(ValueError, match="mp_hand_landmarks_3d"):
        raising({"mp_hand_landmarks_3d": landmarks, "has_hands": np.ones((2, 2), bool)})
    with pytest.raises(KeyError, match="mp_hand_landmarks_3d"):
        stage({"has_hands": np.ones((2, 2), bool)})


def test_config_is_checked_and_the_stage_pickles(stage, kit_dir):
    with pytest.raises(ValueError, match="body_models"):
        ManoIkStage(ManoIkConfig()).layer  # no body-model folder in the context
    with pytest.raises(ValueError, match="dtype"):
        ManoIkConfig(dtype="float16")
    with pytest.raises(ValueError, match="point_sigma"):
        ManoIkConfig(point_sigma=-1.0)
    stage.layer  # loaded: the pickle must still leave MANO out
    clone = pickle.loads(pickle.dumps(stage))
    assert "layer" not in clone.__dict__ and clone.config == stage.config and clone.context == stage.context


def test_empty_batch(stage):
    out = stage({"mp_hand_landmarks_3d": np.zeros((0, 2, 21, 3), np.float32), "has_hands": np.zeros((0, 2), bool)})
    assert out["mano_hand_pose"].shape == (0, 2, 15, 3) and out["has_hands"].shape == (0, 2)


@pytest.mark.skipif(not (EVALDATA / "hands" / "onehand10k").is_dir(), reason="needs ../shared/evaldata")
def test_real_hands_fit_and_face_the_camera(stage):
    """MediaPipe hands on real photos (OneHand10K): the fitted MANO keypoints match the 3D landmarks, and
    seen along the camera axis (x, y, weak perspective) they land on the hand in the image."""
    from annotators.images import decode_image
    from annotators.keypoints import HandLandmarkModel, Roi, hand_landmarks_in

    folder = EVALDATA / "hands" / "onehand10k"
    data = json.loads((folder / "test_onehand10k.json").read_text())
    files = {i["id"]: i["file_name"] for i in data["images"]}
    model = HandLandmarkModel()
    worlds, points, boxes = [], [], []
    for ann in data["annotations"]:
        image = decode_image((folder / files[ann["image_id"]]).read_bytes(), source=files[ann["image_id"]])
        x, y, w, h = ann["bbox"]
        hand = hand_landmarks_in(model, image, Roi.from_box(np.array([x, y, x + w, y + h]), 2.0), 2)
        worlds.append(hand.world)
        points.append(hand.points[:, :2])
        boxes.append(max(w, h))
    n = len(worlds)
    # handedness is unknown here: fit each hand both ways and keep the better side
    batch = {"mp_hand_landmarks_3d": np.stack([np.stack([w, w]) for w in worlds]), "has_hands": np.ones((n, 2), bool)}
    out = stage(batch)
    side = out["conf_hands"].argmax(1)
    assert (out["conf_hands"].max(1) > 0.5).all()
    layer = stage.layer
    for i in range(n):
        orient = torch.from_numpy(out["mano_global_orient"][i, side[i]]).double()
        pose = torch.from_numpy(out["mano_hand_pose"][i, side[i]]).double()
        betas = torch.from_numpy(out["mano_betas"][i, side[i]]).double()
        if side[i] == 0:  # a left hand: its mirror image is a right hand
            orient, pose = mirror_rotvec(orient), mirror_rotvec(pose)
        keypoints = layer(betas[None], rotvec_to_rotmat(torch.cat([orient[None], pose], 0))[None])[0].numpy()
        if side[i] == 0:
            keypoints[:, 0] *= -1
        xy = keypoints[:, :2] - keypoints[:, :2].mean(0)
        image_xy = points[i] - points[i].mean(0)
        scale = (xy * image_xy).sum() / (xy * xy).sum()  # weak perspective: scale only, no rotation
        error = np.linalg.norm(scale * xy - image_xy, axis=1) / boxes[i]
        assert scale > 0 and np.median(error) < 0.1 and error.max() < 0.2, (i, error)


def pose_palms(kit_dir, orient: torch.Tensor) -> np.ndarray:
    """BlazePose-like ``mp_pose_landmarks [n, 33, 4]`` whose hand points are the wrist and the index and
    pinky knuckles of MANO hands with wrist rotations ``orient  # [n, 2, 3]`` (left from the left model),
    scaled to pixels (x, y, depth) and shifted into an image."""
    n = orient.shape[0]
    pose = np.zeros((n, 33, 4), np.float32)
    pose[..., 3] = 0.9
    for side, name in enumerate(("left", "right")):
        out = MANO.from_dir(kit_dir, name).to(torch.float64)(global_orient=orient[:, side])
        # MANO joints: 0 wrist, 1 index MCP, 7 pinky MCP
        palm = out.joints[:, [0, 1, 7]].numpy() * 2000.0 + np.array([300.0, 200.0, 0.0])
        pose[:, list(POSE_HAND_POINTS[side]), :3] = palm
    return pose


def test_pose_only_hands_take_their_orientation_from_the_pose_and_the_mean_fingers(stage, kit_dir):
    g = torch.Generator().manual_seed(5)
    orient = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    landmarks, _ = known_hands(kit_dir, 3, seed=5)
    batch = {
        "mp_hand_landmarks_3d": landmarks,
        "mp_pose_landmarks": pose_palms(kit_dir, orient),
        "has_hands": np.array([[True, True], [True, False], [False, True]]),
        "has_hand_landmarks": np.array([[True, False], [False, False], [False, False]]),
        "conf_hands": np.full((3, 2), 0.6, np.float32),
    }
    out = stage(batch)
    np.testing.assert_array_equal(out["has_hands"], batch["has_hands"])
    pose_only = [(0, 1), (1, 0), (2, 1)]
    rows, sides = np.array(pose_only).T
    error = rotation_angle(torch.from_numpy(out["mano_global_orient"][rows, sides].astype(np.float64)),
                           orient[rows, sides]).rad2deg()
    assert error.max() < 0.1
    mean = load_mean_hand_pose(kit_dir).astype(np.float32)
    np.testing.assert_allclose(out["mano_hand_pose"][rows, sides], mean[sides])
    assert not np.allclose(mean, 0)  # the kit's relaxed hand is not the flat one, so the check means something
    np.testing.assert_allclose(out["conf_hands"][rows, sides], 0.6)
    assert (out["mano_betas"][rows, sides] == 0).all() and (out["hand_scale"][rows, sides] == 1).all()
    # the hand with landmarks is fitted to them, as before
    assert out["conf_hands"][0, 0] > 0.5 and not np.allclose(out["mano_hand_pose"][0, 0], mean[0])


def test_pose_only_hands_need_usable_pose_points(stage, kit_dir):
    landmarks, _ = known_hands(kit_dir, 2, seed=6)
    pose = pose_palms(kit_dir, torch.zeros(2, 2, 3, dtype=torch.float64))
    pose[1, list(POSE_HAND_POINTS[0]), :3] = [[10.0, 10.0, 0.0], [20.0, 20.0, 0.0], [30.0, 30.0, 0.0]]  # a line
    def batch() -> dict[str, np.ndarray]:
        return {"mp_hand_landmarks_3d": landmarks, "has_hands": np.ones((2, 2), bool),
                "has_hand_landmarks": np.zeros((2, 2), bool)}

    out = stage(batch() | {"mp_pose_landmarks": pose})
    assert list(out[ERROR_STAGE]) == ["", "hands"] and "collinear" in out[ERROR_REASON][1]
    out = stage(batch())
    assert list(out[ERROR_STAGE]) == ["hands", "hands"] and "mp_pose_landmarks" in out[ERROR_REASON][0]
