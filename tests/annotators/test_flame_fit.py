"""The ``face/flame-fit`` stage: rows in, FLAME faces out; on synthetic faces and on a shipped real image."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy, StageContext
from annotators.face.flame_fit import FACE_FIELDS, FlameFitConfig, FlameFitStage
from fitting.face_fit import IRIS_CENTRES, solve_face_fit
from model.rotations import rotation_angle
from model.rotations import rotvec_to_rotmat

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GRACE_HOPPER_PERSON = np.array([20.0, 20.0, 490.0, 600.0], np.float32)
"""Person box of examples/grace_hopper.jpg (image px), set by hand."""
GRACE_HOPPER_FACE = np.array([150.0, 110.0, 380.0, 350.0])
"""Her face, ears included, from below the cap's brim to the chin (image px), set by hand."""
GRACE_HOPPER_EYES = np.array([[306.0, 189.0], [222.0, 191.0]])
"""Centres of her left and right eye (the person's sides; image right, image left), set by hand."""


@pytest.fixture(scope="module")
def stage(kit_dir):
    return FlameFitStage(FlameFitConfig(num_shape=20, num_expression=20), context=StageContext(body_models=str(kit_dir)))


def known_faces(stage: FlameFitStage, n: int, seed: int):
    """MediaPipe-like landmarks ``[n, 478, 3]`` (float32) of FLAME faces with a known jaw."""
    layer = stage.layer
    g = torch.Generator().manual_seed(seed)
    jaw = torch.zeros(n, 3, dtype=torch.float64)
    jaw[:, 0] = torch.rand(n, generator=g, dtype=torch.float64) * 0.3
    landmarks, pupils = layer(torch.randn(n, layer.num_shape, generator=g, dtype=torch.float64) * 0.5,
                              torch.randn(n, layer.num_expression, generator=g, dtype=torch.float64) * 0.5,
                              jaw, torch.zeros(n, 6, dtype=torch.float64))
    rot = rotvec_to_rotmat(torch.tensor([math.pi, 0.2, 0.1], dtype=torch.float64))
    mediapipe = torch.zeros(n, 478, 3, dtype=torch.float64)
    shift = torch.tensor([300.0, 250.0, 0.0], dtype=torch.float64)
    mediapipe[:, layer.landmark_indices] = 2000.0 * landmarks @ rot.T + shift
    mediapipe[:, list(IRIS_CENTRES)] = 2000.0 * pupils @ rot.T + shift
    return mediapipe.numpy().astype(np.float32), jaw


def test_registered_as_the_default_face_backend():
    assert STAGES.get("face/flame-fit") is FlameFitStage
    assert FlameFitStage.default_backend and FlameFitStage.name == "face"


def test_fits_faces_and_fills_rows_without_one(stage):
    landmarks, jaw = known_faces(stage, 4, seed=0)
    batch = {
        "mp_face_landmarks": landmarks,
        "has_face": np.array([True, False, True, True]),
        "conf_face": np.array([0.9, 0.0, 0.8, 0.9], np.float32),
        ERROR_STAGE: np.array(["", "", "", "keypoints"], dtype=object),
        ERROR_REASON: np.array(["", "", "", "earlier failure"], dtype=object),
    }
    out = stage(batch)
    np.testing.assert_array_equal(out["has_face"], [True, False, True, False])
    shapes = {"flame_shape": (300,), "flame_expression": (100,), "flame_jaw_pose": (3,), "flame_eye_pose": (6,),
              "flame_eyelids": (2,), "head_scale": (3,)}
    for name, shape in shapes.items():
        assert out[name].shape == (4, *shape) and out[name].dtype == np.float32, name
    fitted = torch.from_numpy(out["flame_jaw_pose"][[0, 2]].astype(np.float64))
    assert rotation_angle(fitted, jaw[[0, 2]]).rad2deg().max() < 2.0
    assert (out["flame_shape"][:, 20:] == 0).all() and (out["flame_expression"][:, 20:] == 0).all()
    assert (out["flame_eyelids"] == 0).all()  # the synthetic kit's FLAME has no eyelid blend shapes
    assert (out["head_scale"] == 1).all()
    np.testing.assert_allclose(out["conf_face"][[0, 2]], [0.9, 0.8], rtol=0.01)
    assert (out["conf_face"][[1, 3]] == 0).all() and (out["flame_jaw_pose"][[1, 3]] == 0).all()
    assert list(out[ERROR_STAGE]) == ["", "", "", "keypoints"]


def test_results_do_not_depend_on_the_batch(stage):
    landmarks, _ = known_faces(stage, 3, seed=1)
    full = stage({"mp_face_landmarks": landmarks, "has_face": np.ones(3, bool)})
    alone = stage({"mp_face_landmarks": landmarks[2:], "has_face": np.ones(1, bool)})
    for name in FACE_FIELDS:
        np.testing.assert_allclose(full[name][2:], alone[name], atol=1e-4, err_msg=name)


