"""Batched refinement on the synthetic kit: errors fall, gates, identity sharing, the silhouette term,
determinism, solvers, bad input. (The cheap objective models are tested against the full ones in
``tests/model/test_ehm_rigid.py`` and ``tests/model/test_partial.py``.)"""

from __future__ import annotations

import math

import pytest
import torch

from fitting.camera import project
from fitting.face_fit import IRIS_CENTRES
from fitting.objectives import ehm_wholebody_points
from fitting.priors import sample_body_pose
from fitting.refine import RefineInputs, Refiner
from fitting.refine_config import RefineConfig, SolverConfig
from model.rasterizer import hard_silhouette
from model.rotations import rotmat_to_rotvec, rotvec_to_rotmat
from schemas.ehm_v1 import QualityFlag


@pytest.fixture(scope="module")
def refiner(kit_dir) -> Refiner:
    return Refiner.from_dir(kit_dir, RefineConfig(flame={"iterations": 20}, ehm={"iterations": 25}))


def _like(refiner: Refiner, **config) -> Refiner:
    """A refiner on the same (already loaded) models with another config."""
    return Refiner(refiner.ehm, refiner.parts.smplx, refiner.mean_hand_pose, RefineConfig(**config))


@pytest.fixture(scope="module")
def quick(refiner) -> Refiner:
    return _like(refiner, flame={"iterations": 5}, ehm={"iterations": 5})


def _truth(refiner: Refiner, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = {name: torch.zeros(n, *spec.shape) + spec.fill for name, spec in refiner.ehm.param_specs().items()
              if name != "flame_eyelids"}
    params["betas"] = torch.randn(n, 10, generator=gen) * 0.5
    params["global_orient"] = torch.tensor([math.pi, 0.0, 0.0]).expand(n, 3).clone()
    params["body_pose"] = sample_body_pose(n, gen, scale=0.4)
    params["mano_hand_pose"] = refiner.mean_hand_pose.expand(n, 2, 15, 3).clone()
    params["flame_expression"][:, :10] = torch.randn(n, 10, generator=gen) * 0.5
    with torch.no_grad():
        pelvis = refiner.ehm(**params).joints[:, 0]
    params["transl"] = torch.tensor([0.0, 0.0, 3.0]) - pelvis
    intr = torch.tensor([[1000.0, 0.0, 500.0], [0.0, 1000.0, 500.0], [0.0, 0.0, 1.0]]).expand(n, 3, 3).clone()
    return params, intr


def _inputs(refiner: Refiner, truth: dict[str, torch.Tensor], intr: torch.Tensor, seed: int) -> RefineInputs:
    """Noise-free observations of ``truth``; the initial body and face perturbed."""
    n = intr.shape[0]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = refiner.ehm(**truth)
        kp = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), intr)
        mp = torch.zeros(n, 478, 3)
        mp[:, refiner.ehm.flame.mediapipe_landmark_indices, :2] = project(out.landmarks_mediapipe, intr)
        mp[:, list(IRIS_CENTRES), :2] = project(out.vertices[:, refiner.ehm.head_vertex_ids[refiner.pupils]], intr)
        hands = rotmat_to_rotvec(out.joint_rotations[:, [20, 21]])
    init = {k: v.clone() for k, v in truth.items()}
    init["body_pose"] = truth["body_pose"] + torch.randn(n, 21, 3, generator=gen) * 0.1
    init["transl"] = truth["transl"] + torch.tensor([0.03, -0.03, 0.1])
    init["flame_expression"] = truth["flame_expression"] + torch.randn(n, 100, generator=gen) * 0.3
    lo, hi = kp.min(1).values, kp.max(1).values
    return RefineInputs(
        params=init, mano_global_orient=hands, intrinsics=intr, bbox_xyxy=torch.cat([lo, hi], -1),
        kp2d=torch.cat([kp, torch.full((n, 133, 1), 0.9)], -1), mp_face=mp, has_face=torch.ones(n, dtype=torch.bool),
        conf_face=torch.full((n,), 0.9), has_hands=torch.ones(n, 2, dtype=torch.bool), conf_hands=torch.full((n, 2), 0.9),
    )


