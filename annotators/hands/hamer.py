"""Hands stage, reference backends ``hands/hamer`` (the official ``hamer.ckpt`` run by
:mod:`model.networks.hamer`) and ``hands/hamer-onnx`` (an exported HaMeR encoder through onnxruntime).

Per person row, for each hand (``[0]`` left, ``[1]`` right), as HaMeR's ``demo.py`` and
``ViTDetDataset`` do it:

1. **Box** from the hand's 21 keypoints in ``kp2d_wholebody`` (91-111 left, 112-132 right): the
   min/max of those with confidence above ``min_keypoint_confidence`` (0.5), needing at least
   ``min_keypoints`` (4) of them. A hand without such keypoints that the keypoints stage kept as a
   pose-only hand (``has_hands`` set, e.g. a gloved hand the MediaPipe hand model misses), gets with
   ``pose_boxes`` the hand region the keypoints stage places from BlazePose's wrist, hand and elbow
   points (``mp_pose_landmarks``; :func:`annotators.keypoints.hand_roi_from_pose`), shrunk by
   ``rescale_factor`` so that the crop is that region. Other hands are skipped (``has_hands`` False).
2. **Crop**: centre = box centre, side = the box scaled by ``rescale_factor`` (2.0), expanded to the
   ``BBOX_SHAPE`` aspect (192:256), longer side; a square crop of that side warped to 256 px
   (bilinear, black outside). Left hands are cropped from the horizontally flipped image (centre
   ``x -> W - 1 - x``), so the network always sees a right hand.
3. **Network**: ImageNet mean/std on RGB in [0, 1]; crops of all rows of the batch go through the
   network together, ``batch_size`` at a time (the official demo fixes 8).
4. **Un-flip**: rotations come back as matrices, are turned into axis-angle, and a left hand's
   ``global_orient`` and ``hand_pose`` are mirrored ``(x, y, z) -> (x, -y, -z)`` into the MANO left
   model's convention. ``hand_pose`` is relative to the flat hand (no PCA, no mean pose), joint order
   as MANO and SMPL-X hands (index, middle, pinky, ring, thumb; 3 joints each), so it is directly the
   SMPL-X ``*_hand_pose`` with ``flat_hand_mean=True``.

Outputs ``mano_global_orient [2, 3]`` (crop camera frame: x right, y down, z forward),
``mano_hand_pose [2, 15, 3]``, ``mano_betas [2, 10]``, ``has_hands [2]`` and ``conf_hands [2]``
(the mean confidence of the hand's 21 keypoints, clipped to [0, 1]; 0 for a hand without a box).
Keypoints are continuous px; crops are built on ``x - 0.5`` since OpenCV samples at pixel centres.
See ``docs/reference_backends.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from annotators.base import STAGES, Stage, StageResources, resource
from annotators.batches import Batch
from annotators.images import check_rgb_image, crop_patch, hand_roi_from_pose
from model.checkpoints import OnnxModel, TorchModel
from model.networks.hamer import HAMER_OUTPUTS, IMAGENET_MEAN, IMAGENET_STD, load_hamer
from model.rotations import mirror_rotvec, rotmat_to_rotvec
from schemas import keypoints as wb

log = logging.getLogger(__name__)

HAMER_CROP_SIZE = 256
"""Side of HaMeR's input crop in px."""


# --------------------------------------------------------------------------------------------------
# Boxes, crops and mirroring (pure functions)
# --------------------------------------------------------------------------------------------------


def hand_box(keypoints: np.ndarray, min_confidence: float, min_count: int) -> np.ndarray | None:
    """``keypoints  # [21, 3]`` (x, y, confidence) -> box ``[4]`` (x0, y0, x1, y1) of those above
    ``min_confidence``, or None when fewer than ``min_count`` are."""
    valid = keypoints[:, 2] > min_confidence
    if valid.sum() < min_count:
        return None
    xy = keypoints[valid, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float64)


