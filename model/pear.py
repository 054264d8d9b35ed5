"""Using a trained PEAR regressor: crop geometry, the crop camera, checkpoints and :class:`PearPredictor`.

**Crop geometry.** A person box is widened (or heightened) to the crop's aspect (192 : 256 for the ViT),
scaled by ``box_scale`` and centred on the box (:func:`box_window`); :func:`window_affine` maps
source-image pixels to crop pixels (continuous coordinates, origin at the top-left corner, as the record),
with an optional rotation about the crop centre and a horizontal flip for augmentation, and
:func:`warp_image` samples the crop (bilinear, black outside). The trainer and the predictor use the same
functions, so a checkpoint sees at inference the same window of the person as in training (the trainer warps
it out of the record's stored ``crop.jpg``, the predictor out of the full image: the same geometry, resampled
once more in training).

**The crop camera and the real one.** The network's weak-perspective camera ``(s, tx, ty)`` lives in the
crop (:func:`model.networks.pear.cam_to_translation`). :func:`camera_translation` turns it into the
translation that the record's pinhole camera ``K`` needs for the same image of the body: the depth scales
so that one metre spans as many crop pixels in both, the lateral shift so that the model origin projects
to the same crop pixel. :func:`crop_cam` is its inverse (targets and corpus statistics).

**Checkpoints.** :func:`load_regressor` reads a checkpoint written by ``pearl train`` (a Lightning
checkpoint) with :func:`model.checkpoints.read_checkpoint`
(``weights_only``): the network weights (``regressor.*``, the mean parameters among them as the buffer
``init_params``) and the model and training configs (``checkpoint["pearl"]``). :func:`checkpoint_digest` is the short sha256 that records name it by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from model.checkpoints import CheckpointError, TorchModel, read_checkpoint
from model.networks.pear import PearConfig, PearRegressor, cam_to_translation
from model.rotations import rotmat_to_rotvec

STATE_PREFIX = "regressor."
"""Prefix of the network's weights in a training checkpoint's ``state_dict``."""


# --------------------------------------------------------------------------------------------------
# Crop geometry
# --------------------------------------------------------------------------------------------------


def box_window(box_xyxy: np.ndarray, aspect: float, box_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``[..., 2]`` and height ``[...]`` (px) of the crop window of ``box_xyxy  # [..., 4]``: the box
    widened or heightened to ``aspect`` (width / height), then scaled by ``box_scale``."""
    box = np.asarray(box_xyxy, np.float64)
    centre = (box[..., :2] + box[..., 2:]) / 2
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    height = np.maximum(h, w / aspect) * box_scale
    return centre, np.maximum(height, 1e-3)


def window_affine(centre: np.ndarray, height: float, out_hw: tuple[int, int], *, rotation: float = 0.0,
                  flip: bool = False) -> np.ndarray:
    """``[2, 3]`` affine from source-image px to crop px: the window of ``height`` px around ``centre  # [2]``
    fills the ``out_hw`` crop, rotated by ``rotation`` rad about the crop centre (image content turns
    clockwise on screen for positive angles: ``R = [[cos, -sin], [sin, cos]]`` in x-right, y-down pixels),
    then mirrored left-right when ``flip``."""
    out_h, out_w = out_hw
    scale = out_h / float(height)
    c, s = np.cos(rotation), np.sin(rotation)
    rot = np.array([[c, -s], [s, c]]) * scale
    a = np.zeros((2, 3))
    a[:, :2] = rot
    a[:, 2] = np.array([out_w / 2, out_h / 2]) - rot @ np.asarray(centre, np.float64)
    if flip:
        a[0] = -a[0]
        a[0, 2] += out_w
    return a


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The ``[2, 3]`` affine ``outer ∘ inner``."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], 1)


