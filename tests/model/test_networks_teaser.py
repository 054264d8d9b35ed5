"""MobileNetV3 feature extractors (timm layout) and the TEASER/SMIRK encoders with strict loading."""

from __future__ import annotations

import pytest
import torch

from model.checkpoints import CheckpointError
from model.networks.mobilenetv3 import (
    TF_LARGE_MINIMAL,
    TF_SMALL_MINIMAL,
    Conv2dSame,
    MobileNetV3Config,
    MobileNetV3Features,
    make_divisible,
    parse_stage,
)
from model.networks.teaser import TEASER_KEYMAP, TeaserConfig, TeaserEncoder, load_teaser

TINY_ARCH = (("ds_r1_k3_s1_e1_c8",), ("ir_r1_k3_s2_e2_c8", "ir_r1_k3_s1_e1.5_c8"), ("cn_r1_k1_s1_c24",))
TINY = MobileNetV3Config(arch=TINY_ARCH, stem_size=8)
TINY_SMALL = MobileNetV3Config(arch=(("ds_r1_k3_s2_e1_c8",), ("cn_r1_k1_s1_c16",)), stem_size=8)
TINY_BACKBONES = {"pose": TINY_SMALL, "shape": TINY, "expression": TINY}


def tiny_encoder(seed: int = 0, n_shape: int = 300) -> TeaserEncoder:
    torch.manual_seed(seed)
    enc = TeaserEncoder(TeaserConfig(n_shape=n_shape, n_exp=50, pose_backbone=TINY_SMALL, shape_backbone=TINY,
                                     expression_backbone=TINY))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


def official_state(encoder: TeaserEncoder) -> dict[str, torch.Tensor]:
    """A TEASER_v*.pt-style state dict: prefixed encoder keys, the token encoder and the generator."""
    state = {TEASER_KEYMAP.prefix + k: v for k, v in encoder.state_dict().items()}
    state["smirk_encoder.token_encoder.token_layers.0.0.weight"] = torch.zeros(256, 576)
    state["smirk_generator.encoder.0.weight"] = torch.zeros(32, 6, 3, 3)
    return state


# --------------------------------------------------------------------------------------------------
# MobileNetV3
# --------------------------------------------------------------------------------------------------


def test_timm_rounding_and_block_strings():
    assert [make_divisible(v) for v in (16 * 4.5, 24 * 3.67, 80 * 2.3, 80 * 2.5, 5.0)] == [72, 88, 184, 200, 8]
    blocks = parse_stage(("ir_r3_k3_s2_e6_c160",))
    expected = [("ir", 2, 6.0, 160), ("ir", 1, 6.0, 160), ("ir", 1, 6.0, 160)]
    assert [(b.kind, b.stride, b.expansion, b.out_chs) for b in blocks] == expected
    with pytest.raises(ValueError, match="block string 'ir_k3_c8'"):
        parse_stage(("ir_k3_c8",))


def test_official_backbones_have_timms_features_and_keys():
    # measured on timm 0.9.16 create_model(..., features_only=True): channels, key count, first keys
    large, small = MobileNetV3Features(TF_LARGE_MINIMAL), MobileNetV3Features(TF_SMALL_MINIMAL)
    assert large.feature_channels == [16, 24, 40, 112, 960]
    assert small.feature_channels == [16, 16, 24, 48, 576]
    assert (len(large.state_dict()), len(small.state_dict())) == (276, 204)
    keys = list(small.state_dict())
    assert keys[:7] == ["conv_stem.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked", "blocks.0.0.conv_dw.weight"]
    assert small.state_dict()["blocks.1.1.conv_pw.weight"].shape == (88, 24, 1, 1)
    assert large.state_dict()["blocks.6.0.conv.weight"].shape == (960, 160, 1, 1)
    assert large.bn1.eps == 1e-3
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in small.eval()(torch.zeros(1, 3, 225, 225))]
    assert shapes == [(16, 113, 113), (16, 57, 57), (24, 29, 29), (48, 15, 15), (576, 8, 8)]  # ceil(n / stride)


