"""From a record and its ``crop.jpg`` to one training sample: supervision masks, the regressor's crop,
targets and augmentation.

**Supervision** (:meth:`SamplePreparer.supervision`): ``has_body``, ``has_face`` and ``has_hands`` of the
record, switched off by the quality gates (:class:`pipelines.train.config.QualityGates`), and the 2D
keypoints whose confidence reaches ``kp2d_min_confidence``. A sample with nothing left is not used (the
data stream counts it).

**Crop** (:meth:`SamplePreparer.__call__`): the person window of :func:`model.pear.box_window` around
``bbox_xyxy``, scaled, shifted and rotated at random, maybe mirrored, warped straight out of the stored
crop through ``crop_xyxy`` (whatever context and size the annotate job stored). The keypoints go through
the same affine (and :data:`schemas.keypoints.FLIP_INDEX` when mirrored); the global orientation turns
with the image about the camera axis; a mirrored sample's EHM parameters and per-hand flags are flipped
with :func:`model.flip.flip_ehm_params`. Colours are scaled per channel.

A sample is a dict of numpy arrays (collated into tensors by the loader):

``image`` uint8 ``[3, H, W]``; ``params.<name>`` the target EHM parameters (:mod:`model.ehm_record` names,
``transl`` left out: the losses are root-relative); ``has_body`` / ``has_face`` float ``[]``, ``has_hands``
float ``[2]``; ``kp2d`` float32 ``[133, 3]`` (crop px, weight: confidence where supervised, else 0);
``box_side`` the person box's longer side in crop px (PCK's length); ``affine`` ``[2, 3]`` (source px ->
crop px).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from annotators.images import decode_image
from model.ehm_record import EHM_RECORD_COLUMNS
from model.flip import ShapeMirror, flip_ehm_params
from model.networks.pear import PearConfig
from model.pear import apply_affine_2d, box_window, compose_affine, region_affine, warp_image, window_affine
from pipelines.train.config import AugmentConfig, DataConfig
from schemas.keypoints import FLIP_INDEX, NUM_KEYPOINTS

PARAM_PREFIX = "params."


def target_params(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The record's EHM parameters (float32, :data:`model.ehm_record.EHM_RECORD_COLUMNS` names) but ``transl``."""
    return {name: np.asarray(record[column], np.float32) for name, column in EHM_RECORD_COLUMNS.items()
            if name != "transl"}


def _rotate_z(rotvec: np.ndarray, angle: float) -> np.ndarray:
    """``rotvec  # [3]`` turned by ``angle`` about the camera's z axis (``R' = Rz R``)."""
    from scipy.spatial.transform import Rotation

    return (Rotation.from_rotvec([0.0, 0.0, angle]) * Rotation.from_rotvec(rotvec)).as_rotvec().astype(np.float32)


