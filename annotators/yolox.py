"""YOLOX person detection from a user-supplied ONNX file (DWPose's ``yolox_l.onnx`` and other YOLOX
exports with one ``[1, A, 5 + C]`` output), run through onnxruntime.

The image is letterboxed into the network's input (640x640 when the graph takes any size; top-left
aligned, grey 114 padding, no normalisation, RGB), the anchors are decoded on the stride-8/16/32 grids
(centre = (offset + cell) x stride, size = exp(log size) x stride), a detection's person score is
objectness x class-0 probability, NMS at IoU 0.45 runs over scores above 0.1 (boxes in YOLOX's
``+1`` pixel convention), and detections scoring above 0.3 are kept: DWPose's ``onnxdet.py`` settings.

Used by the ``keypoints/wholebody-onnx`` stage (crop boxes) and by the persons stage's ``yolox_onnx``
detector. See ``docs/reference_backends.md``.
"""

from __future__ import annotations

import cv2
import numpy as np

from annotators.images import nms
from model.checkpoints import OnnxModel

YOLOX_STRIDES = (8, 16, 32)
"""Output strides of the YOLOX heads, in the order of its anchors."""
DEFAULT_INPUT_SIZE = 640
"""Input side used when the graph's input size is dynamic (DWPose's detector input)."""


def letterbox(image: np.ndarray, size_hw: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, float]:
    """YOLOX input: ``image  # [H, W, 3]`` resized by ``r = min(h / H, w / W)`` into the top-left corner of
    a ``size_hw`` canvas filled with ``pad_value``; returns (canvas, r)."""
    h, w = size_hw
    r = min(h / image.shape[0], w / image.shape[1])
    canvas = np.full((h, w, 3), pad_value, np.uint8)
    nw, nh = int(image.shape[1] * r), int(image.shape[0] * r)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, r


def yolox_boxes(raw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Decode YOLOX anchors ``raw  # [A, 4 + ...]`` (grid offsets, log sizes) into ``[A, 4]`` boxes
    (x0, y0, x1, y1) in input px."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        gh, gw = size_hw[0] // stride, size_hw[1] // stride
        xv, yv = np.meshgrid(np.arange(gw), np.arange(gh))
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    if len(grid) != len(raw):
        raise ValueError(f"YOLOX output has {len(raw)} anchors, expected {len(grid)} for a {size_hw} input")
    centre = (raw[:, :2] + grid) * stride
    half = np.exp(raw[:, 2:4]) * stride / 2
    return np.concatenate([centre - half, centre + half], axis=1)


class YoloxPersonDetector:
    """YOLOX person detector (ONNX): ``image  # [H, W, 3]`` RGB -> (boxes ``[M, 4]`` px, scores ``[M]``)."""

    def __init__(self, path: str, device: str = "auto", score_threshold: float = 0.3,
                 nms_score_threshold: float = 0.1, nms_iou: float = 0.45, default_size: int = DEFAULT_INPUT_SIZE):
        self.model = OnnxModel(path, outputs=(), device=device)
        self.size_hw = self.model.spatial_size or (default_size, default_size)
        self.score_threshold, self.nms_score_threshold, self.nms_iou = score_threshold, nms_score_threshold, nms_iou

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        canvas, r = letterbox(image, self.size_hw)
        raw = next(iter(self.model(canvas.transpose(2, 0, 1)[None].astype(np.float32)).values()))[0]  # [A, 5 + C]
        boxes = yolox_boxes(raw, self.size_hw) / r
        scores = raw[:, 4] * raw[:, 5]  # objectness x P(person)
        cand = np.flatnonzero(scores > self.nms_score_threshold)
        kept = cand[nms(boxes[cand], scores[cand], self.nms_iou, plus_one=True)]
        kept = kept[scores[kept] > self.score_threshold]
        return boxes[kept].astype(np.float32), scores[kept].astype(np.float32)
