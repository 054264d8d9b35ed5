"""Keypoints stage, reference backend ``keypoints/wholebody-onnx``: a DWPose / RTMW-style whole-body model
(133 COCO-WholeBody keypoints, SimCC heads) and optionally its YOLOX person detector, both user-supplied
ONNX files run through onnxruntime.

Per person row (``image`` + ``bbox_xyxy``), as DWPose's ``onnxpose.py`` does it:

1. The box becomes a centre and a size padded by 1.25, widened or heightened to the model's input
   aspect (``w / h`` of its input, 288/384 for DWPose-l), and the image is warped to the input size
   (bilinear, black outside), RGB, normalised with ImageNet mean/std in 0-255 units.
2. SimCC decoding: each keypoint's x and y are the arg-max bins of ``simcc_x [N, 133, W * r]`` and
   ``simcc_y [N, 133, H * r]`` divided by the split ratio ``r`` (2.0); its score is the smaller of the
   two maxima. Locations map back to image px through the inverse warp.
3. With a detector, the row's box is replaced, for the crop only, by the detected person box that
   overlaps it most (IoU >= ``detector_match_iou``); boxes from labels or another detector are often
   looser or tighter than the pose model was trained with. The detector runs once per image.

YOLOX (``yolox_l.onnx``): :class:`annotators.yolox.YoloxPersonDetector`.

Coordinates are continuous px (pixel ``i`` spans ``[i, i + 1]``) like the rest of pearl; OpenCV samples
at pixel centres, so warps are built on ``x - 0.5``. Both networks get RGB, as DWPose's annotator and
GUAVA's EHM tracker feed them. Outputs: ``kp2d_wholebody`` (x, y, score clipped to [0, 1] like the
other keypoint backends; raw SimCC maxima are mostly in [0, 1]), and per part (body 17, face 68, each
hand 21) the fraction of keypoints scoring at least ``keypoint_threshold`` as ``conf_*``, with
``has_*`` where that fraction reaches ``min_visible_fraction``.
See ``docs/reference_backends.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from annotators.base import STAGES, Stage, StageResources, resource
from annotators.batches import Batch
from annotators.images import box_iou, check_person_box, check_rgb_image
from annotators.yolox import YoloxPersonDetector
from model.checkpoints import OnnxModel
from schemas import keypoints as wb

log = logging.getLogger(__name__)

POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
"""RGB mean of the pose model's input (0-255 units)."""
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
"""RGB standard deviation of the pose model's input (0-255 units)."""


# --------------------------------------------------------------------------------------------------
# Top-down crop and SimCC decoding (pure functions)
# --------------------------------------------------------------------------------------------------


def box_center_scale(box_xyxy: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre and padded size of boxes: ``box_xyxy  # [..., 4]`` -> (``[..., 2]``, ``[..., 2]``)."""
    box = np.asarray(box_xyxy, np.float64)
    return (box[..., :2] + box[..., 2:]) / 2, (box[..., 2:] - box[..., :2]) * padding


def fix_aspect_ratio(scale: np.ndarray, aspect: float) -> np.ndarray:
    """Grow ``scale  # [..., 2]`` (w, h) along one side until ``w / h == aspect``."""
    w, h = scale[..., 0], scale[..., 1]
    wide = w > h * aspect
    return np.stack([np.where(wide, w, h * aspect), np.where(wide, w / aspect, h)], axis=-1)


def top_down_warp(center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int]) -> np.ndarray:
    """``[2, 3]`` affine from image to model-input pixel coordinates: ``center  # [2]`` to the input
    centre, ``scale[0]`` image px to ``input_wh[0]`` input px (no rotation)."""
    s = input_wh[0] / float(scale[0])
    return np.array(
        [[s, 0.0, input_wh[0] / 2 - s * center[0]], [0.0, s, input_wh[1] / 2 - s * center[1]]], dtype=np.float64
    )


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """SimCC arg-max decoding.

    simcc_x  # [N, K, Wx], simcc_y  # [N, K, Wy]
    returns  (xy  # [N, K, 2] in input px, scores  # [N, K] = min(max_x, max_y))
    """
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[:2] != simcc_y.shape[:2]:
        raise ValueError(f"simcc_x {simcc_x.shape} and simcc_y {simcc_y.shape} must be [N, K, bins] with equal N, K")
    xy = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], axis=-1).astype(np.float32) / split_ratio
    return xy, np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The two networks