def apply_affine_2d(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``affine  # [2, 3]`` applied to ``points  # [..., 2]``."""
    p = np.asarray(points, np.float64)
    return p @ affine[:, :2].T + affine[:, 2]


def warp_image(image: np.ndarray, affine: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``image  # [h, w, 3]`` uint8 sampled through ``affine`` (image px -> crop px, continuous coordinates)
    into an ``out_hw`` crop, bilinear, black outside."""
    out_h, out_w = out_hw
    m = affine.copy()
    m[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5  # continuous -> OpenCV's pixel-index coordinates
    return cv2.warpAffine(np.ascontiguousarray(image), m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def region_affine(region_xyxy: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``[2, 3]`` affine from the pixels of an image showing ``region_xyxy`` (source px) resized to ``size_hw``
    back to source-image px (a stored ``crop.jpg`` and its ``crop_xyxy``)."""
    x0, y0, x1, y1 = np.asarray(region_xyxy, np.float64)
    h, w = size_hw
    return np.array([[(x1 - x0) / w, 0.0, x0], [0.0, (y1 - y0) / h, y0]])


# --------------------------------------------------------------------------------------------------
# Crop camera <-> the record's pinhole camera
# --------------------------------------------------------------------------------------------------


def camera_translation(cam: np.ndarray, affine: np.ndarray, intrinsics: np.ndarray, focal_px: float,
                       out_hw: tuple[int, int]) -> np.ndarray:
    """Camera-frame translation ``[N, 3]`` (metres, ``smplx_transl``) under ``intrinsics  # [N, 3, 3]`` of the
    body the crop camera sees with ``cam  # [N, 3]``, for crops made by ``affine  # [N, 2, 3]`` (no rotation or
    flip: uniform scale ``a`` and shift ``b``). Matching one metre's span and the origin's pixel:
    ``Tz = a fx Tz_crop / f`` and ``T_xy = t_xy + (centre - a c - b) / k`` with ``k = f / Tz_crop``."""
    cam = np.asarray(cam, np.float64)
    t_crop = cam_to_translation(torch.as_tensor(cam), focal_px, out_hw[0]).numpy()  # [N, 3]
    a = np.asarray(affine, np.float64)[:, [0, 1], [0, 1]]  # [N, 2] scale x, y
    b = np.asarray(affine, np.float64)[:, :, 2]  # [N, 2]
    k = np.asarray(intrinsics, np.float64)
    f_img = np.stack([k[:, 0, 0], k[:, 1, 1]], -1)
    c_img = np.stack([k[:, 0, 2], k[:, 1, 2]], -1)
    per_m = focal_px / t_crop[:, 2:]  # crop px per metre at the body
    depth = a[:, :1] * f_img[:, :1] / per_m  # [N, 1]
    centre = np.array([out_hw[1] / 2, out_hw[0] / 2])
    shift = t_crop[:, :2] + (centre - a * c_img - b) / per_m
    return np.concatenate([shift, depth], -1)


def crop_cam(transl: np.ndarray, affine: np.ndarray, intrinsics: np.ndarray, focal_px: float,
             out_hw: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`camera_translation`: the crop camera ``[N, 3]`` ``(s, tx, ty)`` of a body at
    ``transl  # [N, 3]`` under ``intrinsics  # [N, 3, 3]``, for crops made by ``affine  # [N, 2, 3]``."""
    t = np.asarray(transl, np.float64)
    a = np.asarray(affine, np.float64)[:, [0, 1], [0, 1]]
    b = np.asarray(affine, np.float64)[:, :, 2]
    k = np.asarray(intrinsics, np.float64)
    f_img = np.stack([k[:, 0, 0], k[:, 1, 1]], -1)
    c_img = np.stack([k[:, 0, 2], k[:, 1, 2]], -1)
    depth = np.maximum(t[:, 2:], 1e-3)
    per_m = a[:, :1] * f_img[:, :1] / depth  # crop px per metre
    t_crop_z = focal_px / per_m
    s = 2.0 * focal_px / (out_hw[0] * t_crop_z)
    centre = np.array([out_hw[1] / 2, out_hw[0] / 2])
    shift = t[:, :2] - (centre - a * c_img - b) / per_m
    return np.concatenate([s, shift], -1)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoint_digest(path: str | Path) -> str:
    """First 12 hex digits of the checkpoint file's sha256 (what ``pearl predict`` records in ``backends``:
    ``body/pear@<digest>``; an annotate run with the ``body/pear`` stage records the stage version and its
    resolved options, the checkpoint path among them, in ``manifest.json``)."""
    from model.assets.files import file_sha256

    return file_sha256(Path(path))[:12]


@dataclass(frozen=True)
class LoadedRegressor:
    """A regressor read from a checkpoint."""

    network: PearRegressor
    """The network in eval mode, on the CPU."""
    config: PearConfig
    """Its model config."""
    train_config: dict[str, Any]
    """The resolved training config the checkpoint was written with (empty when unknown)."""
    digest: str
    """:func:`checkpoint_digest` of the file."""


def load_regressor(path: str | Path) -> LoadedRegressor:
    """The regressor of a ``pearl train`` checkpoint (module docstring); :class:`CheckpointError` names
    what is missing or does not fit."""
    path = Path(path)
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a pearl training checkpoint (a {type(obj).__name__})")
    meta = obj.get("pearl")
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path}: no 'pearl' entry with the model config; give a checkpoint written by "
                              "`pearl train`")
    try:
        config = PearConfig.from_dict(meta["model"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its model config cannot be read ({exc})") from None
    train_config = dict(meta.get("config") or {})
    state = obj.get("state_dict", obj)
    weights = {k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    if not weights:
        raise CheckpointError(f"{path}: no '{STATE_PREFIX}*' weights in its state dict")
    network = PearRegressor(config)
    try:
        network.load_state_dict(weights)  # strict: every key present, none left over, every shape equal
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"{path}: weights do not fit the model config ({detail})") from None
    return LoadedRegressor(network.eval(), config, train_config, checkpoint_digest(path))


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------


def regressor_crops(images: Sequence[np.ndarray], image_index: np.ndarray, boxes: np.ndarray,
                    config: PearConfig) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops ``[N, H, W, 3]`` of the persons ``boxes  # [N, 4]`` in ``images[image_index[n]]`` and the
    affines ``[N, 2, 3]`` (image px -> crop px) that made them (no augmentation)."""
    out_hw = config.image_size
    crops = np.zeros((len(boxes), out_hw[0], out_hw[1], 3), np.uint8)
    affines = np.zeros((len(boxes), 2, 3))
    for n, (box, i) in enumerate(zip(np.asarray(boxes, np.float64), image_index)):
        centre, height = box_window(box, out_hw[1] / out_hw[0], config.box_scale)
        affines[n] = window_affine(centre, float(height), out_hw)
        crops[n] = warp_image(images[int(i)], affines[n], out_hw)
    return crops, affines


def normalized_batch(crops: np.ndarray, config: PearConfig) -> np.ndarray:
    """uint8 crops ``[N, H, W, 3]`` -> the network's float32 input ``[N, 3, H, W]``."""
    x = crops.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(config.image_mean, np.float32)[:, None, None]
    std = np.asarray(config.image_std, np.float32)[:, None, None]
    return (x - mean) / std


def ehm_params_from_outputs(outputs: dict[str, Any], translation: np.ndarray | None = None) -> dict[str, Tensor]:
    """EHM forward parameters ``{name: [N, ...]}`` from the network's outputs (rotation matrices as
    axis-angle; eye rotations zero, eyelids as predicted; hands at the model's mean shape, scale one) and an
    optional ``translation  # [N, 3]``."""
    o = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for k, v in outputs.items()}
    n = o["betas"].shape[0]
    params = {
        "betas": o["betas"],
        "global_orient": rotmat_to_rotvec(o["global_orient"]),
        "body_pose": rotmat_to_rotvec(o["body_pose"]),
        "mano_hand_pose": rotmat_to_rotvec(o["hand_pose"]),
        "flame_shape": o["flame_shape"],
        "flame_expression": o["flame_expression"],
        "flame_jaw_pose": rotmat_to_rotvec(o["jaw_pose"]),
        "flame_eye_pose": o["betas"].new_zeros(n, 6),
        "flame_eyelids": o["flame_eyelids"],
        "head_scale": o["head_scale"],
    }
    if translation is not None:
        params["transl"] = torch.as_tensor(np.asarray(translation), dtype=o["betas"].dtype)
    return params


class PearPredictor:
    """A trained regressor applied to person boxes: :meth:`predict` returns record columns.

    Args:
        checkpoint: a ``pearl train`` checkpoint.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``...
        precision: ``auto`` (bfloat16 autocast on CUDA, float32 on the CPU), ``float32``, ``bfloat16``.
        batch_size: crops per network call.
    """

    def __init__(self, checkpoint: str | Path, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 32) -> None:
        loaded = load_regressor(checkpoint)
        self.config = loaded.config
        self.digest = loaded.digest
        self.train_config = loaded.train_config
        self.batch_size = batch_size
        self.runner = TorchModel(loaded.network, device=device, precision=precision)

    def network_outputs(self, images: Sequence[np.ndarray], image_index: np.ndarray, boxes: np.ndarray,
                        ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The network's outputs (numpy, ``[N, ...]``) for ``boxes  # [N, 4]`` in ``images[image_index]``, and
        the crop affines ``[N, 2, 3]``."""
        crops, affines = regressor_crops(images, np.asarray(image_index), np.asarray(boxes), self.config)
        return self.runner(normalized_batch(crops, self.config), batch_size=self.batch_size), affines

    def predict(self, images: Sequence[np.ndarray], boxes: np.ndarray, intrinsics: np.ndarray,
                image_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """EHM record columns ``{column: [N, ...]}`` for person ``boxes  # [N, 4]`` (image px) in ``images``
        (uint8 ``[H, W, 3]``; ``image_index  # [N]`` says which image each box is in, default: box ``n`` in
        image ``n``), seen by cameras ``intrinsics  # [N, 3, 3]`` (an unknown camera: the image-diagonal
        focal length of ``fitting.camera.default_intrinsics``).

        Columns: the EHM parameters under their record names (:mod:`model.ehm_record`, with the SMPL-X hand,
        jaw and eye columns derived from them), ``smplx_transl`` in the camera frame, ``cam_intrinsics``,
        ``has_body`` / ``has_face`` / ``has_hands`` True, and ``pred_cam`` (the crop camera).
        """
        from model.ehm_record import record_columns_from_ehm_params

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        index = np.arange(len(boxes)) if image_index is None else np.asarray(image_index, np.int64)
        if len(index) != len(boxes):
            raise ValueError(f"image_index has {len(index)} entries for {len(boxes)} boxes")
        intrinsics = np.asarray(intrinsics, np.float64).reshape(-1, 3, 3)
        if len(intrinsics) != len(boxes):
            raise ValueError(f"intrinsics: {len(intrinsics)} matrices for {len(boxes)} boxes")
        n = len(boxes)
        if n == 0:
            return {}
        outputs, affines = self.network_outputs(images, index, boxes)
        transl = camera_translation(outputs["cam"], affines, intrinsics, self.config.focal_px, self.config.image_size)
        params = ehm_params_from_outputs(outputs, transl)
        columns = record_columns_from_ehm_params(pad_coefficients(params))
        columns["cam_intrinsics"] = np.asarray(intrinsics, np.float32)
        columns["pred_cam"] = np.asarray(outputs["cam"], np.float32)
        for name in ("has_body", "has_face"):
            columns[name] = np.ones(n, bool)
        columns["has_hands"] = np.ones((n, 2), bool)
        return columns


def pad_coefficients(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """EHM parameters with the coefficient vectors zero-padded to the record's lengths (SMPL-X betas 10,
    FLAME shape 300, expression 100) and the hands' shape and scale filled (zeros, ones)."""
    import schemas

    out = dict(params)
    n = next(iter(params.values())).shape[0]
    for name, column in (("betas", "smplx_betas"), ("flame_shape", "flame_shape"),
                         ("flame_expression", "flame_expression")):
        size = schemas.field(column).shape[0]
        value = out[name]
        if value.shape[-1] > size:
            raise ValueError(f"{name}: {value.shape[-1]} coefficients, the record holds {size}")
        out[name] = torch.nn.functional.pad(value, (0, size - value.shape[-1]))
    out.setdefault("mano_betas", torch.zeros(n, 2, 10, dtype=out["betas"].dtype))
    out.setdefault("hand_scale", torch.ones(n, 2, dtype=out["betas"].dtype))
    return out
