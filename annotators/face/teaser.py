"""Face stage, reference backends ``face/teaser`` (the official TEASER checkpoint run by
:mod:`model.networks.teaser`) and ``face/teaser-onnx`` (an exported TEASER encoder through onnxruntime).

Per person row with a face (``has_face`` and its 478 MediaPipe landmarks ``mp_face_landmarks``), as
TEASER's ``test_image.py`` does it:

1. **Crop**: the landmarks' bounding box gives the centre and ``old_size = (width + height) / 2``; the
   crop side is ``int(old_size * 1.4)`` px, mapped onto 224 px so that its corners land on pixels 0 and
   223 (bilinear, black outside).
2. **Network**: RGB in [0, 1], no mean/std; the crops of all rows of the batch go through the three
   encoders together, ``batch_size`` at a time.
3. **Outputs**: ``flame_shape`` (300 coefficients; fewer are zero-padded to 300), ``flame_expression``
   (TEASER's 50 FLAME expression coefficients in the first 50 of the record's 100; the other 50 are
   zero, i.e. the coefficients of a 100-expression FLAME with the extra components unused),
   ``flame_jaw_pose`` (axis-angle), ``flame_eyelids`` (SMIRK/TEASER's eyelid blendshape weights in
   [0, 1]: [0] left, [1] right), ``has_face`` (True where the encoders ran) and ``conf_face`` (the
   keypoints stage's face confidence, passed through; 1 where the batch has none). TEASER's head
   rotation and orthographic camera have no record field and are not kept.

Landmarks are continuous px; the crop is built on ``x - 0.5`` since OpenCV samples at pixel centres.
See ``docs/reference_backends.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

import schemas
from annotators.base import STAGES, Stage, StageResources, resource
from annotators.batches import Batch
from annotators.images import check_rgb_image
from model.checkpoints import OnnxModel, TorchModel
from model.networks.mobilenetv3 import MobileNetV3Config
from model.networks.teaser import TEASER_INPUT_SIZE, load_teaser
from schemas.keypoints import NUM_FACE_LANDMARKS

log = logging.getLogger(__name__)

FLAME_SHAPE_DIM = schemas.field("flame_shape").shape[0]
FLAME_EXPRESSION_DIM = schemas.field("flame_expression").shape[0]
TEASER_REQUIRED_OUTPUTS = ("shape_params", "expression_params", "jaw_params", "eyelid_params")
"""Outputs the face stage reads from either backend."""


def face_crop_warp(landmarks_xy: np.ndarray, scale: float = 1.4, size: int = TEASER_INPUT_SIZE) -> np.ndarray:
    """TEASER's face crop: ``[2, 3]`` affine from image pixel-index coordinates to crop pixels for
    ``landmarks_xy  # [N, 2]`` (continuous px)."""
    lo, hi = landmarks_xy.min(axis=0), landmarks_xy.max(axis=0)
    side = int(float((hi - lo).sum()) / 2 * scale)
    if side < 1:
        raise ValueError(f"column 'mp_face_landmarks' spans {(hi - lo).tolist()} px: too small for a face crop")
    corner = (lo + hi) / 2 - 0.5 - side / 2  # OpenCV pixel-index coordinates
    s = (size - 1) / side
    return np.array([[s, 0.0, -s * corner[0]], [0.0, s, -s * corner[1]]])


def pad_to(values: np.ndarray, width: int, name: str) -> np.ndarray:
    """``values  # [N, D]`` zero-padded to ``[N, width]`` (``D <= width``)."""
    if values.shape[1] > width:
        raise ValueError(f"{name}: {values.shape[1]} coefficients do not fit the record's {width}")
    return np.pad(values.astype(np.float32), ((0, 0), (0, width - values.shape[1])))


