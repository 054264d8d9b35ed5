"""Hands stage, embedded backend ``hands/mano-ik``: MANO hands from MediaPipe's 3D hand landmarks.

Per person row, for each hand the keypoints stage found (``has_hands[side]``), the 21 metric landmarks
``mp_hand_landmarks_3d[side]`` are fitted by batched inverse kinematics (:mod:`fitting.hand_ik`): an
analytic initialisation, then a few Levenberg-Marquardt steps with twist, pose and shape priors. All hands of
the batch are solved together on one device; left hands are mirrored, solved with the right model and
mirrored back into the MANO left model's convention.

Outputs (``[0]`` left, ``[1]`` right, as the record):

- ``mano_global_orient [2, 3]``: wrist rotation in MediaPipe's hand world frame, whose axes follow the
  image (x right, y down, z away from the camera), so it is the hand's orientation in the camera frame
  under a weak-perspective view of the hand crop;
- ``mano_hand_pose [2, 15, 3]``: finger rotations relative to the **flat hand**, in MANO's joint order
  (index, middle, pinky, ring, thumb; 3 joints each), which is SMPL-X's ``left_hand_pose`` /
  ``right_hand_pose`` order and frame: use them as SMPL-X hand poses with ``flat_hand_mean=True`` (the
  project's body models), or subtract the model's ``hands_mean`` for smplx's default ``flat_hand_mean=False``;
- ``mano_betas [2, 10]``: MANO shape; ``hand_scale [2]``: the fitted scale of the MANO hand;
- ``has_hands [2]``: True where a hand was fitted; ``conf_hands [2]``: the keypoints stage's hand
  presence times ``exp(-(rmse / residual_scale)^2)`` of the fit.

**Pose-only hands** (``has_hands`` set, ``has_hand_landmarks`` not: the keypoints stage kept a hand its
hand model did not find, e.g. a gloved one): ``mano_global_orient`` turns the mean hand's wrist, index
and pinky knuckles onto BlazePose's wrist, index and pinky points (``mp_pose_landmarks``, image px with
BlazePose's relative depth, so in the camera frame's axes: :func:`fitting.hand_ik.orient_hand_from_palm`);
``mano_hand_pose`` is MANO's mean pose (``hands_mean``, relative to the flat hand), the betas zero, the
scale 1 and ``conf_hands`` the keypoints stage's. Without a ``has_hand_landmarks`` column every hand with
``has_hands`` is taken to have landmarks.

Hands without landmarks, and rows an earlier stage failed, get the schema's fill values
(``has_hands`` False). A hand whose landmarks are not finite fails its row (``error_stage = "hands"``).
See ``docs/hands_face.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from annotators.base import STAGES, FitStage, FitStageConfig, good_rows, resource
from annotators.batches import Batch
from fitting.hand_ik import HandIkOptions, HandKeypoints, fit_confidence, orient_hand_from_palm, solve_hand_ik
from model.assets.loaders import load_mean_hand_pose
from model.body_models import MANO
from schemas.keypoints import POSE_HAND_POINTS

log = logging.getLogger(__name__)

HAND_FIELDS = ("mano_global_orient", "mano_hand_pose", "mano_betas", "hand_scale", "has_hands", "conf_hands")
"""Columns the stage writes."""


@dataclass(frozen=True)
class ManoIkConfig(FitStageConfig, HandIkOptions):
    """Settings of the ``hands/mano-ik`` stage: the solver's (:class:`fitting.hand_ik.HandIkOptions`) and
    the stage's (:class:`annotators.base.FitStageConfig`)."""

    residual_scale: float = 0.015
    """Fit RMSE (metres) at which the confidence factor is ``exp(-1)``."""


