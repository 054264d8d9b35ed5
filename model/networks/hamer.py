"""HaMeR (Pavlakos et al. 2024) as the project's own code: a ViT-H backbone and the MANO
transformer-decoder head, loading the official Lightning checkpoint strictly.

The network (:class:`HamerNetwork`) takes ImageNet-normalised RGB crops ``[B, 3, 256, 256]`` of a
**right** hand (left hands are mirrored by the caller) and returns MANO parameters as rotation matrices:
``global_orient [B, 1, 3, 3]``, ``hand_pose [B, 15, 3, 3]`` (relative to the flat hand, no PCA),
``betas [B, 10]`` and the weak-perspective crop camera ``pred_cam [B, 3]`` (scale, tx, ty).

As in the official model:

- the backbone sees the crop's central 192 columns (``x[..., 32:-32]``);
- the head feeds one zero token through a cross-attending transformer decoder (6 layers, 8 heads of
  64, MLP 1024, token width 1024) over the backbone's 192 tokens, and reads out 16 joint rotations in
  the 6D representation (two matrix columns, Gram-Schmidt), 10 betas and 3 camera values, each added to
  the mean parameters stored in the checkpoint (``init_hand_pose``, ``init_betas``, ``init_cam``).

Checkpoint layout (``hamer.ckpt``, with ``model_config.yaml`` beside it or one folder up as in the
official ``_DATA/hamer_ckpts/``): the Lightning ``state_dict`` holds ``backbone.*`` and ``mano_head.*``,
which map one to one; ignored on purpose are ``mano.*`` (the MANO layer's buffers: the licensed MANO
model, not needed for inference), ``discriminator.*`` (the adversarial prior used in training) and
``initialized`` (a training flag). Anything else is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from model.checkpoints import CheckpointError, KeyMap, checkpoint_state_dict, load_state_dict_strict, read_checkpoint
from model.networks.vit import VIT_H, ViT, ViTConfig
from model.rotations import rot6d_to_rotmat

HAMER_KEYMAP = KeyMap(prefix="", ignored=("mano.", "discriminator.", "initialized"))
"""Official ``hamer.ckpt`` keys -> :class:`HamerNetwork` (see the module docstring)."""

HAMER_OUTPUTS = ("pred_cam", "global_orient", "hand_pose", "betas")
"""Output names of the network and of its ONNX export (GUAVA's EHM tracker's ``hamer.onnx``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ManoHeadConfig:
    """HaMeR's ``MODEL.MANO_HEAD`` settings."""

    num_hand_joints: int = 15
    """Finger joints (``MANO.NUM_HAND_JOINTS``); the head predicts one more for the wrist."""
    dim: int = 1024
    """Token width of the decoder."""
    depth: int = 6
    """Decoder layers."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 64
    """Width of one head."""
    mlp_dim: int = 1024
    """Hidden width of the feed-forward blocks."""
    context_dim: int = 1280
    """Width of the backbone tokens the decoder attends to (the backbone's ``embed_dim``)."""
    ief_iters: int = 1
    """Iterative-error-feedback passes through the decoder."""

    @property
    def npose(self) -> int:
        """6D rotation values read out per sample (wrist + fingers)."""
        return 6 * (self.num_hand_joints + 1)


@dataclass(frozen=True)
class HamerConfig:
    """What HaMeR's ``model_config.yaml`` says about the network and its input."""

    backbone: ViTConfig = VIT_H
    """The ViT (HaMeR's ``vit()`` is ViT-H at 256x192)."""
    head: ManoHeadConfig = field(default_factory=ManoHeadConfig)
    """The MANO head."""
    image_size: int = 256
    """Side of the square crop in px (``MODEL.IMAGE_SIZE``)."""
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    """RGB mean in [0, 1] units (``MODEL.IMAGE_MEAN``)."""
    image_std: tuple[float, float, float] = IMAGENET_STD
    """RGB standard deviation in [0, 1] units (``MODEL.IMAGE_STD``)."""
    bbox_shape: tuple[int, int] | None = (192, 256)
    """Aspect (width, height) the hand box is expanded to before cropping (``MODEL.BBOX_SHAPE``; the
    official loader sets (192, 256) for the ViT backbone when the file has none)."""
    focal_length: float = 5000.0
    """Focal length in px of a 256 px crop (``EXTRA.FOCAL_LENGTH``), for turning ``pred_cam`` into a
    translation."""


def hamer_config_from_yaml(text: str, source: str, backbone: ViTConfig = VIT_H) -> HamerConfig:
    """Parse HaMeR's ``model_config.yaml`` (yacs YAML); ``backbone`` is the ViT its ``vit`` type means."""
    try:
        cfg = yaml.safe_load(text)
        model = cfg["MODEL"]
        head = model["MANO_HEAD"]
        decoder = dict(head["TRANSFORMER_DECODER"])
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: not a HaMeR model_config.yaml ({type(e).__name__}: {e})") from None
    checks = {
        "MODEL.BACKBONE.TYPE": (model.get("BACKBONE", {}).get("TYPE"), "vit"),
        "MODEL.MANO_HEAD.TYPE": (head.get("TYPE"), "transformer_decoder"),
        "MODEL.MANO_HEAD.JOINT_REP": (head.get("JOINT_REP", "6d"), "6d"),
        "MODEL.MANO_HEAD.TRANSFORMER_INPUT": (head.get("TRANSFORMER_INPUT", "zero"), "zero"),
        "MODEL.MANO_HEAD.TRANSFORMER_DECODER.norm": (decoder.get("norm", "layer"), "layer"),
    }
    for name, (value, supported) in checks.items():
        if value != supported:
            raise CheckpointError(f"{source}: {name} is {value!r}; pearl implements {supported!r} only")
    head_cfg = ManoHeadConfig(
        num_hand_joints=int(cfg.get("MANO", {}).get("NUM_HAND_JOINTS", 15)),
        dim=int(decoder.get("dim", 1024)),
        depth=int(decoder["depth"]),
        heads=int(decoder["heads"]),
        dim_head=int(decoder.get("dim_head", 64)),
        mlp_dim=int(decoder["mlp_dim"]),
        context_dim=int(decoder.get("context_dim", backbone.embed_dim)),
        ief_iters=int(head.get("IEF_ITERS", 1)),
    )
    if head_cfg.context_dim != backbone.embed_dim:
        raise CheckpointError(
            f"{source}: TRANSFORMER_DECODER.context_dim {head_cfg.context_dim} != backbone width {backbone.embed_dim}"
        )
    size = int(model.get("IMAGE_SIZE", 256))
    if size != 256 or backbone.img_size != (256, 192):
        raise CheckpointError(f"{source}: MODEL.IMAGE_SIZE {size}: the ViT backbone takes 256 px crops")
    bbox_shape = model.get("BBOX_SHAPE", [192, 256])
    return HamerConfig(
        backbone=backbone,
        head=head_cfg,
        image_size=size,
        image_mean=tuple(float(v) for v in model.get("IMAGE_MEAN", IMAGENET_MEAN)),
        image_std=tuple(float(v) for v in model.get("IMAGE_STD", IMAGENET_STD)),
        bbox_shape=None if bbox_shape is None else (int(bbox_shape[0]), int(bbox_shape[1])),
        focal_length=float(cfg.get("EXTRA", {}).get("FOCAL_LENGTH", 5000.0)),
    )


# --------------------------------------------------------------------------------------------------
# The MANO transformer-decoder head (parameter names as in HaMeR's pose_transformer.py)
# --------------------------------------------------------------------------------------------------


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, heads * d] -> [B, heads, N, d]"""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, d] -> [B, N, heads * d]"""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """``to_qkv`` (no bias) and ``to_out.0``."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """``to_q`` from the tokens, ``to_kv`` from the context (no biases), ``to_out.0``."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_kv = nn.Linear(context_dim, heads * dim_head * 2, bias=False)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        q = _split_heads(self.to_q(x), self.heads)
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class FeedForward(nn.Module):
    """``net.0`` -> GELU -> ``net.3`` (indices as in the official Sequential with its dropouts)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PreNorm(nn.Module):
    """LayerNorm of the tokens (never of the context), then ``fn``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Tensor) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class TransformerCrossAttn(nn.Module):
    """``layers.{i}`` = [self-attention, cross-attention, feed-forward], each pre-normed and residual."""

    def __init__(self, cfg: ManoHeadConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PreNorm(cfg.dim, SelfAttention(cfg.dim, cfg.heads, cfg.dim_head)),
                PreNorm(cfg.dim, CrossAttention(cfg.dim, cfg.context_dim, cfg.heads, cfg.dim_head)),
                PreNorm(cfg.dim, FeedForward(cfg.dim, cfg.mlp_dim)),
            ])
            for _ in range(cfg.depth)
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        for self_attn, cross_attn, ff in self.layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = ff(x) + x
        return x


