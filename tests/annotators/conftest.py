"""Fixtures of the annotator tests: tiny ONNX graphs with the official input and output signatures."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _export(module: torch.nn.Module, path: Path, outputs: list[str], size_hw: tuple[int, int], dynamic: bool) -> str:
    axes = {n: {0: "batch"} for n in ("input", *outputs)} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, *size_hw),), str(path), input_names=["input"],
                          output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False)
    return str(path)


class ConstantYolox(torch.nn.Module):
    """YOLOX raw output for a 64x64 input (84 anchors): one person, a suppressed twin, two weak boxes."""

    def __init__(self):
        super().__init__()
        raw = torch.zeros(1, 84, 6)
        raw[0, 3 * 8 + 2] = torch.tensor([0.5, 0.5, math.log(2), math.log(4), 0.9, 0.8])  # (12, 12, 28, 44)
        raw[0, 3 * 8 + 3] = torch.tensor([0.0, 0.5, math.log(2), math.log(4), 0.6, 0.9])  # IoU 0.62: suppressed
        raw[0, 64] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.5, 0.15])  # score 0.075 < 0.1
        raw[0, 80] = torch.tensor([1.0, 1.0, math.log(0.5), math.log(0.5), 0.9, 0.3])  # 0.27 < 0.3
        self.register_buffer("raw", raw)

    def forward(self, x):
        return self.raw + 0.0 * x.mean()


@pytest.fixture(scope="session")
def export_onnx() -> Callable[..., str]:
    """``export(module, path, outputs, size_hw, dynamic) -> path``: a torch module as an ONNX file with one
    input ``input [B, 3, *size_hw]`` (batch axis dynamic when ``dynamic``)."""
    return _export


@pytest.fixture(scope="session")
def yolox_onnx(tmp_path_factory) -> str:
    """A fixed 64x64 YOLOX graph (:class:`ConstantYolox`): after decoding and NMS, one person at
    (24, 24, 56, 88) px of a 128x128 image, score 0.72."""
    return _export(ConstantYolox(), tmp_path_factory.mktemp("yolox") / "yolox.onnx", ["output"], (64, 64), False)
