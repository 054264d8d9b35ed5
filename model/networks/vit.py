"""Plain Vision Transformer backbone in the ViTPose layout (as HaMeR and HMR2 use it).

One implementation, configured by :class:`ViTConfig`: :data:`VIT_H` is HaMeR's backbone (ViT-H/16,
1280 wide, 32 blocks), :data:`VIT_B` the ViT-B/16 of the PEAR regressor. Parameter names are those of
ViTPose's ``ViT`` (``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/
mlp.fc1/mlp.fc2``, ``last_norm``), so the official state dicts load without renaming.

Behaviour matches the official module in inference:

- the patch embedding is a 16x16 convolution with stride 16 and padding 2, so a 256x192 image gives a
  16x12 token grid (192 tokens);
- ``pos_embed`` holds one extra (class-token) slot that is *added* to every token, not prepended;
- pre-norm blocks (LayerNorm eps 1e-6, GELU MLP), a final LayerNorm, and the tokens returned as a
  feature map ``[B, C, Hp, Wp]``.

Attention runs through ``scaled_dot_product_attention`` (the same maths as ``softmax(q k^T / sqrt(d)) v``;
fused kernels on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViTPose-style backbone."""

    img_size: tuple[int, int] = (256, 192)
    """Input (height, width) in px; the position embedding is sized for it."""
    patch_size: int = 16
    """Side of a patch in px (the stride of the patch convolution)."""
    patch_padding: int = 2
    """Zero padding of the patch convolution (ViTPose's ``4 + 2 * (ratio // 2 - 1)`` with ratio 1)."""
    embed_dim: int = 1280
    """Token width."""
    depth: int = 32
    """Number of transformer blocks."""
    num_heads: int = 16
    """Attention heads per block."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``embed_dim``."""
    qkv_bias: bool = True
    """Bias on the fused query/key/value projection."""
    drop_path_rate: float = 0.0
    """Stochastic-depth rate of the last block (linear from 0 over the blocks); training only."""

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (Hp, Wp) for :attr:`img_size`."""
        h, w = self.img_size
        p, pad = self.patch_size, self.patch_padding
        return (h + 2 * pad - p) // p + 1, (w + 2 * pad - p) // p + 1


VIT_H = ViTConfig(embed_dim=1280, depth=32, num_heads=16)
"""HaMeR's backbone (ViTPose-H)."""
VIT_B = ViTConfig(embed_dim=768, depth=12, num_heads=12)
"""ViT-B/16 at 256x192 (ViTPose-B; the PEAR regressor's backbone)."""


class PatchEmbed(nn.Module):
    """Image to tokens: ``proj`` convolution, flattened row-major."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(3, config.embed_dim, kernel_size=p, stride=p, padding=config.patch_padding)

    def forward(self, images: Tensor) -> Tensor:
        """images  # [B, 3, H, W] -> tokens  # [B, Hp * Wp, C]"""
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x  # [B, N, C] -> [B, N, C]"""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer GELU MLP (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch ``x  # [B, ...]`` with probability
    ``rate`` (rescaling the kept ones); identity in eval mode or at rate 0."""
    if rate == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: ViTConfig, drop_path_rate: float):
        super().__init__()
        dim = config.embed_dim
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class ViT(nn.Module):
    """ViTPose-style backbone: ``images  # [B, 3, H, W]`` -> feature map ``[B, embed_dim, Hp, Wp]``."""

    def __init__(self, config: ViTConfig = VIT_H):
        super().__init__()
        self.config = config
        hp, wp = config.grid
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, hp * wp + 1, config.embed_dim))
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linspace
        self.blocks = nn.ModuleList([Block(config, rate) for rate in rates])
        self.last_norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        """images  # [B, 3, H, W] with (H, W) == config.img_size -> [B, C, Hp, Wp]"""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.config.img_size:
            h, w = self.config.img_size
            raise ValueError(f"ViT images: expected shape [B, 3, {h}, {w}], got {list(images.shape)}")
        x = self.patch_embed(images)
        # The class-token slot is added to every patch token (ViTPose's "fit for multiple GPU training").
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        x = self.last_norm(x)
        hp, wp = self.config.grid
        return x.transpose(1, 2).reshape(x.shape[0], -1, hp, wp)
