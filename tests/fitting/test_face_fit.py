"""FLAME fit to MediaPipe landmarks on the synthetic kit's FLAME: faces made by FLAME itself, then fitted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitting.face_fit import (
    IRIS_CENTRES,
    JAW_LIMITS,
    FaceFitOptions,
    FaceLandmarks,
    box_excess,
    pupil_vertices,
    solve_face_fit,
)
from model.assets.catalog import asset_file
from model.assets.loaders import (
    load_body_model,
    load_flame_dynamic_embedding,
    load_flame_static_embedding,
    load_mediapipe_embedding,
)
from model.body_models import FLAME
from model.metrics import similarity_align
from model.rotations import rotation_angle, rotvec_to_rotmat

F64 = torch.float64


@pytest.fixture(scope="module")
def flame(kit_dir):
    return FLAME.from_dir(kit_dir).to(F64)


def make_faces(layer: FaceLandmarks, n: int, seed: int, shape_scale: float = 0.5, eyelids: torch.Tensor | None = None):
    """MediaPipe-like landmarks ``[n, 478, 3]`` of known FLAME faces (only the embedded ids and the iris
    centres are set) under a weak-perspective camera, and the parameters that made them."""
    g = torch.Generator().manual_seed(seed)
    truth = {
        "shape": torch.randn(n, layer.num_shape, generator=g, dtype=F64) * shape_scale,
        "expression": torch.randn(n, layer.num_expression, generator=g, dtype=F64) * 0.7,
        "jaw": torch.stack([torch.rand(n, generator=g, dtype=F64) * 0.35, torch.zeros(n, dtype=F64),
                            torch.zeros(n, dtype=F64)], 1),
        "eyes": (torch.rand(n, 2, 3, generator=g, dtype=F64) - 0.5) * torch.tensor([0.5, 0.6, 0.0], dtype=F64),
    }
    landmarks, pupils = layer(truth["shape"], truth["expression"], truth["jaw"], truth["eyes"].reshape(n, 6), eyelids)
    flip = rotvec_to_rotmat(torch.tensor([math.pi, 0.0, 0.0], dtype=F64))  # FLAME's y up -> image y down
    rot = flip @ rotvec_to_rotmat((torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * 0.8)
    scale = 1500.0 + 1000.0 * torch.rand(n, 1, 1, generator=g, dtype=F64)
    shift = torch.tensor([320.0, 240.0, 5.0], dtype=F64)
    mediapipe = torch.zeros(n, 478, 3, dtype=F64)
    mediapipe[:, layer.landmark_indices] = scale * landmarks @ rot.transpose(1, 2) + shift
    mediapipe[:, list(IRIS_CENTRES)] = scale * pupils @ rot.transpose(1, 2) + shift
    return mediapipe, truth


def expression_error(layer: FaceLandmarks, fitted: torch.Tensor, made: torch.Tensor) -> torch.Tensor:
    """How far apart two expressions put the landmarks (neutral shape, closed jaw) once a similarity
    transform, which the camera absorbs, is taken out: RMS distance over the RMS of what ``made`` does, ``[N]``."""
    n = made.shape[0]
    zeros = made.new_zeros
    neutral, _ = layer(zeros(n, layer.num_shape), zeros(n, layer.num_expression), zeros(n, 3), zeros(n, 6))
    a, _ = layer(zeros(n, layer.num_shape), fitted, zeros(n, 3), zeros(n, 6))
    b, _ = layer(zeros(n, layer.num_shape), made, zeros(n, 3), zeros(n, 6))
    rot, scale, shift = similarity_align(a, b)
    aligned = scale[:, None, None] * a @ rot.transpose(1, 2) + shift[:, None]
    return (aligned - b).norm(dim=-1).square().mean(1).sqrt() / (b - neutral).norm(dim=-1).square().mean(1).sqrt()


def test_landmark_layer_equals_the_full_flame_forward(flame):
    layer = FaceLandmarks(flame, 300, 100)
    g = torch.Generator().manual_seed(0)
    params = {"betas": torch.randn(3, 300, generator=g, dtype=F64),
              "expression": torch.randn(3, 100, generator=g, dtype=F64),
              "jaw_pose": torch.randn(3, 3, generator=g, dtype=F64) * 0.3,
              "eye_pose": torch.randn(3, 6, generator=g, dtype=F64) * 0.3}
    full = flame(**params)
    landmarks, pupils = layer(params["betas"], params["expression"], params["jaw_pose"], params["eye_pose"])
    torch.testing.assert_close(landmarks, full.landmarks_mediapipe)
    torch.testing.assert_close(pupils, full.vertices[:, pupil_vertices(flame)])


def test_points_jacobian_is_exact(flame):
    layer = FaceLandmarks(flame, 8, 6)
    g = torch.Generator().manual_seed(6)
    coeffs = torch.randn(2, layer.num_coefficients, generator=g, dtype=F64)
    jaw, eyes = torch.randn(2, 3, generator=g, dtype=F64) * 0.3, torch.randn(2, 6, generator=g, dtype=F64) * 0.3
    rotmats = layer.rotations(jaw, eyes)
    automatic = torch.func.vmap(torch.func.jacfwd(lambda c, r: layer.points(c[None], r[None])[0]))(coeffs, rotmats)
    torch.testing.assert_close(layer.points_jacobian(rotmats), automatic)


def test_pupils_are_the_front_of_each_eyeball(flame):
    left, right = pupil_vertices(flame)
    eye_joints = flame.j_template[[FLAME.LEFT_EYE, FLAME.RIGHT_EYE]]
    assert flame.v_template[left, 0] > 0 > flame.v_template[right, 0]  # FLAME's x points to the person's left
    assert (flame.v_template[[left, right], 2] > eye_joints[:, 2]).all()  # in front of the eye centres


def test_box_excess():
    values = torch.tensor([[-0.3, 0.0, 0.5], [0.7, -0.3, 0.2]])
    torch.testing.assert_close(box_excess(values, JAW_LIMITS), torch.tensor([[0.2, 0.0, 0.3], [0.1, 0.1, 0.0]]))


def test_recovers_expression_jaw_and_eyes_of_a_known_face(flame):
    """Identity known (no shape fitted), weak expression prior: the jaw and eyes come back to a degree, and
    so does what the expression does to the landmarks (the default prior shrinks its weak components)."""
    layer = FaceLandmarks(flame, 0, 20)
    mediapipe, truth = make_faces(layer, 6, seed=1)
    result = solve_face_fit(layer, mediapipe, FaceFitOptions(expression_weight=0.01))
    assert rotation_angle(result.jaw_pose, truth["jaw"]).rad2deg().max() < 1.0
    assert rotation_angle(result.eye_pose.reshape(6, 2, 3), truth["eyes"]).rad2deg().max() < 2.0
    assert expression_error(layer, result.expression, truth["expression"]).max() < 0.05
    assert (result.rmse_px / result.face_size).max() < 0.002


def test_full_fit_reproduces_the_landmarks(flame):
    layer = FaceLandmarks(flame, 50, 50)
    mediapipe, truth = make_faces(layer, 4, seed=2)
    result = solve_face_fit(layer, mediapipe)
    assert (result.rmse_px / result.face_size).max() < 0.005
    assert rotation_angle(result.jaw_pose, truth["jaw"]).rad2deg().max() < 2.0
    torch.testing.assert_close(result.landmarks[..., :2], mediapipe[:, layer.landmark_indices, :2],
                               atol=0.02 * float(result.face_size.min()), rtol=0)
    assert result.shape.shape == (4, 50) and result.eyelids.abs().max() == 0  # the kit has no eyelids


def test_noisy_landmarks(flame):
    """Noise of 0.5 % of the face size: the fit stays near the clean face (closer than the noisy input)."""
    layer = FaceLandmarks(flame, 50, 50)
    clean, truth = make_faces(layer, 4, seed=3)
    ids = layer.landmark_indices
    size = (clean[:, ids, :2].amax(1) - clean[:, ids, :2].amin(1)).amax(-1)
    noisy = clean.clone()
    noise = torch.randn(4, 478, 3, generator=torch.Generator().manual_seed(4), dtype=F64) * 0.005 * size[:, None, None]
    noisy[:, ids] += noise[:, ids]
    result = solve_face_fit(layer, noisy)
    to_clean = (result.landmarks[..., :2] - clean[:, ids, :2]).norm(dim=-1).mean(1)
    assert (to_clean < noise[:, ids, :2].norm(dim=-1).mean(1)).all()
    assert rotation_angle(result.jaw_pose, truth["jaw"]).rad2deg().max() < 4.0


def test_eyelids_are_fitted_when_the_model_has_them(kit_dir):
    data = load_body_model(asset_file(kit_dir, "flame"), "flame")
    faces = len(data.faces)
    loaders = ((load_flame_static_embedding, "flame_static_embedding"),
               (load_flame_dynamic_embedding, "flame_dynamic_embedding"),
               (load_mediapipe_embedding, "mediapipe_embedding"))
    embeddings = [load(asset_file(kit_dir, key), faces) for load, key in loaders]
    # eyelid blend shapes: the skin in front of and above each eye moves down by up to 6 mm
    eyes = data.j_regressor[[FLAME.LEFT_EYE, FLAME.RIGHT_EYE]] @ data.v_template
    near = [((data.v_template - eye) ** 2).sum(1) ** 0.5 for eye in eyes]
    shapes = []
    for eye, dist in zip(eyes, near):
        above_front = (data.v_template[:, 1] > eye[1]) & (data.v_template[:, 2] > eye[2])
        weight = (1.0 - dist / 0.025).clip(0.0, 1.0) * above_front
        shapes.append(weight[:, None] * [0.0, -0.006, 0.0])
    flame = FLAME(data, *embeddings, eyelids=np.stack(shapes)).to(F64)
    layer = FaceLandmarks(flame, 0, 10)
    assert layer.has_eyelids
    lids = torch.tensor([[0.2, 0.8], [0.6, 0.1], [0.0, 0.4]], dtype=F64)
    mediapipe, _ = make_faces(layer, 3, seed=5, eyelids=lids)
    result = solve_face_fit(layer, mediapipe, FaceFitOptions(eyelid_weight=0.01))
    torch.testing.assert_close(result.eyelids, lids, atol=0.08, rtol=0)


def test_bad_input_is_refused(flame):
    layer = FaceLandmarks(flame, 10, 10)
    with pytest.raises(ValueError, match=r"mediapipe: expected face landmarks \[N, 478, 3\]"):
        solve_face_fit(layer, torch.zeros(1, 468, 3, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        solve_face_fit(layer, torch.full((1, 478, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="zero face size"):
        solve_face_fit(layer, torch.zeros(1, 478, 3, dtype=F64))
    with pytest.raises(ValueError, match="num_shape=301"):
        FaceLandmarks(flame, 301, 10)
    with pytest.raises(ValueError, match="eyelids"):
        layer(*(torch.zeros(1, k, dtype=F64) for k in (10, 10, 3, 6)), torch.zeros(1, 2, dtype=F64))
    with pytest.raises(ValueError, match="landmark_sigma"):
        FaceFitOptions(landmark_sigma=0.0)