@pytest.fixture(scope="module")
def problem(refiner):
    truth, intr = _truth(refiner, 3, seed=1)
    return truth, _inputs(refiner, truth, intr, seed=2)


def _errors(refiner: Refiner, params, truth, inputs) -> tuple[float, float]:
    """Body vertex error (mm, pelvis-aligned) and keypoint reprojection error (px)."""
    with torch.no_grad():
        out, ref = refiner.ehm(**params), refiner.ehm(**truth)
        uv = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), inputs.intrinsics)
    pve = ((out.vertices - out.joints[:, :1]) - (ref.vertices - ref.joints[:, :1])).norm(dim=-1).mean()
    return 1000 * float(pve), float((uv - inputs.kp2d[..., :2]).norm(dim=-1).mean())


def test_refinement_lowers_body_and_reprojection_error(refiner, problem):
    truth, inputs = problem
    result = refiner.refine(inputs)
    pve0, px0 = _errors(refiner, inputs.params, truth, inputs)
    pve1, px1 = _errors(refiner, result.params, truth, inputs)
    assert pve1 < 0.8 * pve0
    assert px1 < 0.5 * px0
    assert result.loss.shape == (3,) and torch.isfinite(result.loss).all()
    assert {"flame/landmarks68", "ehm/keypoints_2d", "ehm/head_vertices", "ehm/hand_vertices"} <= set(result.terms)
    assert result.hands_integrated.all() and result.face_fitted.all()
    # the hand term holds the hands near the hand result's orientation
    free = _like(refiner, flame={"iterations": 20}, ehm={"iterations": 25, "hand_vertices": 0.0}).refine(inputs)
    held = _hand_angle(result.mano_global_orient, inputs.mano_global_orient).mean()
    assert held < 0.75 * _hand_angle(free.mano_global_orient, inputs.mano_global_orient).mean()


def _hand_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return rotmat_to_rotvec(rotvec_to_rotmat(a).transpose(-1, -2) @ rotvec_to_rotmat(b)).norm(dim=-1)


def test_wrist_integration_pastes_the_hand_orientation(refiner, problem):
    _, inputs = problem
    result = _like(refiner, flame={"iterations": 0}, ehm={"iterations": 0}).refine(inputs)
    assert _hand_angle(result.mano_global_orient, inputs.mano_global_orient).max() < 1e-4
    assert result.wrist_twist.abs().max() < math.pi / 2 and result.hands_integrated.all()


def test_refinement_is_deterministic(quick, problem):
    _, inputs = problem
    a, b = quick.refine(inputs), quick.refine(inputs)
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name]), name


def test_gates_set_flags_and_mean_hand_pose(quick, problem):
    _, inputs = problem
    inputs = RefineInputs(**{**inputs.__dict__, "conf_hands": torch.tensor([[0.9, 0.9], [0.1, 0.9], [0.9, 0.9]]),
                             "has_face": torch.tensor([True, True, False])})
    result = quick.refine(inputs)
    flags = result.flags.tolist()
    assert flags[1] & QualityFlag.LEFT_HAND_GATED and not flags[0] & QualityFlag.LEFT_HAND_GATED
    assert flags[2] & QualityFlag.FACE_GATED and not flags[1] & QualityFlag.FACE_GATED
    assert torch.allclose(result.params["mano_hand_pose"][1, 0], quick.mean_hand_pose[0])
    assert torch.equal(result.params["flame_expression"][2], torch.zeros(100))
    assert result.terms["flame/landmarks68"][2] == 0.0


def test_identity_is_shared_within_a_track(quick, problem):
    _, inputs = problem
    shared = RefineInputs(**{**inputs.__dict__, "identity": torch.tensor([7, 7, 3])})
    result = quick.refine(shared)
    for name in ("betas", "flame_shape", "head_scale", "hand_scale"):
        value = result.params[name]
        assert torch.equal(value[0], value[1]), name
    assert not torch.equal(result.params["betas"][0], result.params["betas"][2])


