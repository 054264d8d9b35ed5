"""Face stage, embedded backend ``face/flame-fit``: FLAME fitted to MediaPipe's face landmarks.

Per person row with a face (``has_face``), the 478 landmarks ``mp_face_landmarks`` (x, y image px, z
relative depth in px units) are fitted through FLAME's MediaPipe landmark embedding (105 points) and the
two iris centres, with a weak-perspective camera and shape / expression / jaw / eye / eyelid priors
(:mod:`fitting.face_fit`). All faces of the batch are solved together on one device.

Outputs:

- ``flame_shape [300]``: the first ``num_shape`` coefficients fitted, the rest zero;
- ``flame_expression [100]``: the first ``num_expression`` fitted, the rest zero;
- ``flame_jaw_pose [3]``, ``flame_eye_pose [6]`` (left eye, right eye; zero without ``fit_eyes``);
- ``flame_eyelids [2]``: fitted when the body-model folder has FLAME's eyelid blend shapes
  (``flame/l_eyelid.npy``, ``flame/r_eyelid.npy``), else zero (the synthetic kit has none);
- ``head_scale [3]``: 1 (the fit's scale is px per metre of a weak-perspective camera, not the head's
  size relative to the SMPL-X head; the refinement stage owns that);
- ``has_face``: True where a face was fitted; ``conf_face``: the keypoints stage's face confidence times
  ``exp(-(e / residual_scale)^2)``, with ``e`` the fit's RMSE over the face size.

The head rotation and camera are solved for but have no record field; they are not kept. Rows without
a face and rows an earlier stage failed get the schema's fill values (``has_face`` False). A face whose
landmarks are not finite fails its row (``error_stage = "face"``). See ``docs/hands_face.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from annotators.base import STAGES, FitStage, FitStageConfig, good_rows
from annotators.batches import Batch
from fitting.face_fit import NUM_MEDIAPIPE_LANDMARKS, FaceFitOptions, FaceLandmarks, solve_face_fit
from fitting.hand_ik import fit_confidence
from model.body_models import FLAME

log = logging.getLogger(__name__)

FACE_FIELDS = ("flame_shape", "flame_expression", "flame_jaw_pose", "flame_eye_pose", "flame_eyelids", "head_scale",
               "has_face", "conf_face")
"""Columns the stage writes."""


@dataclass(frozen=True)
class FlameFitConfig(FitStageConfig, FaceFitOptions):
    """Settings of the ``face/flame-fit`` stage: the solver's (:class:`fitting.face_fit.FaceFitOptions`) and
    the stage's (:class:`annotators.base.FitStageConfig`)."""

    num_shape: int = 100
    """Shape coefficients fitted (of FLAME's 300)."""
    num_expression: int = 50
    """Expression coefficients fitted (of FLAME's 100)."""
    residual_scale: float = 0.05
    """Fit RMSE, as a fraction of the face size, at which the confidence factor is ``exp(-1)``."""


@STAGES.register("face/flame-fit")
class FlameFitStage(FitStage):
    """FLAME faces fitted to MediaPipe's face landmarks (see the module docstring).

    Reads ``mp_face_landmarks [478, 3]``, ``has_face`` and ``conf_face`` (optional, 1 when absent); writes
    :data:`FACE_FIELDS`. FLAME loads on first use.
    """

    name = "face"
    config_class = FlameFitConfig
    required = ("mp_face_landmarks", "has_face")
    requirement_hint = "run a keypoints stage first"
    outputs = FACE_FIELDS

    def build_layer(self) -> FaceLandmarks:
        flame = FLAME.from_dir(self.context.body_model_folder(self.name))
        return FaceLandmarks(flame, self.config.num_shape, self.config.num_expression)

    def __call__(self, batch: Batch) -> Batch:
        n, out = self.start(batch)
        presence = np.asarray(batch["conf_face"], np.float32) if "conf_face" in batch else np.ones(n, np.float32)
        rows = []
        for i in np.flatnonzero(good_rows(batch) & np.asarray(batch["has_face"], bool)):
            reason = _landmark_problem(np.asarray(batch["mp_face_landmarks"][i], np.float64))
            if reason:
                self.fail(batch, i, reason)
                continue
            rows.append(i)
        if rows:
            self._fit(out, np.array(rows), np.stack([batch["mp_face_landmarks"][i] for i in rows]), presence)
        batch.update(out)
        return batch

    def _fit(self, out: Batch, rows: np.ndarray, landmarks: np.ndarray, presence: np.ndarray) -> None:
        """Solve the faces ``landmarks  # [F, 478, 3]`` of ``rows  # [F]`` into ``out``."""
        cfg = self.config
        for part, target in self.chunks(rows, landmarks):
            result = solve_face_fit(self.layer, target, cfg)
            fit_conf = fit_confidence(result.rmse_px / result.face_size, cfg.residual_scale).cpu().numpy()
            out["flame_shape"][part, : cfg.num_shape] = result.shape.cpu().numpy()
            out["flame_expression"][part, : cfg.num_expression] = result.expression.cpu().numpy()
            out["flame_jaw_pose"][part] = result.jaw_pose.cpu().numpy()
            out["flame_eye_pose"][part] = result.eye_pose.cpu().numpy()
            out["flame_eyelids"][part] = result.eyelids.cpu().numpy()
            out["has_face"][part] = True
            out["conf_face"][part] = np.clip(presence[part], 0.0, 1.0) * fit_conf
            log.debug("flame-fit: %d faces, rmse px %s", len(part), np.round(result.rmse_px.cpu().numpy(), 2))


def _landmark_problem(landmarks: np.ndarray) -> str:
    """Why one row's ``mp_face_landmarks`` cannot be fitted, or ``""``."""
    if landmarks.shape != (NUM_MEDIAPIPE_LANDMARKS, 3):
        return (f"column 'mp_face_landmarks' must hold [{NUM_MEDIAPIPE_LANDMARKS}, 3] arrays, "
                f"got {list(landmarks.shape)}")
    if not np.isfinite(landmarks).all():
        return "column 'mp_face_landmarks' has NaN or infinite landmarks"
    if np.ptp(landmarks[:, :2], axis=0).min() <= 0:
        return "column 'mp_face_landmarks': the landmarks span no area although has_face is set"
    return ""
