"""hands/hamer and hands/hamer-onnx on a tiny HaMeR with the official key layout and I/O signature."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas import keypoints as wb
from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy
from annotators.keypoints import hand_roi_from_pose
from annotators.hands.hamer import (
    HamerOnnxStage,
    HamerOnnxStageConfig,
    HamerStage,
    HamerStageConfig,
    crop_patch,
    crop_square,
    hand_box,
)
from model.rotations import mirror_rotvec
from model.checkpoints import CheckpointError
from model.networks.hamer import HAMER_OUTPUTS, IMAGENET_MEAN, IMAGENET_STD, HamerNetwork, hamer_config_from_yaml
from model.networks.vit import ViTConfig
from model.rotations import rotmat_to_rotvec, rotvec_to_rotmat

TINY_BACKBONE = {"embed_dim": 16, "depth": 1, "num_heads": 2}
MODEL_CONFIG = """\
MODEL:
  IMAGE_SIZE: 256
  BACKBONE: {TYPE: vit}
  MANO_HEAD:
    TYPE: transformer_decoder
    TRANSFORMER_DECODER: {depth: 1, heads: 2, mlp_dim: 8, dim_head: 4, norm: layer, context_dim: 16, dim: 16}
"""
W, H = 200, 160


@pytest.fixture(scope="module")
def tiny_hamer(tmp_path_factory) -> tuple[Path, HamerNetwork]:
    """hamer.ckpt (plain state dict, official key names) + model_config.yaml, and the network itself."""
    folder = tmp_path_factory.mktemp("hamer")
    torch.manual_seed(0)
    network = HamerNetwork(hamer_config_from_yaml(MODEL_CONFIG, "tiny", ViTConfig(**TINY_BACKBONE))).eval()
    with torch.no_grad():
        network.mano_head.init_hand_pose.normal_()
        network.mano_head.init_betas.normal_()
    state = dict(network.state_dict())
    state["mano.J_regressor"] = torch.zeros(16, 778)  # official keys ignored on purpose
    state["initialized"] = torch.tensor(True)
    torch.save(state, folder / "hamer.ckpt")
    (folder / "model_config.yaml").write_text(MODEL_CONFIG)
    return folder, network


def export_onnx(network: HamerNetwork, path: Path, dynamic: bool) -> Path:
    """The network with [0, 1] RGB input (normalisation inside the graph), as GUAVA's tracker feeds it."""

    class UnitInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

        def forward(self, img):
            out = self.net((img - self.mean) / self.std)
            return tuple(out[k] for k in HAMER_OUTPUTS)

    axes = {name: {0: "batch"} for name in ("img", *HAMER_OUTPUTS)} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(UnitInput().eval(), (torch.rand(1, 3, 256, 256),), str(path), input_names=["img"],
                          output_names=list(HAMER_OUTPUTS), dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def hand_keypoints(center: tuple[float, float], radius: float, conf: float = 0.9) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 21, endpoint=False)
    pts = np.stack([center[0] + radius * np.cos(angles), center[1] + 0.7 * radius * np.sin(angles)], axis=1)
    return np.concatenate([pts, np.full((21, 1), conf)], axis=1)


def person(seed: int, left=(60.0, 70.0), right=(140.0, 90.0), left_conf: float = 0.9) -> dict:
    rng = np.random.default_rng(seed)
    image = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    kp = np.zeros((wb.NUM_KEYPOINTS, 3), np.float32)
    kp[wb.LEFT_HAND] = hand_keypoints(left, 12.0 + seed, left_conf)
    kp[wb.RIGHT_HAND] = hand_keypoints(right, 15.0, 0.8)
    return {"image": image, "kp2d_wholebody": kp}


def make_batch(rows: list[dict]) -> dict:
    images = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        images[i] = r["image"]
    return {"image": images, "kp2d_wholebody": np.stack([r["kp2d_wholebody"] for r in rows])}


