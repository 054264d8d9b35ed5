"""MobileNetV3 feature extractor with timm's parameter names (``features_only=True`` models).

SMIRK and TEASER build their encoders with ``timm.create_model(name, features_only=True)`` and keep the
backbone under ``.encoder``; this module rebuilds those backbones without timm, so that the official
state dicts load strictly: ``conv_stem``, ``bn1``, ``blocks.{stage}.{block}.{conv_pw, bn1, conv_dw, bn2,
conv_pwl, bn3}`` (inverted residuals), ``{conv_dw, bn1, conv_pw, bn2}`` (depthwise-separable) and
``{conv, bn1}`` (conv-bn-act).

An architecture is timm's block-string table (:data:`LARGE_MINIMAL`, :data:`SMALL_MINIMAL`): each stage is
a list of strings ``"<type>_r<repeats>_k<kernel>_s<stride>_e<expansion>_c<channels>"`` with types
``ds`` (depthwise-separable), ``ir`` (inverted residual) and ``cn`` (1x1 conv-bn-act). The "minimal"
variants have ReLU everywhere, 3x3 kernels and no squeeze-excitation. The ``tf_`` variants use
TensorFlow "same" padding (asymmetric zero padding on strided convolutions, computed from the input
size) and BatchNorm eps 1e-3.

:meth:`MobileNetV3Features.forward` returns the feature maps where timm's ``feature_info`` puts them:
the stem output when the first block is strided, then the output of every stage that is followed by a
strided stage, then the last stage's output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

LARGE_MINIMAL: tuple[tuple[str, ...], ...] = (
    ("ds_r1_k3_s1_e1_c16",),
    ("ir_r1_k3_s2_e4_c24", "ir_r1_k3_s1_e3_c24"),
    ("ir_r3_k3_s2_e3_c40",),
    ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
    ("ir_r2_k3_s1_e6_c112",),
    ("ir_r3_k3_s2_e6_c160",),
    ("cn_r1_k1_s1_c960",),
)
"""timm's ``mobilenetv3_large`` minimal arch (``tf_mobilenetv3_large_minimal_100``)."""

SMALL_MINIMAL: tuple[tuple[str, ...], ...] = (
    ("ds_r1_k3_s2_e1_c16",),
    ("ir_r1_k3_s2_e4.5_c24", "ir_r1_k3_s1_e3.67_c24"),
    ("ir_r1_k3_s2_e4_c40", "ir_r2_k3_s1_e6_c40"),
    ("ir_r2_k3_s1_e3_c48",),
    ("ir_r3_k3_s2_e6_c96",),
    ("cn_r1_k1_s1_c576",),
)
"""timm's ``mobilenetv3_small`` minimal arch (``tf_mobilenetv3_small_minimal_100``)."""


@dataclass(frozen=True)
class MobileNetV3Config:
    """A MobileNetV3 feature extractor."""

    arch: tuple[tuple[str, ...], ...] = LARGE_MINIMAL
    """Stages of block strings (see the module docstring)."""
    stem_size: int = 16
    """Channels of the 3x3 stride-2 stem convolution."""
    tf_same_padding: bool = True
    """TensorFlow "same" padding (the ``tf_`` variants); else symmetric ``k // 2`` padding."""
    bn_eps: float = 1e-3
    """BatchNorm epsilon (1e-3 for ``tf_`` variants, 1e-5 otherwise)."""


TF_LARGE_MINIMAL = MobileNetV3Config(LARGE_MINIMAL)
"""``tf_mobilenetv3_large_minimal_100`` (SMIRK/TEASER shape and expression encoders)."""
TF_SMALL_MINIMAL = MobileNetV3Config(SMALL_MINIMAL)
"""``tf_mobilenetv3_small_minimal_100`` (SMIRK/TEASER pose encoder)."""


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's channel rounding: nearest multiple of ``divisor``, never more than 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class BlockSpec:
    """One block of a stage."""

    kind: str  # ds | ir | cn
    kernel: int
    stride: int
    expansion: float
    out_chs: int


_BLOCK = re.compile(r"(?P<kind>ds|ir|cn)_r(?P<r>\d+)_k(?P<k>\d+)_s(?P<s>\d+)(?:_e(?P<e>[\d.]+))?_c(?P<c>\d+)")


def parse_stage(strings: tuple[str, ...]) -> list[BlockSpec]:
    """Block strings of one stage -> its blocks, repeats expanded (only the first repeat keeps the stride)."""
    blocks = []
    for s in strings:
        m = _BLOCK.fullmatch(s)
        if m is None:
            raise ValueError(f"MobileNetV3 block string {s!r}: expected e.g. 'ir_r1_k3_s2_e4_c24' (types ds, ir, cn)")
        for i in range(int(m["r"])):
            stride = int(m["s"]) if i == 0 else 1
            blocks.append(BlockSpec(m["kind"], int(m["k"]), stride, float(m["e"] or 1), make_divisible(int(m["c"]))))
    return blocks


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow "same" padding: output ``ceil(input / stride)``, the extra pixel of
    an odd total padding on the bottom/right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


