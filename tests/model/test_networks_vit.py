"""The ViTPose-style backbone: token grid, the official maths, input checks."""

from __future__ import annotations

import pytest
import torch

from model.networks.vit import VIT_B, VIT_H, ViT, ViTConfig, drop_path

TINY = ViTConfig(embed_dim=32, depth=2, num_heads=4)


def reference_forward(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """ViTPose's forward written out with explicit attention (softmax(q k^T * d^-1/2) v)."""
    cfg = vit.config
    x = vit.patch_embed.proj(images)
    hp, wp = x.shape[2:]
    x = x.flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:] + vit.pos_embed[:, :1]
    for blk in vit.blocks:
        h = blk.norm1(x)
        b, n, c = h.shape
        qkv = blk.attn.qkv(h).reshape(b, n, 3, cfg.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // cfg.num_heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        x = x + blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(x))))
    x = vit.last_norm(x)
    return x.permute(0, 2, 1).reshape(x.shape[0], -1, hp, wp)


def test_token_grid_of_the_official_configs():
    # 256x192 with a 16 px patch conv padded by 2 -> 16x12 tokens, pos_embed has one extra slot
    assert VIT_H.grid == VIT_B.grid == (16, 12)
    assert (VIT_H.embed_dim, VIT_H.depth, VIT_H.num_heads) == (1280, 32, 16)
    assert (VIT_B.embed_dim, VIT_B.depth, VIT_B.num_heads) == (768, 12, 12)
    vit = ViT(TINY)
    assert vit.pos_embed.shape == (1, 16 * 12 + 1, 32)
    assert vit.patch_embed.proj.padding == (2, 2)


def test_forward_matches_the_official_maths_and_is_per_sample():
    torch.manual_seed(0)
    vit = ViT(TINY).eval()
    images = torch.randn(3, 3, 256, 192)
    with torch.no_grad():
        out = vit(images)
        ref = reference_forward(vit, images)
        single = vit(images[1:2])
    assert out.shape == (3, 32, 16, 12)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single[0], out[1], atol=1e-5, rtol=1e-5)


def test_parameter_names_follow_vitpose():
    keys = set(ViT(TINY).state_dict())
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.1.attn.qkv.bias", "blocks.0.mlp.fc2.weight",
                "blocks.0.norm2.bias", "last_norm.weight"):
        assert key in keys
    assert not any(k.startswith("cls_token") for k in keys)


def test_wrong_input_size_is_an_error_naming_the_shape():
    with pytest.raises(ValueError, match=r"expected shape \[B, 3, 256, 192\], got \[1, 3, 256, 256\]"):
        ViT(TINY)(torch.zeros(1, 3, 256, 256))


def test_drop_path_only_acts_in_training():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(embed_dim=32, depth=2, num_heads=4, drop_path_rate=0.5))
    images = torch.randn(4, 3, 256, 192)
    with torch.no_grad():
        evaluated = vit.eval()(images)
        assert torch.equal(evaluated, vit(images))
        trained = vit.train()(images)
    assert not torch.allclose(trained, evaluated)


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
    torch.manual_seed(0)
    rate = 0.3
    branch = torch.randn(4000, 5, 8, dtype=torch.float64)
    out = drop_path(branch, rate, training=True)
    kept = out.flatten(1).any(1)
    # a kept sample is its branch times exactly 1 / (1 - rate); a dropped one is zero throughout
    torch.testing.assert_close(out[kept], branch[kept] / (1 - rate), rtol=1e-12, atol=0.0)
    assert not out[~kept].any()
    assert abs(float((~kept).double().mean()) - rate) < 0.03  # 4000 draws: 1.5 % standard deviation
    # hence the expected branch is the branch itself (what eval mode passes on unchanged)
    ones = drop_path(torch.ones(4000, 1, dtype=torch.float64), rate, training=True)
    assert abs(float(ones.mean()) - 1.0) < 0.05
    assert drop_path(branch, rate, training=False) is branch and drop_path(branch, 0.0, training=True) is branch