def stage(folder: Path, policy: ErrorPolicy = ErrorPolicy.RAISE, **options) -> HamerStage:
    config = HamerStageConfig(checkpoint=str(folder / "hamer.ckpt"), backbone=TINY_BACKBONE, device="cpu", **options)
    return HamerStage(config, policy)


# --------------------------------------------------------------------------------------------------
# boxes, crops, mirroring
# --------------------------------------------------------------------------------------------------


def test_hand_box_from_confident_keypoints_only():
    kp = hand_keypoints((50.0, 40.0), 10.0)
    kp[:3, 2] = 0.2  # ignored
    kp[0, :2] = (500.0, 500.0)
    box = hand_box(kp, 0.5, 4)
    np.testing.assert_allclose(box, [*kp[3:, :2].min(axis=0), *kp[3:, :2].max(axis=0)])
    kp[4:, 2] = 0.5  # not *above* 0.5: only one confident keypoint left
    assert hand_box(kp, 0.5, 4) is None


def test_crop_square_expands_to_the_vit_aspect():
    # 10x10 box, rescaled 2x -> 20x20, expanded to 192:256 -> 20x26.67, side = 26.67
    center, side = crop_square(np.array([0.0, 0.0, 10.0, 10.0]), 2.0, (192, 256))
    np.testing.assert_allclose(center, [5.0, 5.0])
    assert side == pytest.approx(20 * 256 / 192)
    assert crop_square(np.array([0.0, 0.0, 10.0, 40.0]), 1.0, (192, 256))[1] == pytest.approx(40.0)  # tall: as is
    assert crop_square(np.array([0.0, 0.0, 40.0, 10.0]), 1.0, (192, 256))[1] == pytest.approx(40 * 256 / 192)
    assert crop_square(np.array([0.0, 0.0, 10.0, 10.0]), 2.0, None)[1] == pytest.approx(20.0)


def test_crop_patch_centres_the_box_centre():
    image = np.zeros((60, 80, 3), np.uint8)
    image[40, 30] = 255  # pixel (30, 40) spans [30, 31] x [40, 41]: centre (30.5, 40.5)
    patch = crop_patch(image, np.array([30.5, 40.5]), 16.0, 16)
    assert patch[8, 8].tolist() == [255, 255, 255] and patch.sum() == 3 * 255


def test_mirror_rotvec_is_the_rotation_seen_in_a_mirror():
    rotvec = torch.tensor([[0.3, -1.1, 0.7], [2.0, 0.4, -0.5]], dtype=torch.float64)
    m = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    mirrored = rotmat_to_rotvec(m @ rotvec_to_rotmat(rotvec) @ m).numpy()
    np.testing.assert_allclose(mirror_rotvec(rotvec.numpy()), mirrored, atol=1e-12)
    np.testing.assert_allclose(mirror_rotvec(mirror_rotvec(rotvec.numpy())), rotvec.numpy())


# --------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------


def test_registered_names():
    assert STAGES.get("hands/hamer") is HamerStage and STAGES.get("hands/hamer-onnx") is HamerOnnxStage


def test_outputs_and_batches_of_any_size_agree_per_sample(tiny_hamer):
    folder, _ = tiny_hamer
    rows = [person(i) for i in range(5)]
    out = stage(folder, batch_size=3)(make_batch(rows))
    assert out["mano_global_orient"].shape == (5, 2, 3) and out["mano_global_orient"].dtype == np.float32
    assert out["mano_hand_pose"].shape == (5, 2, 15, 3) and out["mano_betas"].shape == (5, 2, 10)
    assert out["has_hands"].dtype == bool and out["has_hands"].all()
    np.testing.assert_allclose(out["conf_hands"], np.tile([0.9, 0.8], (5, 1)), rtol=1e-6)  # mean confidence
    angles = np.linalg.norm(out["mano_hand_pose"], axis=-1)
    assert angles.max() > 0 and angles.max() <= np.pi + 1e-5
    single = stage(folder, batch_size=1)
    for i, row in enumerate(rows):
        one = single(make_batch([row]))
        for key in ("mano_global_orient", "mano_hand_pose", "mano_betas"):
            np.testing.assert_allclose(one[key][0], out[key][i], atol=2e-5, err_msg=key)
    assert not np.allclose(out["mano_betas"][0], out["mano_betas"][1])  # different crops, different hands