def test_bad_landmarks_fail_their_row_only(stage):
    landmarks, _ = known_faces(stage, 2, seed=2)
    landmarks[1, 10, 0] = np.inf
    out = stage({"mp_face_landmarks": landmarks, "has_face": np.ones(2, bool)})
    assert list(out[ERROR_STAGE]) == ["", "face"] and "NaN or infinite" in out[ERROR_REASON][1]
    np.testing.assert_array_equal(out["has_face"], [True, False])
    with pytest.raises(ValueError, match="mp_face_landmarks"):
        raising = FlameFitStage(stage.config, policy=ErrorPolicy.RAISE, context=stage.context)
        raising({"mp_face_landmarks": landmarks, "has_face": np.ones(2, bool)})
    with pytest.raises(KeyError, match="has_face"):
        stage({"mp_face_landmarks": landmarks})


def test_config_is_checked_and_the_stage_pickles(stage, kit_dir):
    with pytest.raises(ValueError, match="body_models"):
        FlameFitStage(FlameFitConfig()).layer  # no body-model folder in the context
    with pytest.raises(ValueError, match="landmark_sigma"):
        FlameFitConfig(landmark_sigma=0.0)
    with pytest.raises(ValueError, match="num_shape=400"):
        FlameFitStage(FlameFitConfig(num_shape=400), context=stage.context).layer
    stage.layer
    clone = pickle.loads(pickle.dumps(stage))
    assert "layer" not in clone.__dict__ and clone.config == stage.config and clone.context == stage.context


def test_grace_hopper_end_to_end(stage):
    """MediaPipe keypoints on a real portrait, then the face and hands stages."""
    from annotators.hands.mano_ik import ManoIkConfig, ManoIkStage
    from annotators.images import decode_image
    from annotators.keypoints import KeypointsConfig, KeypointsStage

    image = decode_image((EXAMPLES / "grace_hopper.jpg").read_bytes(), source="grace_hopper.jpg")
    images = np.empty(1, dtype=object)
    images[0] = image
    batch = {"image": images, "bbox_xyxy": GRACE_HOPPER_PERSON[None]}
    batch = KeypointsStage(KeypointsConfig(crop_scales=(1.25,), isolate="off"))(batch)  # one pose run: fast
    assert batch["has_face"][0]
    mesh = batch["mp_face_landmarks"][0]
    (x0, y0, x1, y1) = GRACE_HOPPER_FACE
    assert ((mesh[:, 0] > x0) & (mesh[:, 0] < x1) & (mesh[:, 1] > y0) & (mesh[:, 1] < y1)).all()
    assert np.ptp(mesh[:, 0]) > 0.6 * (x1 - x0) and np.ptp(mesh[:, 1]) > 0.6 * (y1 - y0)
    np.testing.assert_allclose(mesh[list(IRIS_CENTRES), :2], GRACE_HOPPER_EYES, atol=15.0)

    batch = ManoIkStage(ManoIkConfig(), context=stage.context)(batch)
    for side, (wrist, hand_root) in enumerate(((9, 91), (10, 112))):
        kp = batch["kp2d_wholebody"][0]
        if batch["has_hand_landmarks"][0, side]:  # a hand found by the hand model must be at the body's wrist
            forearm = np.linalg.norm(kp[wrist, :2] - kp[wrist - 2, :2])
            assert np.linalg.norm(kp[hand_root, :2] - kp[wrist, :2]) < 0.5 * forearm
        elif batch["has_hands"][0, side]:  # a pose-only hand (with this one-crop pose, BlazePose's guessed
            assert not kp[hand_root:hand_root + 21].any()  # right hand clears the gate): no keypoints made up
            assert np.abs(batch["mano_global_orient"][0, side]).max() > 0
        else:
            assert (batch["mano_hand_pose"][0, side] == 0).all() and batch["hand_scale"][0, side] == 1

    batch = stage(batch)
    assert batch["has_face"][0] and batch["conf_face"][0] > 0.5 and batch[ERROR_STAGE][0] == ""
    layer = stage.layer
    result = solve_face_fit(layer, torch.from_numpy(mesh.astype(np.float64))[None], stage.config)
    np.testing.assert_allclose(batch["flame_jaw_pose"][0], result.jaw_pose[0].numpy(), atol=1e-5)
    # the fitted FLAME landmarks reproject near MediaPipe's (the synthetic kit's face is not hers)
    error = (result.landmarks[0, :, :2].numpy() - mesh[layer.landmark_indices.numpy(), :2])
    assert np.sqrt((error ** 2).sum(1).mean()) < 0.03 * float(result.face_size[0])
    assert np.abs(error).max() < 0.1 * float(result.face_size[0])