class TransformerDecoder(nn.Module):
    """Token embedding (``to_token_embedding``), learned position (``pos_embedding``), then the layers."""

    def __init__(self, cfg: ManoHeadConfig):
        super().__init__()
        self.to_token_embedding = nn.Linear(1, cfg.dim)  # token_dim 1: HaMeR feeds a zero token
        self.pos_embedding = nn.Parameter(torch.randn(1, 1, cfg.dim))
        self.transformer = TransformerCrossAttn(cfg)

    def forward(self, tokens: Tensor, context: Tensor) -> Tensor:
        """tokens  # [B, 1, 1], context  # [B, N, context_dim] -> [B, 1, dim]"""
        x = self.to_token_embedding(tokens) + self.pos_embedding
        return self.transformer(x, context=context)


class ManoTransformerDecoderHead(nn.Module):
    """HaMeR's ``MANOTransformerDecoderHead``: backbone feature map -> MANO rotations, betas, camera."""

    def __init__(self, cfg: ManoHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = TransformerDecoder(cfg)
        self.decpose = nn.Linear(cfg.dim, cfg.npose)
        self.decshape = nn.Linear(cfg.dim, 10)
        self.deccam = nn.Linear(cfg.dim, 3)
        self.register_buffer("init_hand_pose", torch.zeros(1, cfg.npose))
        self.register_buffer("init_betas", torch.zeros(1, 10))
        self.register_buffer("init_cam", torch.zeros(1, 3))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """features  # [B, C, Hp, Wp] -> global_orient [B, 1, 3, 3], hand_pose [B, J, 3, 3], betas [B, 10],
        pred_cam [B, 3]"""
        b = features.shape[0]
        context = features.flatten(2).transpose(1, 2)  # [B, Hp * Wp, C]
        pose = self.init_hand_pose.expand(b, -1)
        betas = self.init_betas.expand(b, -1)
        cam = self.init_cam.expand(b, -1)
        token = features.new_zeros(b, 1, 1)
        for _ in range(self.cfg.ief_iters):
            out = self.transformer(token, context)[:, 0]
            pose = self.decpose(out) + pose
            betas = self.decshape(out) + betas
            cam = self.deccam(out) + cam
        rotmats = rot6d_to_rotmat(pose.reshape(b, -1, 6))  # [B, J + 1, 3, 3]
        return {"pred_cam": cam, "global_orient": rotmats[:, :1], "hand_pose": rotmats[:, 1:], "betas": betas}


class HamerNetwork(nn.Module):
    """HaMeR without its training parts: ``backbone`` (ViT) and ``mano_head``.

    ``images  # [B, 3, 256, 256]`` ImageNet-normalised RGB crops of right hands -> the dict of
    :data:`HAMER_OUTPUTS` (see the module docstring).
    """

    def __init__(self, config: HamerConfig = HamerConfig()):
        super().__init__()
        self.config = config
        self.backbone = ViT(config.backbone)
        self.mano_head = ManoTransformerDecoderHead(config.head)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        s = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"HaMeR images: expected shape [B, 3, {s}, {s}], got {list(images.shape)}")
        margin = (s - self.config.backbone.img_size[1]) // 2
        return self.mano_head(self.backbone(images[:, :, :, margin : s - margin]))


