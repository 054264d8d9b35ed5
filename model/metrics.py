"""Keypoint metrics in image space: normalised point errors, PCK and NME, and the lengths they are
normalised by (person box size, inter-ocular distance). Plain numpy; layouts are in :mod:`schemas.keypoints`.
Definitions in ``docs/metrics.md``."""

from __future__ import annotations

import numpy as np


def box_size(box_xyxy: np.ndarray) -> np.ndarray:
    """``max(width, height)`` of ``box_xyxy  # [..., 4]`` -> ``[...]``."""
    box = np.asarray(box_xyxy, dtype=np.float64)
    return np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1])


def normalized_errors(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Point errors divided by a per-instance length.

    ``pred, gt  # [N, K, >=2]`` (x, y first), ``norm  # [N]`` -> ``[N, K]``.
    """
    pred, gt, norm = np.asarray(pred), np.asarray(gt), np.asarray(norm, dtype=np.float64)
    if pred.shape[:2] != gt.shape[:2] or norm.shape != pred.shape[:1]:
        raise ValueError(f"pred {pred.shape}, gt {gt.shape} and norm {norm.shape} disagree")
    if np.any(~(norm > 0)):
        raise ValueError("norm must be positive for every instance")
    return np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1) / norm[:, None]


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray, threshold: float) -> float:
    """Percentage of correct keypoints: share of ``visible  # [N, K]`` keypoints whose error is below
    ``threshold * norm`` (``pred, gt  # [N, K, >=2]``, ``norm  # [N]``, e.g. :func:`box_size`).
    A keypoint that was not predicted must be given a far-away prediction by the caller (it counts as
    wrong, never as absent)."""
    visible = np.asarray(visible, dtype=bool)
    if not visible.any():
        raise ValueError("pck needs at least one visible ground-truth keypoint")
    return float((normalized_errors(pred, gt, norm)[visible] < threshold).mean())


def nme(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray) -> float:
    """Normalised mean error: mean over instances of the mean visible-point error over ``norm  # [N]``."""
    err = normalized_errors(pred, gt, norm)
    visible = np.asarray(visible, dtype=bool)
    per_instance = [err[i][visible[i]].mean() for i in range(len(err)) if visible[i].any()]
    if not per_instance:
        raise ValueError("nme needs at least one instance with a visible ground-truth point")
    return float(np.mean(per_instance))


def interocular(face68: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance (iBUG points 36 and 45) of ``face68  # [..., 68, >=2]`` -> ``[...]``."""
    face68 = np.asarray(face68, dtype=np.float64)
    return np.linalg.norm(face68[..., 36, :2] - face68[..., 45, :2], axis=-1)