def _rows(inputs: RefineInputs, rows: slice) -> RefineInputs:
    """The samples ``rows`` of a batch."""
    picked = {k: v if v is None else v[rows] for k, v in inputs.__dict__.items() if k != "params"}
    return RefineInputs(params={k: v[rows] for k, v in inputs.params.items()}, **picked)


@pytest.mark.slow
def test_silhouette_term_pulls_the_body_into_the_person_mask(refiner, problem):
    """Started at the true body and driven by the silhouette alone, the refinement moves the body towards a
    person mask drawn 10 cm to its left, or to its right: the mask decides the result."""
    truth, inputs = problem
    truth, inputs = {k: v[:2] for k, v in truth.items()}, _rows(inputs, slice(0, 2))  # a soft render per step
    size = 16
    lo, hi = inputs.bbox_xyxy[:, :2], inputs.bbox_xyxy[:, 2:]
    side = (hi - lo).max(-1, keepdim=True).values
    box = torch.cat([(lo + hi) / 2 - side * 0.6, (lo + hi) / 2 + side * 0.6], -1)

    def mask_of(shift_x: float) -> torch.Tensor:
        with torch.no_grad():
            verts = refiner.ehm(**{**truth, "transl": truth["transl"] + torch.tensor([shift_x, 0.0, 0.0])}).vertices
        grid = (project(verts, inputs.intrinsics) - box[:, None, :2]) / (box[:, None, 2:] - box[:, None, :2]) * size
        return hard_silhouette(grid, refiner.ehm.faces, size, size).float()

    at_truth = RefineInputs(**{**inputs.__dict__, "params": {k: v.clone() for k, v in truth.items()}})
    only = {"keypoints_2d": 0.0, "head_vertices": 0.0, "hand_vertices": 0.0, "depth_to_init": 0.0, "silhouette": 1.0}
    on = _like(refiner, flame={"iterations": 0}, ehm={"iterations": 6, **only})
    start = _like(refiner, flame={"iterations": 0}, ehm={"iterations": 0, **only})
    moved = {}
    for shift in (-0.1, 0.1):
        masked = RefineInputs(**{**at_truth.__dict__, "person_mask": mask_of(shift), "mask_box": box})
        result = on.refine(masked)
        moved[shift] = result.params["transl"][:, 0] - truth["transl"][:, 0]
        assert (result.terms["ehm/silhouette"] < 0.8 * start.refine(masked).terms["ehm/silhouette"]).all()
    assert (moved[-0.1] < -0.01).all() and (moved[0.1] > 0.01).all(), moved
    off = _like(refiner, flame={"iterations": 0}, ehm={"iterations": 0}).refine(masked)  # weight 0: no term
    assert "ehm/silhouette" not in off.terms


@pytest.mark.parametrize("solver", ["adamw", "lbfgs"])
def test_other_solvers_lower_the_objective(refiner, problem, solver):
    _, inputs = problem
    base = _like(refiner, flame={"iterations": 0}, ehm={"iterations": 0})
    tuned = _like(refiner, flame={"iterations": 4}, ehm={"iterations": 4},
                  solver=SolverConfig(name=solver, weight_decay=0.01))
    assert (tuned.refine(inputs).loss < base.refine(inputs).loss).all()


def test_bad_input_and_config(quick, problem):
    _, inputs = problem
    with pytest.raises(ValueError, match="kp2d"):
        quick.refine(RefineInputs(**{**inputs.__dict__, "kp2d": inputs.kp2d[:, :17]}))
    with pytest.raises(ValueError, match="params"):
        quick.refine(RefineInputs(**{**inputs.__dict__, "params": {"betas": inputs.params["betas"]}}))
    with pytest.raises(ValueError, match="solver"):
        SolverConfig(name="sgd")
    with pytest.raises(ValueError, match="unknown block"):
        RefineConfig(ehm={"steps": {"elbow": 0.1}})
    with pytest.raises(ValueError, match="wrist"):
        RefineConfig(wrist="glue")
