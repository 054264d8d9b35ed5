"""The PEAR regressor: a ViTPose-layout ViT backbone and an HMR2-style transformer-decoder head that
predicts EHM parameters from one person crop.

Input: ImageNet-normalised RGB crops ``[B, 3, H, W]`` (256 x 192 for ViT-B/16), the person centred, the crop
height :attr:`PearConfig.box_scale` times the person box (see :mod:`model.pear` for the crop geometry).

Head (as HMR2 / 4D-Humans): one query token, the current parameter vector embedded, goes through a
transformer decoder (self-attention, cross-attention to the backbone's tokens, feed-forward; HaMeR's
layers, :class:`model.networks.hamer.TransformerCrossAttn`); a linear layer reads out a *residual* that is
added to the current parameters, which start at the mean parameters of the training corpus
(:meth:`PearRegressor.set_mean_params`, buffer ``init_params``). ``ief_iters > 1`` repeats the pass from the
updated parameters (iterative error feedback). ``head.readout = "flat"`` replaces the decoder by a two-layer
MLP over the flattened tokens (for backbones trained from scratch on a small budget, :class:`PearHeadConfig`).

Outputs (:meth:`PearRegressor.forward`), rotations as matrices from the 6D representation:

============================  =====================  ======================================================
``global_orient``             ``[B, 3, 3]``          SMPL-X root rotation, camera frame
``body_pose``                 ``[B, 21, 3, 3]``      SMPL-X body joints 1..21, relative to their parents
``hand_pose``                 ``[B, 2, 15, 3, 3]``   MANO finger joints, ``[0]`` left, ``[1]`` right
``jaw_pose``                  ``[B, 3, 3]``          FLAME jaw
``betas``                     ``[B, num_betas]``     SMPL-X shape
``flame_shape``               ``[B, num_flame_shape]``       leading FLAME shape components
``flame_expression``          ``[B, num_flame_expression]``  leading FLAME expression components
``flame_eyelids``             ``[B, 2]``             FLAME 2023 eyelid weights (left, right)
``head_scale``                ``[B, 3]``             per-axis FLAME head scale
``cam``                       ``[B, 3]``             weak-perspective camera ``(s, tx, ty)`` of the crop
============================  =====================  ======================================================

**Camera convention** (HMR2's): the crop is seen by a pinhole camera of focal length ``focal_length`` px
(5000 for a 256 px high crop) with its principal point at the crop centre; ``(s, tx, ty)`` means the body
(posed with ``transl = 0``) is translated by ``(tx, ty, 2 f / (H s))`` metres (:func:`cam_to_translation`),
so that one metre at the body spans about ``s H / 2`` px.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from model.networks.hamer import IMAGENET_MEAN, IMAGENET_STD, ManoHeadConfig, TransformerCrossAttn
from model.networks.vit import VIT_B, ViT, ViTConfig
from model.rotations import rot6d_to_rotmat, rotmat_to_rot6d

NUM_BODY_JOINTS = 21
NUM_HAND_JOINTS = 15


READOUTS = ("query", "flat")
"""Values of :attr:`PearHeadConfig.readout`."""


@dataclass(frozen=True)
class PearHeadConfig:
    """The transformer-decoder head."""

    dim: int = 1024
    """Token width of the decoder."""
    depth: int = 6
    """Decoder layers (self-attention, cross-attention to the image tokens, feed-forward)."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 64
    """Width of one head."""
    mlp_dim: int = 1024
    """Hidden width of the feed-forward blocks."""
    ief_iters: int = 1
    """Passes through the decoder, each starting from the parameters the previous one predicted."""
    readout: str = "query"
    """How the head reads the image tokens: ``query`` (HMR2: one query token cross-attending them through the
    decoder layers) or ``flat`` (the tokens flattened in grid order through a two-layer MLP of ``mlp_dim``
    hidden units; no decoder). A query token starts as mean pooling and needs a backbone whose tokens carry
    the whole person (a pretrained ViT); ``flat`` keeps where each token is, and a backbone trained from
    scratch on a CPU budget learns through it (see ``docs/training.md``)."""