class SamplePreparer:
    """Turns ``(record, crop JPEG)`` into training or evaluation samples (module docstring).

    Args:
        data: the data config (gates, augmentation, keypoint confidence).
        model: the regressor's config (input size, window scale).
        mirror: how shapes flip (:meth:`model.flip.ShapeMirror.from_ehm` of the training body models).
    """

    def __init__(self, data: DataConfig, model: PearConfig, mirror: ShapeMirror) -> None:
        self.data = data
        self.augment: AugmentConfig = data.augment
        self.model = model
        self.mirror = mirror
        self.gates = data.gates.gates()

    def _off(self, name: str, record: Mapping[str, Any]) -> bool:
        gate = self.gates[name]
        return gate is not None and gate(record)

    def supervision(self, record: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """Masks ``has_body`` ``[]``, ``has_face`` ``[]``, ``has_hands`` ``[2]`` (float32) and keypoint weights
        ``kp_weight  # [133]`` after gating, or None when nothing is left to supervise."""
        has_body = bool(record["has_body"]) and not self._off("body_off", record)
        has_face = bool(record["has_face"]) and not self._off("face_off", record)
        hands = np.asarray(record["has_hands"], bool).copy()
        hands[0] &= not self._off("left_hand_off", record)
        hands[1] &= not self._off("right_hand_off", record)
        conf = np.asarray(record["kp2d_wholebody"], np.float32)[:, 2]
        weight = np.where(conf >= self.data.kp2d_min_confidence, conf, 0.0).astype(np.float32)
        if not (has_body or has_face or hands.any() or (weight > 0).any()):
            return None
        return {"has_body": np.float32(has_body), "has_face": np.float32(has_face),
                "has_hands": hands.astype(np.float32), "kp_weight": weight}

    def nothing(self) -> dict[str, np.ndarray]:
        """Supervision masks that supervise nothing (a sample whose crop cannot be read keeps its place)."""
        return {"has_body": np.float32(0), "has_face": np.float32(0), "has_hands": np.zeros(2, np.float32),
                "kp_weight": np.zeros(NUM_KEYPOINTS, np.float32)}

    def __call__(self, record: Mapping[str, Any], crop_jpeg: bytes | None, supervision: Mapping[str, np.ndarray],
                 rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """One sample (module docstring); ``rng`` None: no augmentation (evaluation); ``crop_jpeg`` None: a
        black image."""
        out_h, out_w = self.model.image_size
        box = np.asarray(record["bbox_xyxy"], np.float64)
        centre, height = box_window(box, out_w / out_h, self.model.box_scale)
        a = self.augment
        rotation, flip, colour = 0.0, False, np.ones(3, np.float32)
        if rng is not None and a.enabled:
            height = height * (1.0 + a.scale * float(np.clip(rng.standard_normal(), -1, 1)))
            centre = centre + a.translation * float(height) * np.clip(rng.standard_normal(2), -1, 1)
            if rng.random() < a.rotation_prob:
                rotation = np.deg2rad(a.rotation_deg * float(np.clip(rng.standard_normal(), -2, 2)))
            flip = bool(rng.random() < a.flip_prob)
            colour = rng.uniform(1 - a.color, 1 + a.color, 3).astype(np.float32)
        affine = window_affine(centre, float(height), (out_h, out_w), rotation=rotation, flip=flip)
        region = np.asarray(record["crop_xyxy"], np.float64)
        if crop_jpeg is None:
            image = np.zeros((out_h, out_w, 3), np.uint8)
        else:
            stored = decode_image(crop_jpeg, source=f"{record.get('key', '')}/crop.jpg")
            image = warp_image(stored, compose_affine(affine, region_affine(region, stored.shape[:2])), (out_h, out_w))
        if not np.all(colour == 1):
            image = np.clip(image.astype(np.float32) * colour, 0, 255).astype(np.uint8)
        kp = np.asarray(record["kp2d_wholebody"], np.float64)
        kp2d = np.concatenate([apply_affine_2d(affine, kp[:, :2]), supervision["kp_weight"][:, None]], -1)
        params = target_params(record)
        hands = np.asarray(supervision["has_hands"], np.float32)
        if rotation:
            params["global_orient"] = _rotate_z(params["global_orient"], rotation)
        if flip:
            kp2d = kp2d[FLIP_INDEX]
            params = flip_ehm_params(params, self.mirror)
            hands = hands[::-1].copy()
        scale = float(np.hypot(*affine[:, 0]))
        side = max(box[2] - box[0], box[3] - box[1]) * scale
        sample = {
            "image": np.ascontiguousarray(image.transpose(2, 0, 1)),
            "has_body": np.float32(supervision["has_body"]),
            "has_face": np.float32(supervision["has_face"]),
            "has_hands": hands,
            "kp2d": kp2d.astype(np.float32),
            "box_side": np.float32(side),
            "affine": affine.astype(np.float32),
        }
        sample.update({PARAM_PREFIX + k: np.asarray(v, np.float32) for k, v in params.items()})
        return sample

