"""The ``body/pear`` stage: SMPL-X bodies predicted by a trained PEAR regressor (``pearl train``), so that a
later annotation round starts its refinement from what the trainer learned instead of from the keypoint fit:
annotate -> train -> annotate again with ``--stages ...,body/pear,...``. Documented in ``docs/training.md``.

Per good row (``error_stage`` empty) the regressor sees the person crop of ``bbox_xyxy`` in ``image``
(:class:`model.pear.PearPredictor`; the same crop geometry the trainer used) and the row gets:

- ``has_body`` True; ``smplx_betas``, ``smplx_global_orient``, ``smplx_body_pose`` and ``smplx_transl`` (in
  the camera of ``cam_intrinsics``) from the prediction; the SMPL-X hand, jaw and eye columns from the
  predicted MANO hand poses and FLAME jaw (:func:`model.ehm_record.record_columns_from_ehm_params`; eyes
  zero); ``smplx_expression`` zero;
- ``cam_intrinsics``: the row's when an earlier stage set one, else :func:`fitting.camera.default_intrinsics`
  of the image (focal length = image diagonal);
- ``quality_reproj_px_body`` / ``quality_reproj_norm_body``: the predicted body's COCO-WholeBody points against
  the row's confident ``kp2d_wholebody`` body keypoints (:func:`fitting.quality.part_reprojection`; NaN without
  keypoints).

The hands and face stages that follow fill the MANO and FLAME fields as usual, and ``refine/ehm`` refines
everything together. A batch the network cannot run is failed as a whole with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from annotators.base import STAGES, Stage, StageResources, good_rows, resource
from annotators.batches import Batch
from annotators.images import check_rgb_image
from fitting.camera import default_intrinsics, project
from fitting.objectives import ehm_wholebody_points
from fitting.quality import part_reprojection
from model.ehm import EHM
from model.ehm_record import ehm_params_from_columns
from model.pear import PearPredictor

log = logging.getLogger(__name__)

OUTPUT_FIELDS = (
    "has_body", "smplx_betas", "smplx_global_orient", "smplx_body_pose", "smplx_transl", "smplx_left_hand_pose",
    "smplx_right_hand_pose", "smplx_jaw_pose", "smplx_leye_pose", "smplx_reye_pose", "smplx_expression",
    "cam_intrinsics", "quality_reproj_px_body", "quality_reproj_norm_body",
)
"""Record columns this stage writes (every other column passes through)."""


@dataclass
class PearBodyConfig:
    """Settings of the ``body/pear`` stage."""

    checkpoint: str = ""
    """A checkpoint written by ``pearl train`` (``OUT/checkpoints/last.ckpt``)."""
    device: str = "auto"
    """Torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``."""
    precision: str = "auto"
    """``auto`` (bfloat16 autocast on CUDA, float32 on the CPU), ``float32`` or ``bfloat16``."""
    batch_size: int = 32
    """Crops per network call."""
    keypoint_threshold: float = 0.3
    """Confidence above which a body keypoint counts in the reprojection quality."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("body/pear needs options.checkpoint: a checkpoint written by `pearl train`")
        if self.batch_size < 1:
            raise ValueError(f"PearBodyConfig.batch_size must be at least 1, got {self.batch_size}")


@STAGES.register("body/pear")
class PearBodyStage(Stage):
    """SMPL-X bodies from a trained PEAR regressor (module docstring)."""

    name = "body"
    config_class = PearBodyConfig
    resources = StageResources(num_cpus=0.25)
    """Default actor resources (give ``num_gpus`` on GPU)."""
    version = "1"
    """Bump when the stage's output changes for the same input and checkpoint."""
    required = ("image", "bbox_xyxy", "image_width", "image_height")
    requirement_hint = "run the persons stage first"
    outputs = OUTPUT_FIELDS
    weight_options = ("checkpoint",)

    @resource
    def predictor(self) -> PearPredictor:
        """The regressor, loaded once (weights-only read of the checkpoint)."""
        c = self.config
        if not Path(c.checkpoint).is_file():
            raise FileNotFoundError(f"body/pear: checkpoint {c.checkpoint} does not exist")
        return PearPredictor(c.checkpoint, device=c.device, precision=c.precision, batch_size=c.batch_size)

    @resource
    def ehm(self) -> EHM:
        """The EHM of the run's body models (for the reprojection quality)."""
        return EHM.from_dir(self.context.body_model_folder(self.name), camera_frame="opencv").eval()

    def __call__(self, batch: Batch) -> Batch:
        n, out = self.start(batch)
        rows = np.flatnonzero(good_rows(batch))
        if len(rows):
            try:
                self._predict(batch, out, rows)
            except (OSError, ValueError, RuntimeError) as exc:
                self.fail_rows(batch, rows, exc)
        batch.update(out)
        return batch

    def _predict(self, batch: Batch, out: Batch, rows: np.ndarray) -> None:
        images = [check_rgb_image(batch["image"][i]) for i in rows]
        boxes = np.stack([np.asarray(batch["bbox_xyxy"][i], np.float64) for i in rows])
        given = batch.get("cam_intrinsics")
        intrinsics = np.stack([
            np.asarray(given[i], np.float32) if given is not None and np.asarray(given[i]).any()
            else default_intrinsics(float(batch["image_width"][i]), float(batch["image_height"][i])).numpy()
            for i in rows])
        columns = self.predictor.predict(images, boxes, intrinsics)
        for name in OUTPUT_FIELDS:
            if name in columns:
                out[name][rows] = columns[name]
        out["cam_intrinsics"][rows] = intrinsics
        out["has_body"][rows] = True
        out["smplx_leye_pose"][rows] = 0.0
        out["smplx_reye_pose"][rows] = 0.0
        if "kp2d_wholebody" in batch:
            kp = torch.as_tensor(np.stack([np.asarray(batch["kp2d_wholebody"][i], np.float32) for i in rows]))
            params = ehm_params_from_columns(columns, eyelids=self.ehm.flame.has_eyelids)
            with torch.no_grad():
                posed = self.ehm(**params)
                points = ehm_wholebody_points(posed.joints, posed.keypoints, posed.landmarks68)
                px = project(points, torch.as_tensor(intrinsics))
                errors = part_reprojection(px, kp, torch.as_tensor(boxes, dtype=torch.float32),
                                           self.config.keypoint_threshold)
            out["quality_reproj_px_body"][rows] = errors["body"].numpy()
            out["quality_reproj_norm_body"][rows] = errors["body_norm"].numpy()