@dataclass(frozen=True)
class PearConfig:
    """Shape of the regressor: backbone, head, parameter sizes and camera convention."""

    backbone: ViTConfig = VIT_B
    """The ViT (ViT-B/16 at 256 x 192 by default)."""
    head: PearHeadConfig = field(default_factory=PearHeadConfig)
    """The decoder head."""
    num_betas: int = 10
    """SMPL-X shape coefficients predicted."""
    num_flame_shape: int = 100
    """Leading FLAME shape components predicted (the rest are zero)."""
    num_flame_expression: int = 50
    """Leading FLAME expression components predicted."""
    focal_length: float = 5000.0
    """Focal length in px of the crop camera, for a crop :attr:`focal_height` px high (HMR2: 5000 for 256)."""
    focal_height: int = 256
    """Crop height the focal length is given for; the camera scales with the real crop height."""
    box_scale: float = 1.2
    """Crop height in person-box sides (the box first widened or heightened to the crop's aspect)."""
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    """RGB mean in [0, 1] units subtracted from the input."""
    image_std: tuple[float, float, float] = IMAGENET_STD
    """RGB standard deviation in [0, 1] units the input is divided by."""

    def __post_init__(self) -> None:
        for name in ("num_betas", "num_flame_shape", "num_flame_expression"):
            if getattr(self, name) < 0:
                raise ValueError(f"PearConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.focal_length > 0 and self.box_scale > 0 and self.focal_height > 0):
            raise ValueError("PearConfig.focal_length, focal_height and box_scale must be positive")
        if self.head.ief_iters < 1 or self.head.depth < 1:
            raise ValueError("PearHeadConfig.ief_iters and depth must be >= 1")
        if self.head.readout not in READOUTS:
            raise ValueError(f"PearHeadConfig.readout {self.head.readout!r}: use one of {', '.join(READOUTS)}")

    @property
    def image_size(self) -> tuple[int, int]:
        """Input (height, width) in px."""
        return self.backbone.img_size

    @property
    def focal_px(self) -> float:
        """Focal length in px of this config's crop (``focal_length`` scaled to the crop height)."""
        return self.focal_length * self.image_size[0] / self.focal_height

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Trailing shape of every block of the parameter vector, in order (the :data:`ROTATION_BLOCKS` as 6D)."""
        return {
            "global_orient": (6,),
            "body_pose": (NUM_BODY_JOINTS, 6),
            "hand_pose": (2, NUM_HAND_JOINTS, 6),
            "jaw_pose": (6,),
            "betas": (self.num_betas,),
            "flame_shape": (self.num_flame_shape,),
            "flame_expression": (self.num_flame_expression,),
            "flame_eyelids": (2,),
            "head_scale": (3,),
            "cam": (3,),
        }

    @property
    def num_params(self) -> int:
        """Length of the parameter vector."""
        return sum(_numel(s) for s in self.layout().values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists): what checkpoints store."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PearConfig:
        """The config from :meth:`to_dict`'s data; unknown keys are refused by name."""
        data = dict(data)
        _refuse_unknown(cls, data, "model")
        if "backbone" in data:
            backbone = dict(data["backbone"])
            _refuse_unknown(ViTConfig, backbone, "model.backbone")
            if "img_size" in backbone:
                backbone["img_size"] = tuple(backbone["img_size"])
            data["backbone"] = ViTConfig(**backbone)
        if "head" in data:
            head = dict(data["head"])
            _refuse_unknown(PearHeadConfig, head, "model.head")
            data["head"] = PearHeadConfig(**head)
        for key in ("image_mean", "image_std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)


VIT_TINY = ViTConfig(img_size=(128, 96), embed_dim=192, depth=4, num_heads=3)
"""A small ViT at 128 x 96 (48 tokens) for tests and the CPU benchmark."""
PEAR_B = PearConfig()
"""The PEAR regressor: ViT-B/16 at 256 x 192, a 6-layer decoder head."""
PEAR_TINY = PearConfig(backbone=VIT_TINY, head=PearHeadConfig(dim=256, depth=2, heads=4, dim_head=32, mlp_dim=512,
                                                              readout="flat"),
                       num_flame_shape=20, num_flame_expression=20)
"""The tiny configuration (tests, CPU benchmark): trained from scratch, so its head reads the tokens ``flat``."""
PRESETS: dict[str, PearConfig] = {"pear-b": PEAR_B, "pear-tiny": PEAR_TINY}
"""Named model configurations (``model.preset`` in the trainer config)."""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _refuse_unknown(cls: type, data: Mapping[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")


def cam_to_translation(cam: Tensor, focal_px: float, crop_height: int) -> Tensor:
    """Translation ``[..., 3]`` of the weak-perspective camera ``cam  # [..., 3]`` = ``(s, tx, ty)``:
    ``(tx, ty, 2 f / (H s))`` (HMR2's convention, ``f`` in px, ``H`` the crop height in px)."""
    depth = 2.0 * focal_px / (crop_height * cam[..., 0].clamp(min=1e-6))
    return torch.stack([cam[..., 1], cam[..., 2], depth], -1)


def project_crop(points: Tensor, focal_px: float, crop_height: int, crop_width: int) -> Tensor:
    """Crop pixels ``[..., K, 2]`` of camera-frame points ``[..., K, 3]`` through the crop camera (focal
    ``focal_px``, principal point at the crop centre); depths are clamped at 1 mm."""
    z = points[..., 2:].clamp(min=1e-3)
    centre = points.new_tensor([crop_width / 2.0, crop_height / 2.0])
    return focal_px * points[..., :2] / z + centre


class PearRegressor(nn.Module):
    """ViT backbone + transformer-decoder head (module docstring). ``images  # [B, 3, H, W]``
    normalised crops -> dict of EHM parameters and the crop camera."""

    def __init__(self, config: PearConfig = PEAR_B) -> None:
        super().__init__()
        self.config = config
        head = config.head
        self.backbone = ViT(config.backbone)
        n = config.num_params
        if head.readout == "query":
            decoder = ManoHeadConfig(dim=head.dim, depth=head.depth, heads=head.heads, dim_head=head.dim_head,
                                     mlp_dim=head.mlp_dim, context_dim=config.backbone.embed_dim,
                                     ief_iters=head.ief_iters)
            self.to_token = nn.Linear(n, head.dim)
            self.pos_embedding = nn.Parameter(torch.zeros(1, 1, head.dim))
            self.transformer = TransformerCrossAttn(decoder)
            self.norm = nn.LayerNorm(head.dim)
            self.decoder = nn.Linear(head.dim, n)
        else:  # flat: tokens in grid order (+ the current parameters, for ief_iters > 1) -> MLP -> residual
            hp, wp = config.backbone.grid
            self.flat = nn.Sequential(nn.Linear(hp * wp * config.backbone.embed_dim + n, head.mlp_dim), nn.GELU())
            self.decoder = nn.Linear(head.mlp_dim, n)
        nn.init.xavier_uniform_(self.decoder.weight, gain=0.01)  # start near the mean parameters (as HMR2)
        nn.init.zeros_(self.decoder.bias)
        self.register_buffer("init_params", default_mean_params(config))  # [P]
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1))

    def set_mean_params(self, mean: Mapping[str, Tensor]) -> None:
        """Set the residuals' starting point from mean parameters ``{block: [*shape]}`` (:meth:`PearConfig.layout`
        names; rotations as 6D). Every block must be given."""
        self.init_params.copy_(pack_params(self.config, {k: torch.as_tensor(v) for k, v in mean.items()}))

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 or [0, 1] float RGB ``[B, 3, H, W]`` -> the network's input."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return (x - self.image_mean) / self.image_std

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images  # [B, 3, H, W] normalised (:meth:`normalize`) -> the outputs of the module docstring, plus
        ``params`` [B, P], the raw parameter vector."""
        features = self.backbone(images)  # [B, C, Hp, Wp]
        context = features.flatten(2).transpose(1, 2)  # [B, N, C]
        params = self.init_params.expand(images.shape[0], -1)
        for _ in range(self.config.head.ief_iters):
            if self.config.head.readout == "query":
                token = self.to_token(params)[:, None] + self.pos_embedding
                out = self.norm(self.transformer(token, context=context)[:, 0])
            else:
                out = self.flat(torch.cat([context.flatten(1), params], -1))
            params = params + self.decoder(out)
        outputs = unpack_params(self.config, params)
        outputs["params"] = params
        return outputs


def pack_params(config: PearConfig, blocks: Mapping[str, Tensor]) -> Tensor:
    """Parameter vector ``[..., P]`` from its blocks ``{name: [..., *shape]}`` (rotations as 6D)."""
    layout = config.layout()
    missing = sorted(set(layout) - set(blocks))
    if missing:
        raise KeyError(f"parameter block(s) {missing} missing; the vector holds {list(layout)}")
    parts = []
    for name, shape in layout.items():
        value = blocks[name]
        if tuple(value.shape[value.dim() - len(shape):]) != shape:
            raise ValueError(f"parameter block {name!r}: expected trailing shape {list(shape)}, got {list(value.shape)}")
        parts.append(value.reshape(*value.shape[: value.dim() - len(shape)], -1))
    return torch.cat(parts, -1)


ROTATION_BLOCKS = ("global_orient", "body_pose", "hand_pose", "jaw_pose")
"""Blocks of :meth:`PearConfig.layout` that are rotations (6D in the vector, matrices after unpacking); a
coefficient block may have 6 entries too."""


def unpack_params(config: PearConfig, params: Tensor) -> dict[str, Tensor]:
    """Blocks of ``params  # [B, P]``: rotations as matrices (Gram-Schmidt of the 6D values), the rest as is."""
    out, start = {}, 0
    for name, shape in config.layout().items():
        n = _numel(shape)
        value = params[:, start:start + n].reshape(-1, *shape)
        start += n
        out[name] = rot6d_to_rotmat(value) if name in ROTATION_BLOCKS else value
    return out


def default_mean_params(config: PearConfig) -> Tensor:
    """The parameter vector before any corpus statistics: identity rotations (a T-pose facing the camera
    upside down; set real means with :meth:`PearRegressor.set_mean_params`), zero coefficients, unit head
    scale, camera ``(0.9, 0, 0)`` (HMR2's initial camera)."""
    eye6 = rotmat_to_rot6d(torch.eye(3))
    blocks: dict[str, Tensor] = {}
    for name, shape in config.layout().items():
        if name in ROTATION_BLOCKS:
            blocks[name] = eye6.expand(*shape[:-1], 6)
        else:
            blocks[name] = torch.zeros(shape)
    blocks["head_scale"] = torch.ones(3)
    blocks["cam"] = torch.tensor([0.9, 0.0, 0.0])
    return pack_params(config, blocks)