def find_model_config(checkpoint: Path) -> Path:
    """``model_config.yaml`` beside ``checkpoint``, else one folder up (the official
    ``hamer_ckpts/checkpoints/hamer.ckpt`` + ``hamer_ckpts/model_config.yaml``)."""
    candidates = [checkpoint.parent / "model_config.yaml", checkpoint.parent.parent / "model_config.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(f"{checkpoint}: no model_config.yaml at {' or '.join(str(p) for p in candidates)}")


def load_hamer(
    checkpoint: Path | str, model_config: Path | str | None = None, backbone: dict[str, Any] | None = None
) -> HamerNetwork:
    """The network in eval mode, weights from the official ``hamer.ckpt`` loaded strictly.

    Args:
        checkpoint: ``hamer.ckpt`` (Lightning checkpoint) or a plain state dict with the same keys.
        model_config: its ``model_config.yaml`` (default: :func:`find_model_config`).
        backbone: :class:`ViTConfig` fields that differ from ViT-H, for HaMeR variants on another ViT.
    """
    checkpoint = Path(checkpoint)
    config_path = Path(model_config) if model_config else find_model_config(checkpoint)
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: no such model_config.yaml")
    overrides = dict(backbone or {})
    known = [f.name for f in dataclasses.fields(ViTConfig)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"HaMeR backbone: unknown ViT fields {unknown}; known: {known}")
    if "img_size" in overrides:
        overrides["img_size"] = tuple(overrides["img_size"])
    vit = dataclasses.replace(VIT_H, **overrides)
    config = hamer_config_from_yaml(config_path.read_text(), str(config_path), vit)
    network = HamerNetwork(config)
    state = checkpoint_state_dict(read_checkpoint(checkpoint), str(checkpoint))
    load_state_dict_strict(network, state, HAMER_KEYMAP, str(checkpoint))
    return network.eval()
