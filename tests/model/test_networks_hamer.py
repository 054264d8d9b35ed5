"""HaMeR's network, its model_config.yaml, and strict loading of Lightning checkpoints."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from model.checkpoints import CheckpointError, read_checkpoint
from model.networks.hamer import HamerNetwork, find_model_config, hamer_config_from_yaml, load_hamer
from model.networks.vit import ViTConfig

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}
OFFICIAL_YAML = """
MODEL:
  IMAGE_SIZE: 256
  IMAGE_MEAN: [0.485, 0.456, 0.406]
  IMAGE_STD: [0.229, 0.224, 0.225]
  BACKBONE:
    TYPE: vit
    PRETRAINED_WEIGHTS: hamer_training_data/vitpose_backbone.pth
  MANO_HEAD:
    TYPE: transformer_decoder
    IN_CHANNELS: 2048
    TRANSFORMER_DECODER: {depth: 6, heads: 8, mlp_dim: 1024, dim_head: 64, dropout: 0.0, emb_dropout: 0.0,
                          norm: layer, context_dim: 1280}
MANO: {GENDER: neutral, NUM_HAND_JOINTS: 15, MODEL_PATH: data/mano, MEAN_PARAMS: data/mano_mean_params.npz}
EXTRA: {FOCAL_LENGTH: 5000}
"""
TINY_YAML = OFFICIAL_YAML.replace(
    "depth: 6, heads: 8, mlp_dim: 1024, dim_head: 64", "depth: 1, heads: 2, mlp_dim: 16, dim_head: 8"
).replace("context_dim: 1280", "context_dim: 32, dim: 32")


def tiny_network(seed: int = 0) -> HamerNetwork:
    torch.manual_seed(seed)
    config = hamer_config_from_yaml(TINY_YAML, "tiny.yaml", ViTConfig(**TINY_VIT))
    network = HamerNetwork(config).eval()
    with torch.no_grad():
        for buffer in (network.mano_head.init_hand_pose, network.mano_head.init_betas, network.mano_head.init_cam):
            buffer.normal_()
    return network


@pytest.fixture
def fake_yacs(monkeypatch):
    """A stand-in ``yacs.config.CfgNode`` for *writing* a checkpoint the way HaMeR's Lightning run did."""
    package, module = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__["__immutable__"] = True

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    package.config = module
    monkeypatch.setitem(sys.modules, "yacs", package)
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def official_state(network: HamerNetwork) -> OrderedDict:
    """The network's weights plus the official keys HaMeR ignores on purpose."""
    state = OrderedDict(network.state_dict())
    state["mano.shapedirs"] = torch.zeros(778, 3, 10)
    state["mano.faces_tensor"] = torch.zeros(1538, 3, dtype=torch.long)
    state["discriminator.D_conv1.weight"] = torch.zeros(32, 9, 1, 1)
    state["initialized"] = torch.tensor(True)
    return state


def write_lightning_checkpoint(path: Path, state: OrderedDict, cfg_node: type) -> None:
    cfg = cfg_node({"MODEL": cfg_node({"IMAGE_SIZE": 256, "BBOX_SHAPE": [192, 256]}), "EXTRA": cfg_node()})
    torch.save({"epoch": 3, "global_step": 120000, "pytorch-lightning_version": "2.0.1", "state_dict": state,
                "hyper_parameters": {"cfg": cfg}, "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}}},
               path)


def test_official_model_config_parses():
    cfg = hamer_config_from_yaml(OFFICIAL_YAML, "model_config.yaml")
    assert (cfg.head.depth, cfg.head.heads, cfg.head.dim_head, cfg.head.mlp_dim) == (6, 8, 64, 1024)
    assert (cfg.head.dim, cfg.head.context_dim, cfg.head.npose) == (1024, 1280, 96)
    assert cfg.bbox_shape == (192, 256)  # what the official loader sets for the ViT backbone
    assert cfg.focal_length == 5000.0 and cfg.image_size == 256 and cfg.backbone.embed_dim == 1280


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("TYPE: vit", "TYPE: resnet", "MODEL.BACKBONE.TYPE is 'resnet'"),
        ("TYPE: transformer_decoder", "TYPE: mlp", "MODEL.MANO_HEAD.TYPE is 'mlp'"),
        ("context_dim: 1280", "context_dim: 1024", "context_dim 1024 != backbone width 1280"),
        ("IMAGE_SIZE: 256", "IMAGE_SIZE: 224", "MODEL.IMAGE_SIZE 224"),
    ],
)
def test_unsupported_model_config_is_an_error_naming_the_setting(old, new, message):
    with pytest.raises(CheckpointError, match=message):
        hamer_config_from_yaml(OFFICIAL_YAML.replace(old, new), "model_config.yaml")