def conv2d(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, same: bool = True) -> nn.Conv2d:
    """Bias-free convolution; TF "same" padding is dynamic only where it can be asymmetric (stride > 1)."""
    if same and stride > 1:
        return Conv2dSame(in_chs, out_chs, kernel, stride, padding=0, groups=groups, bias=False)
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, groups=groups, bias=False)


class DepthwiseSeparable(nn.Module):
    """``conv_dw`` -> ``bn1`` + ReLU -> ``conv_pw`` -> ``bn2``, residual when shape-preserving."""

    def __init__(self, in_chs: int, spec: BlockSpec, cfg: MobileNetV3Config):
        super().__init__()
        self.conv_dw = conv2d(in_chs, in_chs, spec.kernel, spec.stride, groups=in_chs, same=cfg.tf_same_padding)
        self.bn1 = nn.BatchNorm2d(in_chs, eps=cfg.bn_eps)
        self.conv_pw = conv2d(in_chs, spec.out_chs, 1)
        self.bn2 = nn.BatchNorm2d(spec.out_chs, eps=cfg.bn_eps)
        self.skip = spec.stride == 1 and in_chs == spec.out_chs

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_pw(F.relu(self.bn1(self.conv_dw(x)))))
        return y + x if self.skip else y


class InvertedResidual(nn.Module):
    """``conv_pw`` -> ``bn1`` + ReLU -> ``conv_dw`` -> ``bn2`` + ReLU -> ``conv_pwl`` -> ``bn3``, residual when
    shape-preserving."""

    def __init__(self, in_chs: int, spec: BlockSpec, cfg: MobileNetV3Config):
        super().__init__()
        mid = make_divisible(in_chs * spec.expansion)
        self.conv_pw = conv2d(in_chs, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid, eps=cfg.bn_eps)
        self.conv_dw = conv2d(mid, mid, spec.kernel, spec.stride, groups=mid, same=cfg.tf_same_padding)
        self.bn2 = nn.BatchNorm2d(mid, eps=cfg.bn_eps)
        self.conv_pwl = conv2d(mid, spec.out_chs, 1)
        self.bn3 = nn.BatchNorm2d(spec.out_chs, eps=cfg.bn_eps)
        self.skip = spec.stride == 1 and in_chs == spec.out_chs

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv_pw(x)))
        y = F.relu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.skip else y


class ConvBnAct(nn.Module):
    """``conv`` -> ``bn1`` + ReLU."""

    def __init__(self, in_chs: int, spec: BlockSpec, cfg: MobileNetV3Config):
        super().__init__()
        self.conv = conv2d(in_chs, spec.out_chs, spec.kernel, spec.stride, same=cfg.tf_same_padding)
        self.bn1 = nn.BatchNorm2d(spec.out_chs, eps=cfg.bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(self.conv(x)))


_BLOCKS = {"ds": DepthwiseSeparable, "ir": InvertedResidual, "cn": ConvBnAct}


class MobileNetV3Features(nn.Module):
    """``images  # [B, 3, H, W]`` -> feature maps at timm's ``feature_info`` points (see the module docstring)."""

    def __init__(self, config: MobileNetV3Config = TF_LARGE_MINIMAL):
        super().__init__()
        self.config = config
        stem = make_divisible(config.stem_size)
        self.conv_stem = conv2d(3, stem, 3, 2, same=config.tf_same_padding)
        self.bn1 = nn.BatchNorm2d(stem, eps=config.bn_eps)
        stages, chs = [], stem
        specs = [parse_stage(s) for s in config.arch]
        for stage in specs:
            blocks = []
            for spec in stage:
                blocks.append(_BLOCKS[spec.kind](chs, spec, config))
                chs = spec.out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.stem_is_feature = specs[0][0].stride > 1
        # a stage's output is a feature when the next stage starts strided, and the last stage's always is
        self.feature_stages = [i for i in range(len(specs)) if i == len(specs) - 1 or specs[i + 1][0].stride > 1]
        stage_chs = [specs[i][-1].out_chs for i in self.feature_stages]
        self.feature_channels = ([stem] if self.stem_is_feature else []) + stage_chs
        """Channels of each returned feature map (timm's ``feature_info.channels()``)."""

    def forward(self, images: Tensor) -> list[Tensor]:
        x = F.relu(self.bn1(self.conv_stem(images)))
        features = [x] if self.stem_is_feature else []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self.feature_stages:
                features.append(x)
        return features