@STAGES.register("hands/mano-ik")
class ManoIkStage(FitStage):
    """MANO hands by inverse kinematics on MediaPipe's 3D hand landmarks (see the module docstring).

    Reads ``mp_hand_landmarks_3d [2, 21, 3]``, ``has_hands [2]``, ``conf_hands [2]`` (optional, 1 when
    absent), and for pose-only hands ``has_hand_landmarks [2]`` and ``mp_pose_landmarks [33, 4]``;
    writes :data:`HAND_FIELDS`. MANO loads on first use.
    """

    name = "hands"
    config_class = ManoIkConfig
    required = ("mp_hand_landmarks_3d", "has_hands")
    requirement_hint = "run a keypoints stage first"
    outputs = HAND_FIELDS

    def build_layer(self) -> HandKeypoints:
        return HandKeypoints(MANO.from_dir(self.context.body_model_folder(self.name), "right"))

    def __call__(self, batch: Batch) -> Batch:
        n, out = self.start(batch)
        presence = np.asarray(batch["conf_hands"], np.float32) if "conf_hands" in batch else np.ones((n, 2), np.float32)
        has_landmarks = (np.stack([np.asarray(v, bool) for v in batch["has_hand_landmarks"]]) if
                         "has_hand_landmarks" in batch and n else None)
        where, targets, pose_where, palms = [], [], [], []
        for i in np.flatnonzero(good_rows(batch)):
            landmarks = np.asarray(batch["mp_hand_landmarks_3d"][i], np.float64)
            found = np.asarray(batch["has_hands"][i], bool)
            real = found if has_landmarks is None else found & has_landmarks[i]
            sides, pose_sides = np.flatnonzero(real), np.flatnonzero(found & ~real)
            reason = _landmark_problem(landmarks, sides)
            palm = None
            if not reason and len(pose_sides):
                palm, reason = _pose_palms(batch, i, pose_sides)
            if reason:
                self.fail(batch, i, reason)
                continue
            for side in sides:
                where.append((i, side))
                targets.append(landmarks[side])
            for k, side in enumerate(pose_sides):
                pose_where.append((i, side))
                palms.append(palm[k])
        if where:
            self._fit(out, np.array(where), np.stack(targets), presence)
        if pose_where:
            self._orient(out, np.array(pose_where), np.stack(palms), presence)
        batch.update(out)
        return batch

    @resource
    def mean_hand_pose(self) -> np.ndarray:
        """MANO's mean finger poses ``[2, 15, 3]`` (left, right), read once."""
        return load_mean_hand_pose(self.context.body_model_folder(self.name)).astype(np.float32)

    def _orient(self, out: Batch, where: np.ndarray, palms: np.ndarray, presence: np.ndarray) -> None:
        """Pose-only hands ``palms  # [H, 3, 3]`` at ``where  # [H, 2]`` (row, side) into ``out``."""
        mean = self.mean_hand_pose
        for part, palm in self.chunks(where, palms):
            rows, sides = part.T
            orient = orient_hand_from_palm(self.layer, palm, torch.as_tensor(sides == 0, device=palm.device))
            out["mano_global_orient"][rows, sides] = orient.cpu().numpy()
            out["mano_hand_pose"][rows, sides] = mean[sides]
            out["has_hands"][rows, sides] = True
            out["conf_hands"][rows, sides] = np.clip(presence[rows, sides], 0.0, 1.0)
            log.debug("mano-ik: %d pose-only hands", len(rows))

    def _fit(self, out: Batch, where: np.ndarray, targets: np.ndarray, presence: np.ndarray) -> None:
        """Solve the hands ``targets  # [H, 21, 3]`` at ``where  # [H, 2]`` (row, side) into ``out``."""
        cfg = self.config
        for part, target in self.chunks(where, targets):
            rows, sides = part.T
            result = solve_hand_ik(self.layer, target, torch.as_tensor(sides == 0, device=target.device), cfg)
            fit_conf = fit_confidence(result.rmse, cfg.residual_scale).cpu().numpy()
            betas = np.zeros((len(rows), out["mano_betas"].shape[-1]), np.float32)
            k = min(betas.shape[1], result.betas.shape[1])
            betas[:, :k] = result.betas[:, :k].cpu().numpy()
            out["mano_global_orient"][rows, sides] = result.global_orient.cpu().numpy()
            out["mano_hand_pose"][rows, sides] = result.hand_pose.cpu().numpy()
            out["mano_betas"][rows, sides] = betas
            out["hand_scale"][rows, sides] = result.scale.cpu().numpy()
            out["has_hands"][rows, sides] = True
            out["conf_hands"][rows, sides] = np.clip(presence[rows, sides], 0.0, 1.0) * fit_conf
            log.debug("mano-ik: %d hands, rmse mm %s", len(rows), np.round(result.rmse.cpu().numpy() * 1e3, 1))


def _pose_palms(batch: Batch, row: int, sides: np.ndarray) -> tuple[np.ndarray | None, str]:
    """BlazePose's wrist, index and pinky points ``[len(sides), 3, 3]`` (x px, y px, z) of one row's
    pose-only hands, or ``(None, reason)``."""
    if "mp_pose_landmarks" not in batch:
        return None, ("hands stage: a hand has has_hands but not has_hand_landmarks, and there is no "
                      "'mp_pose_landmarks' column to place it from (run keypoints/mediapipe first)")
    pose = np.asarray(batch["mp_pose_landmarks"][row], np.float64)
    if pose.shape != (33, 4):
        return None, f"column 'mp_pose_landmarks' must hold [33, 4] arrays, got {list(pose.shape)}"
    palms = pose[[list(POSE_HAND_POINTS[side]) for side in sides], :3]
    if not np.isfinite(palms).all():
        return None, "column 'mp_pose_landmarks': a pose-only hand's points are NaN or infinite"
    for side, palm in zip(sides, palms):
        if np.linalg.norm(np.cross(palm[1] - palm[0], palm[2] - palm[0])) <= 0:
            return None, (f"column 'mp_pose_landmarks': the {('left', 'right')[side]} hand's wrist, index "
                          "and pinky points are collinear; they cannot orient a hand")
    return palms, ""


def _landmark_problem(landmarks: np.ndarray, sides: np.ndarray) -> str:
    """Why one row's ``mp_hand_landmarks_3d`` cannot be fitted, or ``""``."""
    if landmarks.shape != (2, 21, 3):
        return f"column 'mp_hand_landmarks_3d' must hold [2, 21, 3] arrays, got {list(landmarks.shape)}"
    for side in sides:
        hand = landmarks[side]
        name = ("left", "right")[side]
        if not np.isfinite(hand).all():
            return f"column 'mp_hand_landmarks_3d': the {name} hand has NaN or infinite landmarks"
        if np.ptp(hand, axis=0).max() <= 0:
            return f"column 'mp_hand_landmarks_3d': the {name} hand's landmarks all coincide although has_hands is set"
    return ""
