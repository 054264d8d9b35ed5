"""face/teaser and face/teaser-onnx on tiny TEASER encoders with the official key layout and I/O signature."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy
from annotators.face.teaser import (
    TeaserOnnxStage,
    TeaserOnnxStageConfig,
    TeaserStage,
    TeaserStageConfig,
    face_crop_warp,
)
from model.networks.mobilenetv3 import MobileNetV3Config
from model.networks.teaser import TEASER_OUTPUTS, TeaserConfig, TeaserEncoder

BLOCKS = {
    "pose": [["ds_r1_k3_s2_e1_c8"], ["cn_r1_k1_s1_c16"]],
    "shape": [["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e2_c8"], ["cn_r1_k1_s1_c16"]],
    "expression": [["ir_r1_k3_s2_e2_c8"], ["cn_r1_k1_s1_c24"]],
}
W, H = 200, 160


def backbone(name: str) -> MobileNetV3Config:
    return MobileNetV3Config(arch=tuple(tuple(stage) for stage in BLOCKS[name]))


@pytest.fixture(scope="module")
def tiny_teaser(tmp_path_factory) -> tuple[Path, TeaserEncoder]:
    """TEASER_v2.pt in the official layout (prefixed encoders, token encoder, generator) and the encoder."""
    torch.manual_seed(0)
    encoder = TeaserEncoder(TeaserConfig(pose_backbone=backbone("pose"), shape_backbone=backbone("shape"),
                                         expression_backbone=backbone("expression"))).eval()
    state = {f"smirk_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["smirk_encoder.token_encoder.token_layers.3.0.bias"] = torch.zeros(256)
    state["smirk_generator.res_blocks.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)
    path = tmp_path_factory.mktemp("teaser") / "TEASER_v2.pt"
    torch.save(state, path)
    return path, encoder


def face_landmarks(seed: int, center=(100.0, 80.0), radius: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle, r = rng.uniform(0, 2 * np.pi, 478), radius * np.sqrt(rng.uniform(0, 1, 478))
    xy = np.stack([center[0] + r * np.cos(angle), center[1] + 1.2 * r * np.sin(angle)], axis=1)
    return np.concatenate([xy, np.zeros((478, 1))], axis=1).astype(np.float32)


def make_batch(n: int, has_face: list[bool] | None = None) -> dict:
    rng = np.random.default_rng(42)
    images = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    return {
        "image": images,
        "mp_face_landmarks": np.stack([face_landmarks(i, radius=20.0 + 3 * i) for i in range(n)]),
        "has_face": np.array(has_face if has_face is not None else [True] * n),
        "conf_face": np.linspace(0.5, 0.9, n).astype(np.float32),
    }


def stage(path: Path, **options) -> TeaserStage:
    return TeaserStage(TeaserStageConfig(checkpoint=str(path), backbones=BLOCKS, device="cpu", **options),
                       ErrorPolicy.RAISE)


def test_face_crop_follows_teaser():
    # 100x100 landmark box centred on (150, 100): side int(100 * 1.4) = 140 mapped onto pixels 0..223
    lm = np.array([[100.0, 50.0], [200.0, 150.0], [150.0, 100.0]])
    warp = face_crop_warp(lm, 1.4, 224)
    to_crop = lambda p: warp[:, :2] @ (np.asarray(p) - 0.5) + warp[:, 2]  # noqa: E731 - continuous px in
    np.testing.assert_allclose(to_crop([150.0, 100.0]), [111.5, 111.5])
    np.testing.assert_allclose(to_crop([80.0, 30.0]), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(to_crop([220.0, 170.0]), [223.0, 223.0])
    assert face_crop_warp(np.array([[0.0, 0.0], [10.1, 10.1]]))[0, 0] == pytest.approx(223 / 14)  # int(14.14)
    with pytest.raises(ValueError, match="too small for a face crop"):
        face_crop_warp(np.array([[5.0, 5.0], [5.2, 5.1]]))


def test_registered_names():
    assert STAGES.get("face/teaser") is TeaserStage and STAGES.get("face/teaser-onnx") is TeaserOnnxStage


def test_outputs_fill_the_record_fields_and_agree_per_sample(tiny_teaser):
    path, _ = tiny_teaser
    batch = make_batch(4)
    out = stage(path, batch_size=3)(make_batch(4))
    assert out["flame_shape"].shape == (4, 300) and out["flame_expression"].shape == (4, 100)
    assert out["flame_jaw_pose"].shape == (4, 3) and out["flame_eyelids"].shape == (4, 2)
    assert out["flame_shape"].dtype == np.float32 and out["has_face"].all()
    assert np.abs(out["flame_expression"][:, :50]).sum() > 0 and not out["flame_expression"][:, 50:].any()
    assert ((out["flame_eyelids"] >= 0) & (out["flame_eyelids"] <= 1)).all()
    np.testing.assert_allclose(out["conf_face"], batch["conf_face"])
    single = stage(path, batch_size=1)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        got = single(one)
        for key in ("flame_shape", "flame_expression", "flame_jaw_pose", "flame_eyelids"):
            np.testing.assert_allclose(got[key][0], out[key][i], atol=1e-5, err_msg=key)


def test_rows_without_a_face_are_left_empty(tiny_teaser):
    path, _ = tiny_teaser
    out = stage(path)(make_batch(3, has_face=[True, False, True]))
    assert out["has_face"].tolist() == [True, False, True]
    assert not out["flame_shape"][1].any() and out["conf_face"][1] == 0.0
    assert out[ERROR_STAGE].tolist() == ["", "", ""]


def test_bad_landmarks_are_quarantined(tiny_teaser):
    path, _ = tiny_teaser
    batch = make_batch(2)
    batch["mp_face_landmarks"][0, :, :2] = 5.0  # every landmark on one point
    s = TeaserStage(TeaserStageConfig(checkpoint=str(path), backbones=BLOCKS, device="cpu"), ErrorPolicy.QUARANTINE)
    out = s(batch)
    assert out[ERROR_STAGE].tolist() == ["face", ""]
    assert "too small for a face crop" in out[ERROR_REASON][0]
    assert out["has_face"].tolist() == [False, True]


def test_config_needs_its_file():
    with pytest.raises(ValueError, match="TeaserStageConfig.checkpoint is empty"):
        TeaserStageConfig()
    with pytest.raises(ValueError, match="TeaserOnnxStageConfig.onnx is empty"):
        TeaserOnnxStageConfig()


def test_onnx_export_gives_the_same_faces(tiny_teaser, tmp_path):
    path, encoder = tiny_teaser

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, img):
            out = self.encoder(img)
            return tuple(out[k] for k in TEASER_OUTPUTS)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Outputs().eval(), (torch.rand(1, 3, 224, 224),), str(tmp_path / "teaser.onnx"),
                          input_names=["img"], output_names=list(TEASER_OUTPUTS), opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in ("img", *TEASER_OUTPUTS)})
    expected = stage(path)(make_batch(3))
    got = TeaserOnnxStage(TeaserOnnxStageConfig(onnx=str(tmp_path / "teaser.onnx"), device="cpu"), ErrorPolicy.RAISE)(
        make_batch(3))
    for key in ("flame_shape", "flame_expression", "flame_jaw_pose", "flame_eyelids", "has_face"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-4, err_msg=key)
