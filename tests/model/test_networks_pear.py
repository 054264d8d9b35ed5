"""The PEAR regressor network: shapes, the parameter vector, mean parameters, config round trip, camera."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.networks.pear import (
    PEAR_B,
    PEAR_TINY,
    PearConfig,
    PearRegressor,
    cam_to_translation,
    default_mean_params,
    pack_params,
    project_crop,
    unpack_params,
)
from model.rotations import rot6d_to_rotmat, rotmat_to_rot6d, rotvec_to_rotmat

READOUTS = pytest.mark.parametrize("readout", ["query", "flat"])


def _tiny(readout: str, **head) -> PearConfig:
    return dataclasses.replace(PEAR_TINY, head=dataclasses.replace(PEAR_TINY.head, readout=readout, **head))


@READOUTS
def test_outputs_have_the_documented_shapes(readout):
    torch.manual_seed(0)
    net = PearRegressor(_tiny(readout)).eval()
    h, w = PEAR_TINY.image_size
    out = net(net.normalize(torch.randint(0, 255, (2, 3, h, w), dtype=torch.uint8)))
    c = PEAR_TINY
    expected = {"global_orient": (2, 3, 3), "body_pose": (2, 21, 3, 3), "hand_pose": (2, 2, 15, 3, 3),
                "jaw_pose": (2, 3, 3), "betas": (2, c.num_betas), "flame_shape": (2, c.num_flame_shape),
                "flame_expression": (2, c.num_flame_expression), "flame_eyelids": (2, 2), "head_scale": (2, 3),
                "cam": (2, 3), "params": (2, c.num_params)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    eye = torch.eye(3).expand(2, 21, 3, 3)
    assert torch.allclose(out["body_pose"] @ out["body_pose"].transpose(-1, -2), eye, atol=1e-5)  # rotations
    with pytest.raises(ValueError, match="expected shape"):
        net(torch.zeros(1, 3, h + 16, w))


@READOUTS
def test_the_head_starts_near_the_mean_parameters(readout):
    torch.manual_seed(1)
    net = PearRegressor(_tiny(readout)).eval()
    rotations = rotvec_to_rotmat(0.3 * torch.randn(21, 3))
    mean = {name: torch.zeros(shape) for name, shape in PEAR_TINY.layout().items()}
    mean["body_pose"] = rotmat_to_rot6d(rotations)
    mean.update(global_orient=rotmat_to_rot6d(torch.eye(3)), hand_pose=rotmat_to_rot6d(torch.eye(3)).expand(2, 15, 6),
                jaw_pose=rotmat_to_rot6d(torch.eye(3)), head_scale=torch.ones(3), cam=torch.tensor([0.8, 0.1, -0.1]))
    net.set_mean_params(mean)
    out = net(torch.randn(3, 3, *PEAR_TINY.image_size))
    assert torch.allclose(out["body_pose"], rotations.expand(3, 21, 3, 3), atol=0.05)
    assert torch.allclose(out["cam"], mean["cam"].expand(3, 3), atol=0.05)
    with pytest.raises(KeyError, match="missing"):
        net.set_mean_params({"cam": torch.zeros(3)})


def test_parameter_vector_round_trip():
    blocks = unpack_params(PEAR_TINY, default_mean_params(PEAR_TINY)[None])
    assert torch.allclose(blocks["body_pose"], torch.eye(3).expand(1, 21, 3, 3))
    assert torch.allclose(blocks["head_scale"], torch.ones(1, 3)) and torch.allclose(blocks["cam"][0, 0], torch.tensor(0.9))
    six = {k: (rotmat_to_rot6d(v) if v.shape[-2:] == (3, 3) else v) for k, v in blocks.items()}
    assert torch.allclose(pack_params(PEAR_TINY, six), default_mean_params(PEAR_TINY)[None])
    with pytest.raises(ValueError, match="trailing shape"):
        pack_params(PEAR_TINY, {**six, "betas": torch.zeros(1, 3)})


def test_config_round_trip_and_unknown_keys():
    assert PearConfig.from_dict(PEAR_B.to_dict()) == PEAR_B
    assert PearConfig.from_dict(PEAR_TINY.to_dict()) == PEAR_TINY
    with pytest.raises(ValueError, match="unknown key.*depht"):
        PearConfig.from_dict({"head": {"depht": 3}})
    with pytest.raises(ValueError, match="ief_iters"):
        dataclasses.replace(PEAR_TINY, head=dataclasses.replace(PEAR_TINY.head, ief_iters=0))
    with pytest.raises(ValueError, match="readout 'mean'.*query, flat"):
        _tiny("mean")
    assert PearConfig.from_dict({"head": {"readout": "flat"}}).head.readout == "flat"
    assert PEAR_B.head.readout == "query" and PEAR_TINY.head.readout == "flat"


@READOUTS
def test_iterative_updates_run_the_decoder_again(readout):
    torch.manual_seed(2)
    one = PearRegressor(_tiny(readout)).eval()
    three = PearRegressor(_tiny(readout, ief_iters=3)).eval()
    three.load_state_dict(one.state_dict())
    torch.nn.init.normal_(one.decoder.weight, std=0.05)
    three.decoder.weight.data.copy_(one.decoder.weight)
    x = torch.randn(1, 3, *PEAR_TINY.image_size)
    assert not torch.allclose(one(x)["params"], three(x)["params"])


def test_weak_perspective_camera_convention():
    """One metre at the body spans s H / 2 pixels; tx, ty shift the body in metres (HMR2's convention)."""
    h, w, f = 256, 192, 5000.0
    cam = torch.tensor([[0.9, 0.1, -0.2]])
    t = cam_to_translation(cam, f, h)
    assert torch.allclose(t, torch.tensor([[0.1, -0.2, 2 * f / (h * 0.9)]]))
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]) + t[:, None]
    uv = project_crop(points, f, h, w)
    assert torch.allclose(uv[0, 1, 0] - uv[0, 0, 0], torch.tensor(0.9 * h / 2), rtol=1e-5)
    assert torch.allclose(uv[0, 0], torch.tensor([w / 2 + 0.1 * 0.9 * h / 2, h / 2 - 0.2 * 0.9 * h / 2]), rtol=1e-5)
    assert PEAR_TINY.focal_px == pytest.approx(5000.0 * PEAR_TINY.image_size[0] / 256)
    assert torch.allclose(rot6d_to_rotmat(rotmat_to_rot6d(torch.eye(3))), torch.eye(3))


def test_a_coefficient_block_of_six_is_not_a_rotation():
    six = dataclasses.replace(PEAR_TINY, num_betas=6, num_flame_expression=6)
    blocks = unpack_params(six, default_mean_params(six)[None])
    assert blocks["betas"].shape == (1, 6) and torch.all(blocks["betas"] == 0)
    assert blocks["flame_expression"].shape == (1, 6) and torch.all(blocks["flame_expression"] == 0)
    assert torch.allclose(blocks["jaw_pose"], torch.eye(3)[None])
