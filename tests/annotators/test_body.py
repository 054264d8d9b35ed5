"""The ``body/auto`` stage on synthetic person rows: labelled rows transfer, unlabelled rows are fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import schemas
from annotators.base import STAGES, StageContext
from annotators.body import OUTPUT_FIELDS, BodyConfig, BodyStage
from fitting.camera import default_intrinsics, project
from fitting.priors import sample_body_pose
from fitting.smplify import keypoint_layout
from schemas.ehm_v1 import QualityFlag

W, H = 640, 480


@pytest.fixture(scope="module")
def stage(kit_dir, tmp_path_factory) -> BodyStage:
    config = BodyConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), device="cpu",
                        refine_vertices=256, fit_iterations=60, orient_iterations=20)
    return STAGES.get("body/auto")(config, context=StageContext(body_models=str(kit_dir)))


def _smpl_entry(box, seed: int, transl=None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    pose = torch.cat([sample_body_pose(1, gen, scale=0.4)[0], torch.zeros(2, 3)]).reshape(-1)
    smpl = {"global_orient": [3.0, 0.1, 0.0], "body_pose": pose.tolist(),
            "betas": (0.5 * torch.randn(10, generator=gen)).tolist(), "has_body_pose": 1, "has_betas": 1}
    if transl is not None:
        smpl["transl"] = transl
    return {"box": box, "smpl": smpl}


def _keypoints(stage: BodyStage, transl) -> np.ndarray:
    """kp2d_wholebody of a known SMPL-X body at ``transl`` (body + feet confident)."""
    fitter = stage.fitter
    gen = torch.Generator().manual_seed(11)
    params = {"global_orient": torch.tensor([[3.1, 0.0, 0.0]]), "body_pose": sample_body_pose(1, gen, scale=0.3),
              "betas": torch.zeros(1, 10), "transl": torch.tensor([transl])}
    kp_idx, model_idx = keypoint_layout("coco_wholebody").index_arrays()
    with torch.no_grad():
        uv = project(fitter.points(params)[:, model_idx], default_intrinsics(W, H)[None])[0]
    kp = np.zeros((133, 3), np.float32)
    kp[kp_idx, :2] = uv.numpy()
    kp[kp_idx, 2] = 0.9
    return kp


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    n = len(rows)
    batch = {
        "sample_key": np.array([f"s{i}" for i in range(n)], dtype=object),
        "labels": np.array([r.get("labels", "") for r in rows], dtype=object),
        "bbox_xyxy": np.array([r["box"] for r in rows], np.float32),
        "image_width": np.full(n, W, np.int32), "image_height": np.full(n, H, np.int32),
        "kp2d_wholebody": np.stack([r.get("kp", np.zeros((133, 3), np.float32)) for r in rows]),
        "has_kp_body": np.array([r.get("kp") is not None for r in rows]),
        "quality_flags": np.zeros(n, np.int32),
        "error_stage": np.array([r.get("error", "") for r in rows], dtype=object),
        "error_reason": np.array(["earlier" if r.get("error") else "" for r in rows], dtype=object),
    }
    return batch


@pytest.mark.slow
def test_labelled_unlabelled_bad_and_failed_rows(stage) -> None:
    box_a, box_b = [100.0, 50.0, 300.0, 450.0], [350.0, 40.0, 560.0, 470.0]
    # one image with two labelled persons, listed in the other order than the person rows
    labels = json.dumps([_smpl_entry(box_b, 1, transl=[0.3, 0.1, 5.0]), _smpl_entry(box_a, 2)])
    kp = _keypoints(stage, [0.0, 0.2, 4.0])
    rows = [
        {"box": box_a, "labels": labels, "kp": kp},  # labelled, no translation: estimated from its keypoints
        {"box": box_b, "labels": labels},  # labelled with a translation
        {"box": [50.0, 20.0, 600.0, 470.0], "kp": kp},  # no label: keypoint fit
        {"box": [10.0, 10.0, 90.0, 200.0]},  # nothing to fit: no body, no error
        {"box": box_a, "labels": json.dumps([{"box": box_a, "smpl": {"has_body_pose": 1, "global_orient": [0, 0],
                                                                     "body_pose": [0.0] * 69, "betas": [0.0] * 10}}])},
        {"box": box_a, "labels": labels, "error": "keypoints"},  # failed earlier: untouched
    ]
    out = stage(_batch(rows))
    assert out["has_body"].tolist() == [True, True, True, False, False, False]
    assert out["has_smpl_label"].tolist() == [True, True, False, False, False, False]
    assert out["error_stage"].tolist() == ["", "", "", "", "body", "keypoints"]
    assert "global_orient" in out["error_reason"][4]
    assert out["error_reason"][5] == "earlier"
    entry_a = json.loads(labels)[1]["smpl"]
    np.testing.assert_allclose(out["smpl_body_pose"][0].reshape(-1), entry_a["body_pose"], atol=1e-6)
    np.testing.assert_allclose(out["smpl_transl"][1], [0.3, 0.1, 5.0], atol=1e-6)
    assert 2.0 < out["smpl_transl"][0][2] < 12.0  # estimated depth in front of the camera
    assert np.all(out["quality_transfer_vertex_mm"][:2] < 15.0) and np.isnan(out["quality_transfer_vertex_mm"][2])
    assert out["quality_flags"][2] & QualityFlag.BODY_FROM_KEYPOINTS
    assert not out["quality_flags"][0] & QualityFlag.BODY_FROM_KEYPOINTS
    assert out["quality_reproj_px_body"][2] < 15.0 and np.isnan(out["quality_reproj_px_body"][1])
    np.testing.assert_allclose(out["cam_intrinsics"][0], default_intrinsics(W, H).numpy())
    for name in OUTPUT_FIELDS:  # rectangular columns of the schema's dtype and shape, placeholders included
        f = schemas.field(name)
        assert out[name].dtype == np.dtype(f.dtype) and out[name].shape[1:] == f.shape, name
    for i in range(3):
        record = {name: out[name][i] for name in OUTPUT_FIELDS}
        assert np.all(np.isfinite(record["smplx_body_pose"])) and record["smplx_betas"].dtype == np.float32


def test_label_intrinsics_are_used(stage) -> None:
    box = [100.0, 50.0, 300.0, 450.0]
    entry = _smpl_entry(box, 3) | {"cam_intrinsics": [[1000.0, 0.0, 320.0], [0.0, 1000.0, 240.0], [0.0, 0.0, 1.0]]}
    out = stage(_batch([{"box": box, "labels": json.dumps([entry])}]))
    assert out["cam_intrinsics"][0][0, 0] == 1000.0 and out["has_body"][0]


def test_the_stage_needs_its_columns_and_a_folder(kit_dir) -> None:
    with pytest.raises(KeyError, match="bbox_xyxy"):
        BodyStage(BodyConfig(device="cpu"), context=StageContext(body_models=str(kit_dir)))(
            {"sample_key": np.array(["a"], dtype=object)})
    blank = BodyStage(BodyConfig(device="cpu"))
    with pytest.raises(ValueError, match="body_models"):
        blank.fitter
