"""keypoints/wholebody-onnx on tiny SimCC and YOLOX graphs with the official I/O signatures (the graphs' exporter
and the YOLOX graph: tests/annotators/conftest.py)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from schemas import keypoints as wb
from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy
from annotators.images import nms
from annotators.wholebody_onnx import (
    WholeBodyOnnxConfig,
    WholeBodyOnnxStage,
    box_center_scale,
    fix_aspect_ratio,
    simcc_decode,
)
from annotators.yolox import YoloxPersonDetector, letterbox

IN_W, IN_H, RATIO = 48, 64, 2  # a small stand-in for DWPose's 288x384 input
W, H = 200, 240


class ConstantSimcc(torch.nn.Module):
    """Every person: keypoint 1 at input px (0, 0), the others at the input centre; scores per part."""

    def __init__(self):
        super().__init__()
        sx, sy = torch.zeros(1, 133, IN_W * RATIO), torch.zeros(1, 133, IN_H * RATIO)
        score = torch.full((133,), 0.1)
        score[wb.BODY] = 0.9
        score[wb.LEFT_HAND] = 0.5
        score[wb.RIGHT_HAND.start : wb.RIGHT_HAND.start + 10] = 0.5  # 10 of 21: under half
        score[5] = -0.4
        score[7] = 1.7
        for k in range(133):
            bx, by = (0, 0) if k == 1 else (IN_W // 2 * RATIO, IN_H // 2 * RATIO)
            sx[0, k, bx] = score[k] if score[k] > 0 else 0.0
            sy[0, k, by] = score[k]
        sx[0, 5] = -0.4  # keypoint 5: every bin negative
        self.register_buffer("sx", sx)
        self.register_buffer("sy", sy)

    def forward(self, x):
        zero = 0.0 * x.mean()
        return self.sx.expand(x.shape[0], -1, -1) + zero, self.sy.expand(x.shape[0], -1, -1) + zero


class RedSpot(torch.nn.Module):
    """SimCC peaks at the brightest column/row of the red input channel (the same for every keypoint)."""

    def forward(self, x):
        red = x[:, 0]
        profiles = []
        for prof in (red.mean(1), red.mean(2)):  # [N, w], [N, h]
            prof = prof - prof.amin(-1, keepdim=True)
            profiles.append(torch.stack([prof, prof], -1).reshape(x.shape[0], 1, -1).expand(-1, 133, -1))
        return tuple(profiles)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, export_onnx, yolox_onnx) -> dict[str, str]:
    d = tmp_path_factory.mktemp("wholebody")
    export = export_onnx
    return {
        "constant": export(ConstantSimcc(), d / "constant.onnx", ["simcc_x", "simcc_y"], (IN_H, IN_W), True),
        "constant_b1": export(ConstantSimcc(), d / "constant_b1.onnx", ["simcc_x", "simcc_y"], (IN_H, IN_W), False),
        "spot": export(RedSpot(), d / "spot.onnx", ["simcc_x", "simcc_y"], (IN_H, IN_W), True),
        "yolox": yolox_onnx,
    }


def make_batch(boxes: list[list[float]], images: list[np.ndarray] | None = None, keys: list[str] | None = None) -> dict:
    col = np.empty(len(boxes), dtype=object)
    for i in range(len(boxes)):
        col[i] = images[i] if images is not None else np.zeros((H, W, 3), np.uint8)
    batch = {"image": col, "bbox_xyxy": np.array(boxes, np.float32)}
    if keys is not None:
        batch["sample_key"] = np.array(keys, dtype=object)
    return batch


def stage(pose: str, **options) -> WholeBodyOnnxStage:
    return WholeBodyOnnxStage(WholeBodyOnnxConfig(pose_model=pose, device="cpu", **options), ErrorPolicy.RAISE)


# --------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------


def test_simcc_decode_finds_the_peaks():
    sx, sy = np.zeros((2, 3, 20), np.float32), np.zeros((2, 3, 30), np.float32)
    sx[0, 1, 7], sy[0, 1, 12] = 0.8, 0.6
    sx[1, 2, 19], sy[1, 2, 0] = 0.3, 0.9
    xy, scores = simcc_decode(sx, sy, 2.0)
    np.testing.assert_allclose(xy[0, 1], [3.5, 6.0])
    np.testing.assert_allclose(xy[1, 2], [9.5, 0.0])
    np.testing.assert_allclose(scores[:, 1:], [[0.6, 0.0], [0.0, 0.3]])
    with pytest.raises(ValueError, match="must be"):
        simcc_decode(sx, sy[:, :2], 2.0)


def test_box_padding_and_aspect():
    center, scale = box_center_scale(np.array([60.0, 40.0, 140.0, 200.0]))
    np.testing.assert_allclose(center, [100.0, 120.0])
    np.testing.assert_allclose(scale, [100.0, 200.0])
    np.testing.assert_allclose(fix_aspect_ratio(scale, 0.75), [150.0, 200.0])  # too narrow: widened
    np.testing.assert_allclose(fix_aspect_ratio(np.array([300.0, 200.0]), 0.75), [300.0, 400.0])  # too wide


def test_letterbox_and_nms():
    canvas, r = letterbox(np.full((100, 50, 3), 7, np.uint8), (64, 64))
    assert r == pytest.approx(0.64) and canvas.shape == (64, 64, 3)
    assert (canvas[:64, :32] == 7).all() and (canvas[:, 32:] == 114).all()
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.4]), 0.45).tolist() == [1, 2]


# --------------------------------------------------------------------------------------------------
# the networks and the stage
# --------------------------------------------------------------------------------------------------


def test_registered_name():
    assert STAGES.get("keypoints/wholebody-onnx") is WholeBodyOnnxStage


@pytest.mark.parametrize("graph", ["constant", "constant_b1"])
def test_keypoints_map_back_through_the_crop(graphs, graph):
    # box (60, 40)-(140, 200) -> centre (100, 120), crop 150x200 image px onto 48x64 (0.32 input px per px)
    boxes = [[60.0, 40.0, 140.0, 200.0], [10.0, 10.0, 50.0, 90.0], [60.0, 40.0, 140.0, 200.0]]
    out = stage(graphs[graph], batch_size=2)(make_batch(boxes))
    kp = out["kp2d_wholebody"]
    assert kp.shape == (3, 133, 3) and kp.dtype == np.float32
    np.testing.assert_allclose(kp[0, 0, :2], [100.0, 120.0], atol=1e-4)
    np.testing.assert_allclose(kp[0, 1, :2], [100 - 24 / 0.32, 120 - 32 / 0.32], atol=1e-4)  # input (0, 0)
    np.testing.assert_allclose(kp[1, 0, :2], [30.0, 50.0], atol=1e-4)
    np.testing.assert_array_equal(kp[2], kp[0])
    assert kp[0, 5, 2] == 0.0 and kp[0, 7, 2] == 1.0  # scores clipped to [0, 1]
    np.testing.assert_allclose(kp[0, 8:17, 2], 0.9)
    assert out["has_kp_body"].all() and not out["has_face"].any()
    assert out["has_hands"].tolist() == [[True, False]] * 3
    np.testing.assert_allclose(out["conf_body"], 16 / 17)  # keypoint 5 is not visible
    np.testing.assert_allclose(out["conf_hands"][0], [1.0, 10 / 21], rtol=1e-6)


def test_the_crop_shows_the_boxed_region_in_rgb(graphs):
    yy, xx = np.mgrid[0:H, 0:W]
    blob = np.exp(-((xx + 0.5 - 90.0) ** 2 + (yy + 0.5 - 100.0) ** 2) / (2 * 6.0**2))
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = (255 * blob).astype(np.uint8)  # red only: a BGR mix-up would lose it
    out = stage(graphs["spot"])(make_batch([[60.0, 40.0, 140.0, 200.0]], [image]))
    np.testing.assert_allclose(out["kp2d_wholebody"][0, :, :2], np.tile([90.0, 100.0], (133, 1)), atol=1 / 0.32)


def test_detector_decodes_suppresses_and_thresholds(graphs):
    boxes, scores = YoloxPersonDetector(graphs["yolox"], device="cpu")(np.zeros((128, 128, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[24.0, 24.0, 56.0, 88.0]], atol=1e-4)  # letterbox ratio 0.5 undone
    np.testing.assert_allclose(scores, [0.72], atol=1e-6)


def test_detector_box_replaces_an_overlapping_row_box(graphs):
    image = np.zeros((128, 128, 3), np.uint8)
    rows = [[16.0, 20.0, 60.0, 92.0], [90.0, 90.0, 120.0, 120.0]]  # IoU 0.65 with the detection; none
    with_det = stage(graphs["constant"], detector_model=graphs["yolox"])(make_batch(rows, [image, image], ["a", "a"]))
    without = stage(graphs["constant"])(make_batch(rows, [image, image]))
    np.testing.assert_allclose(with_det["kp2d_wholebody"][0, 0, :2], [40.0, 56.0], atol=1e-4)  # detection centre
    np.testing.assert_allclose(without["kp2d_wholebody"][0, 0, :2], [38.0, 56.0], atol=1e-4)  # row box centre
    np.testing.assert_allclose(with_det["kp2d_wholebody"][1], without["kp2d_wholebody"][1])


def test_bad_rows_are_quarantined(graphs):
    batch = make_batch([[60.0, 40.0, 140.0, 200.0], [50.0, 50.0, 40.0, 90.0], [0.0, 0.0, 20.0, 20.0]])
    batch["image"][2] = np.zeros((H, W, 4), np.uint8)
    s = WholeBodyOnnxStage(WholeBodyOnnxConfig(pose_model=graphs["constant"], device="cpu"), ErrorPolicy.QUARANTINE)
    out = s(batch)
    assert out[ERROR_STAGE].tolist() == ["", "keypoints", "keypoints"]
    assert "non-empty box" in out[ERROR_REASON][1] and "RGB uint8" in out[ERROR_REASON][2]
    assert out["has_kp_body"].tolist() == [True, False, False]


def test_config_and_model_errors(graphs, tmp_path):
    with pytest.raises(ValueError, match="pose_model is empty"):
        WholeBodyOnnxConfig()
    with pytest.raises(ValueError, match="SimCC outputs"):
        stage(graphs["constant"], simcc_split_ratio=3.0)(make_batch([[60.0, 40.0, 140.0, 200.0]]))
    with pytest.raises(Exception, match="no such ONNX file"):
        stage(str(tmp_path / "missing.onnx"))(make_batch([[60.0, 40.0, 140.0, 200.0]]))


def test_models_check_reports_and_fails_on_configured_backends(graphs, tmp_path):
    import shutil

    from pipelines.commands import models

    (tmp_path / "dwpose").mkdir()
    shutil.copy(graphs["constant"], tmp_path / "dwpose" / "pose.onnx")
    results = models.check_models(tmp_path)
    status = {(r.file.backend, r.file.option): r.status for r in results}
    assert status[("keypoints/wholebody-onnx", "pose_model")] == models.OK
    assert status[("keypoints/wholebody-onnx", "detector_model")] == models.ABSENT  # optional
    assert status[("hands/hamer", "checkpoint")] == models.ABSENT
    assert models.failed_backends(results, []) == []
    assert models.failed_backends(results, ["face/teaser"]) == ["face/teaser"]
    lines = models.format_report(results, tmp_path)
    assert any(line.startswith("OK        dwpose/pose.onnx [keypoints/wholebody-onnx]: input 48x64") for line in lines)
    assert any(line.startswith("stage keypoints/wholebody-onnx: options") for line in lines)

    (tmp_path / "hamer").mkdir()
    (tmp_path / "hamer" / "hamer.ckpt").write_bytes(b"not a checkpoint")
    shutil.copy(graphs["constant"], tmp_path / "dwpose" / "yolox_l.onnx")  # not a detector
    results = models.check_models(tmp_path)
    status = {(r.file.backend, r.file.option): (r.status, r.detail) for r in results}
    assert status[("hands/hamer", "model_config")][0] == models.MISSING
    assert status[("hands/hamer", "checkpoint")][0] == models.UNCHECKED
    assert status[("keypoints/wholebody-onnx", "detector_model")][0] == models.INVALID
    assert models.failed_backends(results, []) == ["hands/hamer", "keypoints/wholebody-onnx"]
    parser = __import__("argparse").ArgumentParser()
    models.add_arguments(parser)
    assert models.run(parser.parse_args(["check", str(tmp_path)])) == 1