@pytest.mark.parametrize(("size", "first_centre"), [(8, 1), (9, 0)])
def test_tf_same_padding_pads_bottom_right_first(size, first_centre):
    # even input: 1 px of padding, all after -> output i centred on input 2i + 1; odd: 1 px each side -> 2i
    conv = Conv2dSame(1, 1, 3, 2, padding=0, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        x = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size)
        y = conv(x)
    n = (size + 1) // 2
    assert y.shape[-2:] == (n, n)
    idx = [first_centre + 2 * i for i in range(n) if first_centre + 2 * i < size]
    assert torch.equal(y[0, 0, : len(idx), : len(idx)], x[0, 0][idx][:, idx])


# --------------------------------------------------------------------------------------------------
# TEASER encoders
# --------------------------------------------------------------------------------------------------


def test_encoder_outputs_follow_smirk():
    enc = tiny_encoder()
    with torch.no_grad():
        enc.expression_encoder.expression_layers[0].bias[50:].copy_(torch.tensor([1.5, -0.5, -2.0, 0.7, -0.1]))
        enc.expression_encoder.expression_layers[0].weight[50:].zero_()
        out = enc(torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pose_params": (2, 3), "cam": (2, 3), "shape_params": (2, 300), "expression_params": (2, 50),
        "eyelid_params": (2, 2), "jaw_params": (2, 3)}  # fmt: skip
    torch.testing.assert_close(out["eyelid_params"], torch.tensor([[1.0, 0.0]]).expand(2, 2))  # clamped to [0, 1]
    torch.testing.assert_close(out["jaw_params"], torch.tensor([[0.0, 0.2, -0.1]]).expand(2, 3))  # relu, +-0.2


def test_encoders_are_per_sample():
    enc = tiny_encoder()
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        batch, single = enc(images), enc(images[3:])
    for key in batch:
        torch.testing.assert_close(single[key][0], batch[key][3], atol=1e-5, rtol=1e-5)


def test_checkpoint_loads_strictly_and_ignores_token_encoder_and_generator(tmp_path):
    source = tiny_encoder(seed=3, n_shape=100)
    torch.save(official_state(source), tmp_path / "TEASER_v2.pt")
    loaded = load_teaser(tmp_path / "TEASER_v2.pt", TINY_BACKBONES)
    assert loaded.config.n_shape == 100 and loaded.config.n_exp == 50  # read off the checkpoint
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = source(images), loaded(images)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("smirk_encoder.pose_encoder.encoder.bn1.running_var"),
         r"missing: smirk_encoder\.pose_encoder\.encoder\.bn1\.running_var"),
        (lambda s: s.__setitem__("smirk_encoder.pose_encoder.encoder.conv_head.weight", torch.zeros(1)),
         r"unexpected: smirk_encoder\.pose_encoder\.encoder\.conv_head\.weight"),
        (lambda s: s.__setitem__("pose_encoder.pose_cam_layers.0.bias", torch.zeros(6)),
         r"unexpected: pose_encoder\.pose_cam_layers\.0\.bias"),
    ],
)
def test_mismatching_checkpoint_is_an_error_naming_the_key(tmp_path, edit, message):
    state = official_state(tiny_encoder())
    edit(state)
    torch.save(state, tmp_path / "teaser.pt")
    with pytest.raises(CheckpointError, match=message):
        load_teaser(tmp_path / "teaser.pt", TINY_BACKBONES)


def test_official_backbones_do_not_fit_a_tiny_checkpoint(tmp_path):
    torch.save(official_state(tiny_encoder()), tmp_path / "teaser.pt")
    with pytest.raises(CheckpointError, match="wrong shape: smirk_encoder.pose_encoder.encoder.conv_stem.weight"):
        load_teaser(tmp_path / "teaser.pt")


def test_not_a_teaser_checkpoint(tmp_path):
    torch.save({"backbone.pos_embed": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a TEASER/SMIRK encoder checkpoint"):
        load_teaser(tmp_path / "other.pt")
