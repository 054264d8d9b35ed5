"""TEASER's (and SMIRK's) FLAME encoders as the project's own code, loading the official checkpoint strictly.

Three MobileNetV3 encoders read the same 224x224 RGB face crop in [0, 1] (no mean/std normalisation):

- ``pose_encoder``: ``tf_mobilenetv3_small_minimal_100`` -> ``pose_cam_layers`` (6): FLAME head rotation
  ``pose_params`` (3, axis-angle) and the orthographic camera ``cam`` (scale, tx, ty);
- ``shape_encoder``: ``tf_mobilenetv3_large_minimal_100`` -> ``shape_layers`` (300): ``shape_params``;
- ``expression_encoder``: ``tf_mobilenetv3_large_minimal_100`` -> ``expression_layers`` (50 + 2 + 3):
  ``expression_params`` (50), ``eyelid_params`` (2, clamped to [0, 1]) and ``jaw_params`` (3, axis-angle:
  the first component through ReLU, the other two clamped to [-0.2, 0.2]).

Each encoder global-average-pools its backbone's last feature map and applies its linear layer.

Checkpoint layout (``TEASER_v1.pt`` / ``TEASER_v2.pt``; SMIRK's ``SMIRK_em1.pt`` has the same layout):
a flat state dict whose ``smirk_encoder.{pose,shape,expression}_encoder.*`` keys map one to one (prefix
``smirk_encoder.`` stripped). Ignored on purpose: ``smirk_encoder.token_encoder.*`` (TEASER's token
encoder, whose tokens only feed the image generator) and ``smirk_generator.*`` (the image generator).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.checkpoints import CheckpointError, KeyMap, checkpoint_state_dict, load_state_dict_strict, read_checkpoint
from model.networks.mobilenetv3 import TF_LARGE_MINIMAL, TF_SMALL_MINIMAL, MobileNetV3Config, MobileNetV3Features

TEASER_KEYMAP = KeyMap(prefix="smirk_encoder.", ignored=("smirk_encoder.token_encoder.", "smirk_generator."))
"""Official TEASER / SMIRK checkpoint keys -> :class:`TeaserEncoder` (see the module docstring)."""

TEASER_OUTPUTS = ("pose_params", "cam", "shape_params", "expression_params", "eyelid_params", "jaw_params")
"""Output names of the encoder and of its ONNX export."""

TEASER_INPUT_SIZE = 224
"""Side of the face crop in px."""


@dataclass(frozen=True)
class TeaserConfig:
    """Sizes of the three encoders."""

    n_shape: int = 300
    """FLAME shape coefficients predicted."""
    n_exp: int = 50
    """FLAME expression coefficients predicted."""
    pose_backbone: MobileNetV3Config = TF_SMALL_MINIMAL
    """Backbone of the pose/camera encoder."""
    shape_backbone: MobileNetV3Config = TF_LARGE_MINIMAL
    """Backbone of the shape encoder."""
    expression_backbone: MobileNetV3Config = TF_LARGE_MINIMAL
    """Backbone of the expression/eyelid/jaw encoder."""


def _pooled(encoder: MobileNetV3Features, images: Tensor) -> Tensor:
    """Global average of the backbone's last feature map: images  # [B, 3, H, W] -> [B, C]"""
    return F.adaptive_avg_pool2d(encoder(images)[-1], 1).flatten(1)


class PoseEncoder(nn.Module):
    def __init__(self, backbone: MobileNetV3Config):
        super().__init__()
        self.encoder = MobileNetV3Features(backbone)
        self.pose_cam_layers = nn.Sequential(nn.Linear(self.encoder.feature_channels[-1], 6))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        pose_cam = self.pose_cam_layers(_pooled(self.encoder, images))
        return {"pose_params": pose_cam[:, :3], "cam": pose_cam[:, 3:]}


class ShapeEncoder(nn.Module):
    def __init__(self, backbone: MobileNetV3Config, n_shape: int):
        super().__init__()
        self.encoder = MobileNetV3Features(backbone)
        self.shape_layers = nn.Sequential(nn.Linear(self.encoder.feature_channels[-1], n_shape))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"shape_params": self.shape_layers(_pooled(self.encoder, images))}


class ExpressionEncoder(nn.Module):
    def __init__(self, backbone: MobileNetV3Config, n_exp: int):
        super().__init__()
        self.n_exp = n_exp
        self.encoder = MobileNetV3Features(backbone)
        self.expression_layers = nn.Sequential(nn.Linear(self.encoder.feature_channels[-1], n_exp + 2 + 3))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        p = self.expression_layers(_pooled(self.encoder, images))
        n = self.n_exp
        jaw = torch.cat([F.relu(p[:, n + 2 : n + 3]), p[:, n + 3 : n + 5].clamp(-0.2, 0.2)], dim=1)
        return {"expression_params": p[:, :n], "eyelid_params": p[:, n : n + 2].clamp(0.0, 1.0), "jaw_params": jaw}


class TeaserEncoder(nn.Module):
    """``images  # [B, 3, 224, 224]`` RGB in [0, 1] -> the dict of :data:`TEASER_OUTPUTS`."""

    def __init__(self, config: TeaserConfig = TeaserConfig()):
        super().__init__()
        self.config = config
        self.pose_encoder = PoseEncoder(config.pose_backbone)
        self.shape_encoder = ShapeEncoder(config.shape_backbone, config.n_shape)
        self.expression_encoder = ExpressionEncoder(config.expression_backbone, config.n_exp)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"TEASER images: expected shape [B, 3, H, W], got {list(images.shape)}")
        return {**self.pose_encoder(images), **self.shape_encoder(images), **self.expression_encoder(images)}


def teaser_sizes(state: Mapping[str, Tensor], source: str) -> tuple[int, int]:
    """``(n_shape, n_exp)`` read off the official state dict's linear layers."""
    prefix = TEASER_KEYMAP.prefix
    try:
        n_shape = state[f"{prefix}shape_encoder.shape_layers.0.weight"].shape[0]
        n_exp = state[f"{prefix}expression_encoder.expression_layers.0.weight"].shape[0] - 5
    except KeyError as e:
        raise CheckpointError(f"{source}: not a TEASER/SMIRK encoder checkpoint (no key {e.args[0]})") from None
    return int(n_shape), int(n_exp)


def load_teaser(checkpoint: Path | str, backbones: Mapping[str, MobileNetV3Config] | None = None) -> TeaserEncoder:
    """The encoders in eval mode, weights from the official checkpoint loaded strictly.

    Args:
        checkpoint: ``TEASER_v*.pt`` (or SMIRK's ``.pt``): a state dict with ``smirk_encoder.*`` keys.
        backbones: backbones that differ from the official ones, by encoder (``"pose"``, ``"shape"``,
            ``"expression"``).
    """
    source = str(checkpoint)
    state = checkpoint_state_dict(read_checkpoint(checkpoint), source)
    n_shape, n_exp = teaser_sizes(state, source)
    overrides = {f"{name}_backbone": cfg for name, cfg in (backbones or {}).items()}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TeaserConfig)})
    if unknown:
        raise ValueError(f"load_teaser backbones: unknown encoders {unknown}; use pose, shape, expression")
    encoder = TeaserEncoder(TeaserConfig(n_shape=n_shape, n_exp=n_exp, **overrides))
    load_state_dict_strict(encoder, state, TEASER_KEYMAP, source)
    return encoder.eval()