# --------------------------------------------------------------------------------------------------


class WholeBodyPoseModel:
    """SimCC whole-body pose model (ONNX), top-down on person boxes."""

    def __init__(self, path: str, device: str = "auto", split_ratio: float = 2.0, padding: float = 1.25):
        self.model = OnnxModel(path, outputs=(), device=device)
        if self.model.spatial_size is None or len(self.model.output_names) < 2:
            raise ValueError(f"{path}: expected a fixed input [N, 3, H, W] and outputs simcc_x, simcc_y")
        h, w = self.model.spatial_size
        self.input_wh = (w, h)
        self.split_ratio, self.padding = split_ratio, padding

    def crop(self, image: np.ndarray, box_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(normalised input ``[3, h, w]``, image-to-input affine ``[2, 3]``) for one person box."""
        center, scale = box_center_scale(box_xyxy, self.padding)
        scale = fix_aspect_ratio(scale, self.input_wh[0] / self.input_wh[1])
        warp = top_down_warp(center - 0.5, scale, self.input_wh)  # OpenCV: pixel centres at integers
        crop = cv2.warpAffine(image, warp, self.input_wh, flags=cv2.INTER_LINEAR)
        return ((crop.astype(np.float32) - POSE_MEAN) / POSE_STD).transpose(2, 0, 1), warp

    def __call__(self, inputs: np.ndarray, warps: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """inputs  # [N, 3, h, w], warps  # [N, 2, 3] -> (xy  # [N, K, 2] image px, scores  # [N, K])"""
        simcc_x, simcc_y = list(self.model(inputs, batch_size).values())[:2]
        w, h = self.input_wh
        if simcc_x.shape[-1] != round(w * self.split_ratio) or simcc_y.shape[-1] != round(h * self.split_ratio):
            raise ValueError(f"{self.model.path}: SimCC outputs {simcc_x.shape}, {simcc_y.shape} do not match a "
                             f"{w}x{h} input at split ratio {self.split_ratio}")
        xy, scores = simcc_decode(simcc_x, simcc_y, self.split_ratio)
        lin, off = warps[:, :, :2], warps[:, :, 2]
        image_xy = np.einsum("nij,nkj->nki", np.linalg.inv(lin), xy - off[:, None, :]) + 0.5
        return image_xy.astype(np.float32), scores


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@dataclass
class WholeBodyOnnxConfig:
    """Settings of the ``keypoints/wholebody-onnx`` stage."""

    pose_model: str = ""
    """Path of the whole-body SimCC model (DWPose ``dw-ll_ucoco_384.onnx``, RTMW exports)."""
    detector_model: str = ""
    """Path of the YOLOX person detector (``yolox_l.onnx``); empty: use the rows' boxes as they are."""
    device: str = "auto"
    """onnxruntime device: ``auto`` (CUDA when onnxruntime-gpu has it), ``cpu`` or ``cuda``."""
    batch_size: int = 32
    """Person crops per pose-model call (a graph with a fixed batch of 1 runs them one by one)."""
    bbox_padding: float = 1.25
    """Box enlargement before the aspect fix (DWPose's 1.25)."""
    simcc_split_ratio: float = 2.0
    """SimCC bins per input pixel."""
    detector_match_iou: float = 0.5
    """A detection replaces the row's box when their IoU reaches this."""
    keypoint_threshold: float = 0.3
    """Score a keypoint needs to count as visible in ``conf_*`` (DWPose draws keypoints above 0.3)."""
    min_visible_fraction: float = 0.5
    """Fraction of a part's keypoints that must be visible for ``has_*``."""

    def __post_init__(self) -> None:
        if not self.pose_model:
            raise ValueError("WholeBodyOnnxConfig.pose_model is empty: give the path of the whole-body .onnx "
                             "(see docs/reference_backends.md)")
        if self.batch_size < 1:
            raise ValueError(f"WholeBodyOnnxConfig.batch_size must be at least 1, got {self.batch_size}")


OUTPUT_FIELDS = ("kp2d_wholebody", "has_kp_body", "has_face", "has_hands", "conf_body", "conf_face", "conf_hands")
"""Record fields the stage writes (rows it did not annotate keep the schema's fill values)."""


@STAGES.register("keypoints/wholebody-onnx")
class WholeBodyOnnxStage(Stage):
    """Whole-body keypoints per person row from a DWPose/RTMW ONNX model (see the module docstring).

    Reads ``image`` (object column of RGB uint8 ``[H, W, 3]``), ``bbox_xyxy`` (``[4]`` px) and, with a
    detector, ``sample_key`` (rows of one image share one detector run); adds :data:`OUTPUT_FIELDS`. The
    sessions open on first use.
    """

    resources = StageResources(num_cpus=1.0)
    """Default actor resources (give the stage ``num_gpus`` in the job config on a GPU cluster)."""

    name = "keypoints"
    required = ("image", "bbox_xyxy")
    outputs = OUTPUT_FIELDS
    config_class = WholeBodyOnnxConfig
    weight_options = ("pose_model", "detector_model")

    @resource
    def models(self) -> tuple[WholeBodyPoseModel, YoloxPersonDetector | None]:
        """The pose model and the detector (None without ``detector_model``), opened once."""
        c = self.config
        pose = WholeBodyPoseModel(c.pose_model, c.device, c.simcc_split_ratio, c.bbox_padding)
        return pose, YoloxPersonDetector(c.detector_model, c.device) if c.detector_model else None

    def __call__(self, batch: Batch) -> Batch:
        _, out = self.start(batch)
        detections: dict[Any, np.ndarray] = {}
        pose = self.models[0]

        def crop(i: int) -> tuple[np.ndarray, np.ndarray]:
            image = check_rgb_image(batch["image"][i])
            box = self._crop_box(image, check_person_box(batch["bbox_xyxy"][i]), batch, i, detections)
            return pose.crop(image, box)

        done = self.per_row(batch, crop)
        if done:
            rows = np.array([i for i, _ in done])
            xy, scores = pose(np.stack([x for _, (x, _) in done]), np.stack([w for _, (_, w) in done]),
                              self.config.batch_size)
            self._fill(out, rows, xy, scores)
        batch.update(out)
        return batch

    def _crop_box(
        self, image: np.ndarray, box: np.ndarray, batch: Batch, i: int, cache: dict[Any, np.ndarray]
    ) -> np.ndarray:
        """The row's box ``[4]``, or the detection that overlaps it most (see the module docstring)."""
        detector = self.models[1]
        if detector is None:
            return box
        key = batch["sample_key"][i] if "sample_key" in batch else i
        if key not in cache:
            cache[key] = detector(image)[0]
        found = cache[key]
        if len(found) == 0:
            return box
        iou = box_iou(box[None], found)[0]
        best = int(iou.argmax())
        return found[best].astype(np.float64) if iou[best] >= self.config.detector_match_iou else box

    def _fill(self, out: Batch, rows: np.ndarray, xy: np.ndarray, scores: np.ndarray) -> None:
        c = self.config
        out["kp2d_wholebody"][rows] = np.concatenate([xy, np.clip(scores, 0.0, 1.0)[..., None]], axis=-1)
        visible = scores >= c.keypoint_threshold
        for name, part in (("body", wb.BODY), ("face", wb.FACE)):
            frac = visible[:, part].mean(axis=1).astype(np.float32)
            out[f"conf_{name}"][rows] = frac
            out["has_kp_body" if name == "body" else "has_face"][rows] = frac >= c.min_visible_fraction
        for side, part in enumerate(wb.HANDS):
            frac = visible[:, part].mean(axis=1).astype(np.float32)
            out["conf_hands"][rows, side] = frac
            out["has_hands"][rows, side] = frac >= c.min_visible_fraction
