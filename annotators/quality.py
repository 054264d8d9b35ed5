"""The ``quality/default`` stage: per-part quality scores and rejection of every person with a body.

:class:`QualityStage` scores every row with a body (:mod:`fitting.quality`): reprojection per part and, when
the batch has its ``image`` column, the silhouette IoU and boundary-band IoU against MediaPipe's person
segmentation (selfie segmentation, general model, on the person's isolated crop). A row over a threshold gets
``error_stage = "quality"`` and a reason naming the part and value: the sink puts it in the quarantine table
instead of the shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch

from annotators.base import STAGES, Stage, StageResources, good_rows, mark_failed, resource
from annotators.batches import Batch, batch_len, stack_rows
from annotators.images import PersonSegmenter
from fitting.camera import project
from fitting.objectives import ehm_wholebody_points
from fitting.quality import QualityConfig, part_reprojection, rejection_reason, silhouette_scores
from model.checkpoints import torch_device
from model.ehm import EHM
from model.ehm_record import ehm_params_from_columns
from model.rasterizer import soft_silhouette
from schemas.ehm_v1 import QualityFlag

log = logging.getLogger(__name__)


@dataclass
class QualityStageConfig(QualityConfig):
    """Settings of the ``quality/default`` stage (the scores and thresholds of :class:`fitting.quality.QualityConfig`)."""

    device: str = "auto"
    """Torch device for the EHM pass and the rasteriser."""
    chunk_size: int = 64
    """Most rows per batched EHM pass; a shard's rows are cut into consecutive chunks."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_size < 1:
            raise ValueError(f"QualityStageConfig.chunk_size must be at least 1, got {self.chunk_size}")


QUALITY_COLUMNS = (
    "quality_reproj_px_body", "quality_reproj_norm_body", "quality_reproj_px_face", "quality_reproj_norm_face",
    "quality_reproj_px_hands", "quality_reproj_norm_hands", "quality_silhouette_iou", "quality_silhouette_boundary_iou",
)
"""Columns the quality stage writes (NaN, the schema's fill, for rows it did not score)."""


@STAGES.register("quality/default")
class QualityStage(Stage):
    """Per-part quality scores and rejection (see the module docstring)."""

    name = "quality"
    config_class = QualityStageConfig
    resources = StageResources(num_cpus=0.25)
    version = f"1+mediapipe{metadata.version('mediapipe')}"
    """This stage's scoring and MediaPipe's version (bump on changes)."""
    required = ("has_body",)
    requirement_hint = "run the body, hands and face stages first"
    outputs = QUALITY_COLUMNS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.segmenter = PersonSegmenter()

    @resource
    def ehm(self) -> EHM:
        """The EHM model, loaded once."""
        device = torch_device(self.config.device)
        return EHM.from_dir(self.context.body_model_folder(self.name), camera_frame="opencv").to(device)

    def __call__(self, batch: Batch) -> Batch:
        n, out = self.start(batch)
        batch.update(out)
        ok = good_rows(batch)
        has_body = np.array([bool(v) for v in batch["has_body"]], dtype=bool)
        scored = np.flatnonzero(ok & has_body)
        for start in range(0, len(scored), self.config.chunk_size):
            rows = scored[start:start + self.config.chunk_size]
            try:
                self._score(batch, rows)
            except Exception as exc:  # noqa: BLE001 - the policy decides
                self.fail_rows(batch, rows, exc)
        self._reject(batch, np.flatnonzero(good_rows(batch)))
        return batch

    def _score(self, batch: Batch, rows: np.ndarray) -> None:
        cfg = self.config
        ehm = self.ehm
        ref = ehm.body_template
        where = f"{self.name} stage"
        params = ehm_params_from_columns(batch, rows=rows, eyelids=ehm.flame.has_eyelids, device=ref.device,
                                         dtype=ref.dtype)

        def stack(name: str) -> torch.Tensor:
            return torch.as_tensor(stack_rows(batch, name, rows, needed_by=where)).to(ref)

        with torch.no_grad():
            out = ehm(**params)
            intr = stack("cam_intrinsics")
            uv = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), intr)
        kp2d = stack("kp2d_wholebody")
        box = stack("bbox_xyxy")
        scores = {k: v.cpu().numpy() for k, v in part_reprojection(
            uv, kp2d, box, cfg.keypoint_threshold, cfg.hand_keypoint_threshold).items()}
        flags = np.asarray(batch.get("quality_flags", np.zeros(batch_len(batch), np.int32)))[rows]
        for side, bit in enumerate((QualityFlag.LEFT_HAND_GATED, QualityFlag.RIGHT_HAND_GATED)):
            gated = (flags & int(bit)) != 0
            scores["hands"][gated, side] = np.nan
            scores["hands_norm"][gated, side] = np.nan
        face_gated = (flags & int(QualityFlag.FACE_GATED)) != 0
        scores["face"][face_gated] = np.nan
        scores["face_norm"][face_gated] = np.nan
        for part in ("body", "face", "hands"):
            batch[f"quality_reproj_px_{part}"][rows] = scores[part]
            batch[f"quality_reproj_norm_{part}"][rows] = scores[f"{part}_norm"]
        if cfg.silhouette and "image" in batch:
            for j, i in enumerate(rows):
                iou, band = self._silhouette(batch["image"][i], batch["bbox_xyxy"][i], out.vertices[j], out.faces,
                                             intr[j])
                batch["quality_silhouette_iou"][i] = iou
                batch["quality_silhouette_boundary_iou"][i] = band

    def _silhouette(self, image: np.ndarray, box: np.ndarray, vertices: torch.Tensor, faces: torch.Tensor,
                    intr: torch.Tensor) -> tuple[float, float]:
        """IoU and boundary IoU of one person's rendered EHM and MediaPipe mask, in the crop grid."""
        cfg = self.config
        prob, region = self.segmenter.mask(image, np.asarray(box, np.float32), cfg.mask_size, cfg.crop_scale)
        region_t = torch.as_tensor(region).to(vertices)
        uv = project(vertices[None], intr[None])
        grid = (uv - region_t[:2]) / (region_t[2:] - region_t[:2]) * cfg.mask_size
        in_front = vertices[:, 2][faces].min(-1).values[None] > 1e-3
        with torch.no_grad():
            sil = soft_silhouette(grid, faces, cfg.mask_size, cfg.mask_size, sigma=cfg.sigma, face_mask=in_front)
        iou, band = silhouette_scores(sil, torch.as_tensor(prob)[None].to(sil), cfg.band_px)
        return float(iou[0]), float(band[0])

    def _reject(self, batch: Batch, rows: np.ndarray) -> None:
        cfg = self.config
        names = ["has_body", "quality_final_loss", *QUALITY_COLUMNS]
        for i in rows:
            scores = {k: batch[k][i] for k in names if k in batch}
            reason = rejection_reason(scores, cfg)
            if reason:
                mark_failed(batch, int(i), self.name, reason)