@dataclass
class FaceCropConfig:
    """Face crops and batching (shared by both TEASER backends)."""

    crop_scale: float = 1.4
    """Crop side as a multiple of the landmarks' mean box side (TEASER demo: 1.4)."""
    batch_size: int = 64
    """Face crops per network call."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        if self.crop_scale <= 0 or self.batch_size < 1:
            raise ValueError(f"{type(self).__name__}: crop_scale must be positive and batch_size at least 1")


@dataclass
class TeaserStageConfig(FaceCropConfig):
    """Settings of the ``face/teaser`` stage."""

    checkpoint: str = ""
    """Path of the official ``TEASER_v1.pt`` / ``TEASER_v2.pt`` (SMIRK's ``.pt`` loads too)."""
    backbones: dict[str, list[list[str]]] = field(default_factory=dict)
    """MobileNetV3 block-string tables replacing the official ones, by encoder (``pose``, ``shape``,
    ``expression``), for SMIRK-family checkpoints built on other backbones; empty for the official ones."""
    precision: str = "auto"
    """``auto`` (bfloat16 autocast on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checkpoint:
            raise ValueError("TeaserStageConfig.checkpoint is empty: give the path of TEASER_v*.pt "
                             "(docs/reference_backends.md)")


@dataclass
class TeaserOnnxStageConfig(FaceCropConfig):
    """Settings of the ``face/teaser-onnx`` stage."""

    onnx: str = ""
    """Path of the exported encoder (input ``[B, 3, 224, 224]`` RGB in [0, 1]; outputs shape_params,
    expression_params, jaw_params, eyelid_params, and optionally pose_params, cam)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.onnx:
            raise ValueError("TeaserOnnxStageConfig.onnx is empty: give the path of the TEASER .onnx "
                             "(docs/reference_backends.md)")


OUTPUT_FIELDS = ("flame_shape", "flame_expression", "flame_jaw_pose", "flame_eye_pose", "flame_eyelids", "head_scale",
                 "has_face", "conf_face")
"""Record fields the stage writes (``flame_eye_pose`` and ``head_scale`` stay at their fills: TEASER predicts
neither; rows without a face keep the schema's fill values)."""


class _TeaserStageBase(Stage):
    """Crops, batching and output mapping; subclasses open the network (their :attr:`model` resource)."""

    name = "face"
    resources = StageResources(num_cpus=1.0)
    """Default actor resources (give the stage ``num_gpus`` in the job config on a GPU cluster)."""
    required = ("image", "mp_face_landmarks", "has_face")
    outputs = OUTPUT_FIELDS
    model: Any

    def __call__(self, batch: Batch) -> Batch:
        n, out = self.start(batch)
        conf_in = np.asarray(batch["conf_face"], np.float32) if "conf_face" in batch else np.ones(n, np.float32)
        with_face = np.asarray(batch["has_face"], bool)
        done = self.per_row(batch, lambda i: self._crop(batch["image"][i], batch["mp_face_landmarks"][i]), with_face)
        if done:
            r = np.array([i for i, _ in done])
            x = np.ascontiguousarray(np.stack([c for _, c in done]).transpose(0, 3, 1, 2), np.float32) / 255.0
            pred = self.model(x, self.config.batch_size)
            out["flame_shape"][r] = pad_to(pred["shape_params"], FLAME_SHAPE_DIM, "shape_params")
            out["flame_expression"][r] = pad_to(pred["expression_params"], FLAME_EXPRESSION_DIM, "expression_params")
            out["flame_jaw_pose"][r] = pred["jaw_params"].reshape(len(r), 3)
            out["flame_eyelids"][r] = pred["eyelid_params"].reshape(len(r), 2)
            out["has_face"][r] = True
            out["conf_face"][r] = conf_in[r]
        batch.update(out)
        return batch

    def _crop(self, image: Any, landmarks: Any) -> np.ndarray:
        """224 px RGB uint8 face crop of one row."""
        image = check_rgb_image(image)
        lm = np.asarray(landmarks, np.float64)
        if lm.shape != (NUM_FACE_LANDMARKS, 3) or not np.all(np.isfinite(lm)):
            raise ValueError(f"column 'mp_face_landmarks' must hold finite [478, 3] arrays, got {lm.shape}")
        warp = face_crop_warp(lm[:, :2], self.config.crop_scale)
        return cv2.warpAffine(image, warp, (TEASER_INPUT_SIZE, TEASER_INPUT_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@STAGES.register("face/teaser")
class TeaserStage(_TeaserStageBase):
    """FLAME shape, expression, jaw and eyelids from the official TEASER checkpoint (module docstring).

    Reads ``image``, ``mp_face_landmarks`` ``[478, 3]``, ``has_face`` and (if present) ``conf_face``;
    adds :data:`OUTPUT_FIELDS`. The network loads on first use.
    """

    config_class = TeaserStageConfig
    weight_options = ("checkpoint",)

    @resource
    def model(self) -> TorchModel:
        """The TEASER encoders, loaded once."""
        c = self.config
        backbones = {k: MobileNetV3Config(arch=tuple(tuple(s) for s in v)) for k, v in c.backbones.items()}
        return TorchModel(load_teaser(c.checkpoint, backbones), c.device, c.precision)


@STAGES.register("face/teaser-onnx")
class TeaserOnnxStage(_TeaserStageBase):
    """The same from an exported TEASER encoder through onnxruntime (module docstring)."""

    config_class = TeaserOnnxStageConfig
    weight_options = ("onnx",)

    @resource
    def model(self) -> OnnxModel:
        """The exported encoder, opened once."""
        model = OnnxModel(self.config.onnx, TEASER_REQUIRED_OUTPUTS, self.config.device)
        size = model.spatial_size
        if size is not None and size != (TEASER_INPUT_SIZE, TEASER_INPUT_SIZE):
            raise ValueError(f"{self.config.onnx}: expected a 224x224 input, got {size}")
        return model