def test_left_hand_is_the_mirror_of_the_right_hand_of_the_mirrored_image(tiny_hamer):
    folder, _ = tiny_hamer
    row = person(7)
    mirrored = {"image": np.ascontiguousarray(row["image"][:, ::-1]), "kp2d_wholebody": row["kp2d_wholebody"].copy()}
    kp = mirrored["kp2d_wholebody"]
    kp[:, 0] = W - kp[:, 0]  # continuous px mirror
    kp[wb.LEFT_HAND], kp[wb.RIGHT_HAND] = kp[wb.RIGHT_HAND].copy(), kp[wb.LEFT_HAND].copy()
    s = stage(folder)
    a, b = s(make_batch([row])), s(make_batch([mirrored]))
    for side in (0, 1):
        for key in ("mano_hand_pose", "mano_global_orient"):
            np.testing.assert_allclose(a[key][0, side], mirror_rotvec(b[key][0, 1 - side]), atol=1e-5, err_msg=key)
        np.testing.assert_allclose(a["mano_betas"][0, side], b["mano_betas"][0, 1 - side], atol=1e-6)


def test_hands_without_enough_confident_keypoints_are_skipped(tiny_hamer):
    folder, _ = tiny_hamer
    out = stage(folder)(make_batch([person(0, left_conf=0.3)]))
    assert out["has_hands"][0].tolist() == [False, True]
    np.testing.assert_allclose(out["conf_hands"][0], [0.0, 0.8], rtol=1e-6)
    assert not out["mano_hand_pose"][0, 0].any() and out["mano_hand_pose"][0, 1].any()


def test_pose_only_hands_are_cropped_from_the_pose_hand_region(tiny_hamer):
    folder, _ = tiny_hamer
    row = person(0, left_conf=0.3)  # the left hand has no usable keypoints
    batch = make_batch([row])
    pose = np.zeros((1, 33, 4), np.float32)
    pose[0, :, 3] = 0.9
    pose[0, [13, 15, 17, 19], :2] = [[60.0, 120.0], [60.0, 80.0], [55.0, 70.0], [65.0, 70.0]]  # elbow, wrist, knuckles
    batch |= {"mp_pose_landmarks": pose, "has_hands": np.array([[True, True]]),
              "conf_hands": np.array([[0.6, 0.8]], np.float32)}
    out = stage(folder)(dict(batch))
    assert out["has_hands"][0].tolist() == [True, True]
    np.testing.assert_allclose(out["conf_hands"][0], [0.6, 0.8], rtol=1e-6)  # the keypoints stage's for that hand
    assert out["mano_hand_pose"][0, 0].any()
    # the crop is the keypoints stage's hand region: the same hand given as keypoints filling that box agrees
    s = stage(folder)
    box = s._pose_box(pose[0].astype(np.float64), 0)
    roi = hand_roi_from_pose(pose[0, :, :2].astype(np.float64), 0, 4.0, 0.8)
    assert (box[2] - box[0]) * 2.0 == pytest.approx(roi.size) and (box[:2] + box[2:]) / 2 == pytest.approx([roi.cx, roi.cy])
    # without pose boxes, or without the pose column, the hand is skipped as before
    off = stage(folder, pose_boxes=False)(dict(batch))
    assert off["has_hands"][0].tolist() == [False, True]
    plain = stage(folder)(make_batch([row]))
    assert plain["has_hands"][0].tolist() == [False, True]