def expand_to_aspect_ratio(wh: np.ndarray, target: tuple[int, int] | None) -> np.ndarray:
    """Grow ``wh  # [2]`` (width, height) to the aspect of ``target`` (width, height); None: unchanged."""
    if target is None:
        return wh
    w, h = wh
    tw, th = target
    return np.array([w, max(w * th / tw, h)]) if h / w < th / tw else np.array([max(h * tw / th, w), h])


def crop_square(
    box_xyxy: np.ndarray, rescale_factor: float, bbox_shape: tuple[int, int] | None
) -> tuple[np.ndarray, float]:
    """HaMeR's crop for a hand box ``box_xyxy  # [4]``: (centre ``[2]`` px, side px)."""
    center = (box_xyxy[:2] + box_xyxy[2:]) / 2
    side = float(expand_to_aspect_ratio(rescale_factor * (box_xyxy[2:] - box_xyxy[:2]), bbox_shape).max())
    return center, side


def as_rotvec(values: np.ndarray, joints: int, name: str) -> np.ndarray:
    """Network rotations as axis-angle ``[N, joints, 3]``: accepts matrices ``[N, (joints,) 3, 3]`` or
    axis-angle ``[N, (joints,) 3]``."""
    n = len(values)
    if values.shape[-2:] == (3, 3) and values.size == n * joints * 9:
        return rotmat_to_rotvec(torch.from_numpy(values.reshape(n, joints, 3, 3)).double()).float().numpy()
    if values.shape[-1] == 3 and values.size == n * joints * 3:
        return values.reshape(n, joints, 3).astype(np.float32)
    raise ValueError(f"output {name!r} has shape {list(values.shape)}: expected {joints} rotations per sample "
                     "as 3x3 matrices or axis-angle")


