"""The body/pear stage: a regressor checkpoint in the annotation plan (registered, typed options, bodies in the
camera frame inside their boxes, one failure path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotators.base import STAGES, ErrorPolicy, StageConfigError, StageContext, build_config
from model.networks.pear import PEAR_TINY, PearRegressor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = PearRegressor(PEAR_TINY)
    path = tmp_path_factory.mktemp("pear") / "tiny.ckpt"
    torch.save({"state_dict": {f"regressor.{k}": v for k, v in net.state_dict().items()},
                "pearl": {"model": PEAR_TINY.to_dict(), "config": {}}}, path)
    return path


def _rows(n: int = 2) -> dict:
    rng = np.random.default_rng(0)
    images = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    kp = np.zeros((n, 133, 3), np.float32)
    kp[:, :17] = [160, 120, 0.9]
    return {"sample_key": np.array([f"s{i}" for i in range(n)], object), "image": images,
            "bbox_xyxy": np.array([[100, 40, 220, 230]] * n, np.float32), "image_width": np.full(n, 320),
            "image_height": np.full(n, 240), "kp2d_wholebody": kp}


def test_registered_as_a_body_backend_with_typed_options(checkpoint):
    cls = STAGES.get("body/pear")
    assert cls.name == "body" and not cls.default_backend and "checkpoint" in cls.weight_options
    with pytest.raises(StageConfigError, match="checkpoint"):
        build_config(cls.config_class, {}, "body/pear")
    with pytest.raises(StageConfigError, match="unknown option"):
        build_config(cls.config_class, {"checkpoint": str(checkpoint), "ckpt": 1}, "body/pear")


def test_bodies_land_in_their_boxes(checkpoint, kit_dir):
    from fitting.camera import project

    cls = STAGES.get("body/pear")
    stage = cls(build_config(cls.config_class, {"checkpoint": str(checkpoint), "device": "cpu"}, "body/pear"),
                ErrorPolicy.RAISE, context=StageContext(body_models=str(kit_dir)))
    out = stage(_rows())
    assert out["has_body"].all() and (out["error_stage"] == "").all()
    assert out["smplx_body_pose"].shape == (2, 21, 3) and np.isfinite(out["smplx_transl"]).all()
    assert np.allclose(out["cam_intrinsics"][0, 0, 0], np.hypot(320, 240))  # unknown camera: image diagonal
    # the predicted body's origin projects into the person box (camera conversion of the crop camera)
    uv = project(torch.as_tensor(out["smplx_transl"])[:, None], torch.as_tensor(out["cam_intrinsics"]))[:, 0]
    assert ((uv[:, 0] > 100) & (uv[:, 0] < 220) & (uv[:, 1] > 40) & (uv[:, 1] < 230)).all()
    assert np.isfinite(out["quality_reproj_px_body"]).all()
    assert np.allclose(out["smplx_left_hand_pose"].shape, (2, 15, 3)) and (out["smplx_leye_pose"] == 0).all()
    state = stage.__getstate__()
    assert "predictor" not in state and "ehm" not in state  # built again in each worker


def test_a_failing_batch_is_quarantined(checkpoint, kit_dir):
    cls = STAGES.get("body/pear")
    config = build_config(cls.config_class, {"checkpoint": str(checkpoint) + ".missing"}, "body/pear")
    rows = cls(config, ErrorPolicy.QUARANTINE, context=StageContext(body_models=str(kit_dir)))(_rows())
    assert (rows["error_stage"] == "body").all() and "does not exist" in rows["error_reason"][0]
    assert not rows["has_body"].any()