def test_bad_rows_are_quarantined_and_failed_rows_skipped(tiny_hamer):
    folder, _ = tiny_hamer
    batch = make_batch([person(0), person(1), person(2)])
    batch["image"][1] = np.zeros((H, W), np.uint8)  # not RGB
    batch[ERROR_STAGE] = np.array(["", "", "keypoints"], dtype=object)
    batch[ERROR_REASON] = np.array(["", "", "earlier"], dtype=object)
    out = stage(folder, policy=ErrorPolicy.QUARANTINE)(batch)
    assert out[ERROR_STAGE].tolist() == ["", "hands", "keypoints"]
    assert "column 'image' must hold RGB uint8" in out[ERROR_REASON][1]
    assert out["has_hands"].tolist() == [[True, True], [False, False], [False, False]]


def test_config_needs_a_checkpoint_and_a_valid_one(tmp_path):
    with pytest.raises(ValueError, match="HamerStageConfig.checkpoint is empty"):
        HamerStageConfig()
    torch.save({"backbone.pos_embed": torch.zeros(1)}, tmp_path / "hamer.ckpt")
    (tmp_path / "model_config.yaml").write_text(MODEL_CONFIG)
    with pytest.raises(CheckpointError, match="missing: backbone.patch_embed.proj.weight"):
        stage(tmp_path)(make_batch([person(0)]))


# --------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_export_gives_the_same_hands(tiny_hamer, tmp_path, dynamic):
    folder, network = tiny_hamer
    path = export_onnx(network, tmp_path / "hamer.onnx", dynamic)  # fixed export: batch 1, run one by one
    batch = make_batch([person(i) for i in range(3)])
    expected = stage(folder)(make_batch([person(i) for i in range(3)]))
    got = HamerOnnxStage(HamerOnnxStageConfig(onnx=str(path), device="cpu", batch_size=4), ErrorPolicy.RAISE)(batch)
    for key in ("mano_global_orient", "mano_hand_pose", "mano_betas", "has_hands"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-4, err_msg=key)


def test_onnx_without_the_mano_outputs_is_an_error(tmp_path):
    class OnlyCam(torch.nn.Module):
        def forward(self, img):
            return img.mean((2, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(OnlyCam(), (torch.rand(1, 3, 256, 256),), str(tmp_path / "x.onnx"), input_names=["img"],
                          output_names=["pred_cam"], dynamo=False)
    s = HamerOnnxStage(HamerOnnxStageConfig(onnx=str(tmp_path / "x.onnx"), device="cpu"), ErrorPolicy.RAISE)
    with pytest.raises(CheckpointError, match=r"missing outputs \['global_orient', 'hand_pose', 'betas'\]"):
        s(make_batch([person(0)]))


def test_models_check_validates_hamer_files_as_official(tiny_hamer, tmp_path):
    from pipelines.commands import models

    folder, network = tiny_hamer
    (tmp_path / "hamer").mkdir()
    (tmp_path / "hamer" / "model_config.yaml").write_text(MODEL_CONFIG)
    (tmp_path / "hamer" / "hamer.ckpt").write_bytes((folder / "hamer.ckpt").read_bytes())
    export_onnx(network, tmp_path / "hamer" / "hamer.onnx", dynamic=True)
    results = {(r.file.backend, r.file.option): r for r in models.check_models(tmp_path)}
    assert results[("hands/hamer", "model_config")].status == models.INVALID  # a 16-wide decoder on ViT-H
    assert "context_dim 16 != backbone width 1280" in results[("hands/hamer", "model_config")].detail
    assert results[("hands/hamer", "checkpoint")].status == models.UNCHECKED
    onnx = results[("hands/hamer-onnx", "onnx")]
    assert onnx.status == models.OK and "'pred_cam', 'global_orient', 'hand_pose', 'betas'" in onnx.detail
    assert models.failed_backends(list(results.values()), []) == ["hands/hamer"]