def normalize_crops(crops: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """uint8 RGB ``crops  # [N, S, S, 3]`` -> float32 ``[N, 3, S, S]`` in [0, 1], then ``(x - mean) / std``
    per channel when given."""
    x = crops.astype(np.float32) / 255.0
    if mean is not None:
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


@dataclass
class HandCropConfig:
    """Hand boxes, crops and batching (shared by both HaMeR backends)."""

    rescale_factor: float = 2.0
    """Hand box enlargement before the aspect expansion (HaMeR demo's ``--rescale_factor``)."""
    min_keypoint_confidence: float = 0.5
    """Hand keypoints above this confidence make the box (HaMeR demo: 0.5)."""
    min_keypoints: int = 4
    """Hand keypoints needed above the confidence (HaMeR demo: more than 3)."""
    pose_boxes: bool = True
    """Crop pose-only hands (kept by the keypoints stage without hand keypoints) from the body pose's hand
    region; their confidence is the keypoints stage's ``conf_hands``."""
    batch_size: int = 64
    """Hand crops per network call (any size; the official demo fixes 8)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        if self.rescale_factor <= 0:
            raise ValueError(f"{type(self).__name__}.rescale_factor must be positive, got {self.rescale_factor}")
        if self.batch_size < 1 or self.min_keypoints < 1:
            raise ValueError(f"{type(self).__name__}.batch_size and min_keypoints must be at least 1")


@dataclass
class HamerStageConfig(HandCropConfig):
    """Settings of the ``hands/hamer`` stage."""

    checkpoint: str = ""
    """Path of the official ``hamer.ckpt``."""
    model_config: str = ""
    """Path of its ``model_config.yaml`` (default: beside the checkpoint, else one folder up)."""
    backbone: dict[str, Any] = field(default_factory=dict)
    """ViT fields that differ from ViT-H (``embed_dim``, ``depth``, ``num_heads``...), for HaMeR
    variants on another ViT; empty for the official checkpoint."""
    precision: str = "auto"
    """``auto`` (bfloat16 autocast on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checkpoint:
            raise ValueError("HamerStageConfig.checkpoint is empty: give the path of hamer.ckpt "
                             "(docs/reference_backends.md)")


@dataclass
class HamerOnnxStageConfig(HandCropConfig):
    """Settings of the ``hands/hamer-onnx`` stage."""

    onnx: str = ""
    """Path of the exported encoder (input ``[B, 3, S, S]``; outputs pred_cam, global_orient, hand_pose, betas)."""
    input_normalization: str = "unit"
    """What the export expects: ``unit`` (RGB in [0, 1], normalisation inside the graph, as GUAVA's EHM
    tracker feeds its ``hamer.onnx``) or ``imagenet`` (ImageNet mean/std applied here)."""
    input_size: int = HAMER_CROP_SIZE
    """Crop side in px when the graph's input size is not fixed (a fixed size wins)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.onnx:
            raise ValueError("HamerOnnxStageConfig.onnx is empty: give the path of the HaMeR .onnx "
                             "(docs/reference_backends.md)")
        if self.input_normalization not in ("unit", "imagenet"):
            raise ValueError(f"HamerOnnxStageConfig.input_normalization must be 'unit' or 'imagenet', "
                             f"got {self.input_normalization!r}")


OUTPUT_FIELDS = ("mano_global_orient", "mano_hand_pose", "mano_betas", "hand_scale", "has_hands", "conf_hands")
"""Record fields the stage writes (``hand_scale`` stays 1: HaMeR predicts no scale; rows and hands it did not
annotate keep the schema's fill values)."""


class _HamerStageBase(Stage):
    """Boxes, crops, batching and un-flipping; subclasses open the network (:attr:`model`, which also
    sets ``crop_size`` and ``bbox_shape``) and run it (:meth:`_predict`)."""

    name = "hands"
    resources = StageResources(num_cpus=1.0)
    """Default actor resources (give the stage ``num_gpus`` in the job config on a GPU cluster)."""
    required = ("image", "kp2d_wholebody")
    outputs = OUTPUT_FIELDS
    crop_size: int = HAMER_CROP_SIZE
    bbox_shape: tuple[int, int] | None = (192, 256)

    def _predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 RGB ``crops  # [N, S, S, 3]`` of right hands -> outputs named as :data:`HAMER_OUTPUTS`."""
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        _, out = self.start(batch)
        self.model  # opened first: it sets crop_size and bbox_shape  # noqa: B018
        poses = self.config.pose_boxes and all(c in batch for c in ("mp_pose_landmarks", "has_hands", "conf_hands"))
        done = self.per_row(batch, lambda i: self._row_crops(
            batch["image"][i], batch["kp2d_wholebody"][i],
            (batch["mp_pose_landmarks"][i], batch["has_hands"][i], batch["conf_hands"][i]) if poses else None))
        crops, where = [], []  # where: (row, side)
        for i, found in done:
            for side, crop, conf in found:
                crops.append(crop)
                where.append((i, side))
                out["conf_hands"][i, side] = conf
        if crops:
            self._fill(out, np.array(where), self._predict(np.stack(crops)))
        batch.update(out)
        return batch

    def _row_crops(self, image: Any, keypoints: Any, pose: tuple[Any, Any, Any] | None = None,
                   ) -> list[tuple[int, np.ndarray, float]]:
        """(side, crop, confidence) for each hand of one row with a usable box; ``pose``: the row's
        ``(mp_pose_landmarks [33, 4], has_hands [2], conf_hands [2])`` for pose-only hands, or None."""
        kp = np.asarray(keypoints, np.float64)
        if kp.shape != (wb.NUM_KEYPOINTS, 3):
            raise ValueError(f"column 'kp2d_wholebody' must hold [133, 3] arrays, got {kp.shape}")
        c = self.config
        found, flipped = [], None
        for side, part in enumerate(wb.HANDS):
            box = hand_box(kp[part], c.min_keypoint_confidence, c.min_keypoints)
            conf = float(np.clip(kp[part, 2].mean(), 0.0, 1.0))
            if box is None and pose is not None and bool(np.asarray(pose[1], bool)[side]):
                box = self._pose_box(np.asarray(pose[0], np.float64), side)
                conf = float(np.clip(np.asarray(pose[2], np.float64)[side], 0.0, 1.0))
            if box is None:
                continue
            image = check_rgb_image(image)
            center, side_px = crop_square(box, c.rescale_factor, self.bbox_shape)
            if side == 0:  # left hand: crop the mirrored image, where it is a right hand
                flipped = np.ascontiguousarray(image[:, ::-1]) if flipped is None else flipped
                center = np.array([image.shape[1] - center[0], center[1]])
            crop = crop_patch(flipped if side == 0 else image, center, side_px, self.crop_size)
            found.append((side, crop, conf))
        return found

    def _pose_box(self, pose: np.ndarray, side: int) -> np.ndarray:
        """Box ``[4]`` whose HaMeR crop is the hand region of ``pose  # [33, 4]`` that the keypoints stage
        places at its default region scales."""
        if pose.shape != (33, 4) or not np.isfinite(pose).all():
            raise ValueError(f"column 'mp_pose_landmarks' must hold finite [33, 4] arrays, got {pose.shape}")
        roi = hand_roi_from_pose(pose[:, :2], side)
        half = roi.size / (2.0 * self.config.rescale_factor)
        return np.array([roi.cx - half, roi.cy - half, roi.cx + half, roi.cy + half])

    def _fill(self, out: Batch, where: np.ndarray, pred: dict[str, np.ndarray]) -> None:
        rows, sides = where[:, 0], where[:, 1]
        orient = as_rotvec(pred["global_orient"], 1, "global_orient")[:, 0]
        pose = as_rotvec(pred["hand_pose"], 15, "hand_pose")
        left = sides == 0
        orient[left] = mirror_rotvec(orient[left])
        pose[left] = mirror_rotvec(pose[left])
        out["mano_global_orient"][rows, sides] = orient
        out["mano_hand_pose"][rows, sides] = pose
        out["mano_betas"][rows, sides] = pred["betas"].reshape(len(rows), 10)
        out["has_hands"][rows, sides] = True


@STAGES.register("hands/hamer")
class HamerStage(_HamerStageBase):
    """MANO hands from the official HaMeR checkpoint (see the module docstring).

    Reads ``image`` (RGB uint8 ``[H, W, 3]`` per row) and ``kp2d_wholebody`` (``[133, 3]``); adds
    :data:`OUTPUT_FIELDS`. The network loads on first use.
    """

    config_class = HamerStageConfig
    weight_options = ("checkpoint", "model_config")

    @resource
    def model(self) -> TorchModel:
        """The HaMeR network, loaded once (sets ``bbox_shape`` and the input normalisation)."""
        c = self.config
        network = load_hamer(c.checkpoint, c.model_config or None, c.backbone)
        self.bbox_shape = network.config.bbox_shape
        self._mean = np.array(network.config.image_mean, np.float32)
        self._std = np.array(network.config.image_std, np.float32)
        return TorchModel(network, c.device, c.precision)

    def _predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        return self.model(normalize_crops(crops, self._mean, self._std), self.config.batch_size)


@STAGES.register("hands/hamer-onnx")
class HamerOnnxStage(_HamerStageBase):
    """MANO hands from an exported HaMeR encoder through onnxruntime (see the module docstring)."""

    config_class = HamerOnnxStageConfig
    weight_options = ("onnx",)

    @resource
    def model(self) -> OnnxModel:
        """The exported encoder, opened once (sets ``crop_size`` from its input)."""
        c = self.config
        model = OnnxModel(c.onnx, HAMER_OUTPUTS, c.device)
        size = model.spatial_size
        if size is not None and size[0] != size[1]:
            raise ValueError(f"{c.onnx}: expected a square input, got {size}")
        self.crop_size = size[0] if size is not None else c.input_size
        return model

    def _predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        if self.config.input_normalization == "imagenet":
            x = normalize_crops(crops, np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32))
        else:
            x = normalize_crops(crops, None, None)
        return self.model(x, self.config.batch_size)
