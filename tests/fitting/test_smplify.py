"""The SMPLify-X-style keypoint fit: layouts, objective pieces, and a fit to projections of known bodies."""

from __future__ import annotations

import pytest
import torch

from fitting.camera import default_intrinsics, project
from fitting.priors import sample_body_pose
from fitting.smplify import (
    KEYPOINT_LAYOUTS,
    MODEL_POINTS,
    KeypointFitter,
    SmplifyConfig,
    geman_mcclure,
    keypoint_data_term,
    keypoint_layout,
    reprojection_px,
    sigma_schedule,
)
from model.body_models import SMPLX


def test_layouts_name_real_points() -> None:
    for layout in KEYPOINT_LAYOUTS.values():
        kp, model = layout.index_arrays()
        assert kp.max() < layout.size and model.max() < len(MODEL_POINTS)
        assert len(set(kp.tolist())) == len(kp)
    coco = keypoint_layout("coco_wholebody")
    assert dict(coco.pairs)[5] == "left_shoulder" and dict(coco.pairs)[17] == "LBigToe"
    assert dict(keypoint_layout("spin24").pairs)[0] == "right_ankle"
    with pytest.raises(KeyError, match="known"):
        keypoint_layout("h36m17")


def test_objective_pieces() -> None:
    r2 = torch.tensor([0.0, 0.01, 100.0])
    cost = geman_mcclure(r2, 0.1)
    assert float(cost[0]) == 0.0 and float(cost[1]) == pytest.approx(0.005) and float(cost[2]) < 0.01  # saturates
    projected = torch.tensor([[[10.0, 0.0], [0.0, 0.0]]])
    observed = torch.zeros(1, 2, 2)
    weights = torch.tensor([[1.0, 0.0]])
    assert float(reprojection_px(projected, observed, weights)[0]) == pytest.approx(10.0)
    assert torch.isnan(reprojection_px(projected, observed, torch.zeros(1, 2)))[0]
    cost = keypoint_data_term(projected, observed, weights, torch.tensor([100.0]), 1.0)
    assert float(cost[0]) == pytest.approx(0.01 / 1.01)


def test_sigma_schedule_anneals_geometrically_to_the_final_scale() -> None:
    sigmas = sigma_schedule(SmplifyConfig(robust_sigma_start=0.4, robust_sigma=0.1, sigma_phases=3))
    assert sigmas == pytest.approx([0.4, 0.2, 0.1])
    assert sigma_schedule(SmplifyConfig(sigma_phases=1)) == [0.1]
    with pytest.raises(ValueError, match="robust_sigma_start"):
        SmplifyConfig(robust_sigma=0.5, robust_sigma_start=0.2)
    with pytest.raises(ValueError, match="sigma_phases"):
        SmplifyConfig(iterations=2, sigma_phases=3)


def test_fit_reduces_the_reprojection_error_of_known_bodies(kit_dir) -> None:
    fitter = KeypointFitter(SMPLX.from_dir(kit_dir), SmplifyConfig(orient_iterations=30, iterations=100))
    gen = torch.Generator().manual_seed(0)
    b = 3
    truth = {"global_orient": torch.tensor([3.0, 0.0, 0.0]) + 0.2 * torch.randn(b, 3, generator=gen),
             "body_pose": sample_body_pose(b, gen, scale=0.4), "betas": 0.5 * torch.randn(b, 10, generator=gen),
             "transl": torch.tensor([0.0, 0.2, 4.0]) + 0.2 * torch.randn(b, 3, generator=gen)}
    intrinsics = default_intrinsics(640, 480).expand(b, 3, 3)
    layout = keypoint_layout("coco_wholebody")
    kp_idx, model_idx = layout.index_arrays()
    with torch.no_grad():
        uv = project(fitter.points(truth)[:, model_idx], intrinsics)
    keypoints = torch.zeros(b, 133, 3)
    keypoints[:, kp_idx, :2] = uv
    keypoints[:, kp_idx, 2] = 1.0
    boxes = torch.cat([uv.amin(1), uv.amax(1)], 1)
    result = fitter.fit(keypoints, layout, intrinsics, boxes)
    assert result.params["body_pose"].shape == (b, 21, 3)
    assert torch.all(result.reprojection_px < result.initial_reprojection_px)
    assert float(result.reprojection_px.mean()) < 10.0
    with pytest.raises(ValueError, match="keypoints"):
        fitter.fit(keypoints[:, :17], layout, intrinsics, boxes)