def test_head_adds_its_readout_to_the_mean_parameters():
    network = tiny_network()
    head = network.mano_head
    with torch.no_grad():
        for layer in (head.decpose, head.decshape, head.deccam):
            layer.weight.zero_()
            layer.bias.zero_()
        head.init_hand_pose.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]).repeat(16)[None])  # 6D identity
        head.init_betas.copy_(torch.arange(10.0)[None])
        head.init_cam.copy_(torch.tensor([[0.9, 0.1, -0.2]]))
        out = network(torch.randn(2, 3, 256, 256))
    assert out["global_orient"].shape == (2, 1, 3, 3) and out["hand_pose"].shape == (2, 15, 3, 3)
    torch.testing.assert_close(out["hand_pose"], torch.eye(3).expand(2, 15, 3, 3))
    torch.testing.assert_close(out["betas"], torch.arange(10.0).expand(2, 10))
    torch.testing.assert_close(out["pred_cam"], torch.tensor([[0.9, 0.1, -0.2]]).expand(2, 3))


def test_outputs_are_rotations_and_per_sample():
    network = tiny_network()
    images = torch.randn(3, 3, 256, 256)
    with torch.no_grad():
        out = network(images)
        single = network(images[2:])
    rot = torch.cat([out["global_orient"], out["hand_pose"]], dim=1)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, torch.eye(3).expand_as(rot), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3, 16), atol=1e-5, rtol=0)
    for key in out:
        torch.testing.assert_close(single[key][0], out[key][2], atol=1e-5, rtol=1e-5)


def test_crop_margin_is_ignored_by_the_backbone():
    network = tiny_network()
    images = torch.randn(1, 3, 256, 256)
    edited = images.clone()
    edited[..., :32] = 5.0  # HaMeR's backbone only sees columns 32..223
    with torch.no_grad():
        assert torch.equal(network(images)["betas"], network(edited)["betas"])


def test_lightning_checkpoint_loads_strictly(tmp_path, fake_yacs):
    source = tiny_network(seed=1)
    (tmp_path / "model_config.yaml").write_text(TINY_YAML)
    write_lightning_checkpoint(tmp_path / "hamer.ckpt", official_state(source), fake_yacs)
    loaded = load_hamer(tmp_path / "hamer.ckpt", backbone=TINY_VIT)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["hand_pose"], source(images)["hand_pose"])


def test_hyper_parameters_read_into_the_yacs_stand_in(tmp_path, fake_yacs):
    write_lightning_checkpoint(tmp_path / "hamer.ckpt", official_state(tiny_network()), fake_yacs)
    cfg = read_checkpoint(tmp_path / "hamer.ckpt")["hyper_parameters"]["cfg"]
    assert type(cfg) is OrderedDict and type(cfg["MODEL"]) is OrderedDict and cfg.__immutable__
    assert cfg["MODEL"]["BBOX_SHAPE"] == [192, 256]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("mano_head.decshape.weight"), r"missing: mano_head\.decshape\.weight"),
        (lambda s: s.__setitem__("backbone.cls_token", torch.zeros(1, 1, 32)), r"unexpected: backbone\.cls_token"),
        (lambda s: s.__setitem__("mano_head.deccam.bias", torch.zeros(4)),
         r"wrong shape: mano_head\.deccam\.bias \[4\] \(network: \[3\]\)"),
    ],
)
def test_mismatching_checkpoint_is_an_error_naming_the_key(tmp_path, edit, message):
    state = official_state(tiny_network())
    edit(state)
    torch.save(state, tmp_path / "hamer.ckpt")  # a plain state dict is accepted too
    (tmp_path / "model_config.yaml").write_text(TINY_YAML)
    with pytest.raises(CheckpointError, match=message):
        load_hamer(tmp_path / "hamer.ckpt", backbone=TINY_VIT)


def test_checkpoint_needing_other_classes_is_refused(tmp_path, monkeypatch):
    module = types.ModuleType("someones_trainer")

    class Callback:
        pass

    Callback.__module__, Callback.__qualname__ = "someones_trainer", "Callback"
    module.Callback = Callback
    monkeypatch.setitem(sys.modules, "someones_trainer", module)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": Callback()}, tmp_path / "hamer.ckpt")
    monkeypatch.delitem(sys.modules, "someones_trainer")
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*someones_trainer\.Callback"):
        read_checkpoint(tmp_path / "hamer.ckpt")


def test_model_config_found_in_the_official_layout(tmp_path):
    ckpt = tmp_path / "hamer_ckpts" / "checkpoints" / "hamer.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.touch()
    with pytest.raises(CheckpointError, match="no model_config.yaml"):
        find_model_config(ckpt)
    (tmp_path / "hamer_ckpts" / "model_config.yaml").write_text(OFFICIAL_YAML)
    assert find_model_config(ckpt) == tmp_path / "hamer_ckpts" / "model_config.yaml"
