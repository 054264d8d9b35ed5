"""The ``refine/ehm`` and ``quality/default`` stages: batched EHM refinement, then per-part quality and rejection.

``refine/ehm`` (:class:`RefineStage`) reads every person row that no stage has failed and that has a body
(``has_body``): the SMPL-X body, the MANO hands, the FLAME face, the keypoints, the box and the camera,
runs :class:`fitting.refine.Refiner` on them all at once, and writes the refined parameters back into the
same columns, plus ``quality_final_loss``, ``quality_flags`` (OR-ed into the flags earlier stages set) and
``quality_loss_terms`` (JSON: term -> final weighted value). The SMPL-X hand, jaw and eye fields are set
from the EHM parts that drive them (``mano_hand_pose``, ``flame_jaw_pose``, ``flame_eye_pose``), and
``mano_global_orient`` to each hand's orientation on the refined body. Rows with the same ``source`` and a
non-empty ``track_id`` share shape and scales.

``quality/default`` (:class:`QualityStage`) scores every row with a body (:mod:`fitting.quality`):
reprojection per part and, when the batch has its ``image`` column, the silhouette IoU and boundary-band IoU
against MediaPipe's person segmentation (selfie segmentation, general model, on the person's isolated crop).
A row over a threshold gets ``error_stage = "quality"`` and a reason naming the part and value: the sink
puts it in the quarantine table instead of the shards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import cv2
import numpy as np
import torch

from annotators.base import (
    Batch,
    ErrorPolicy,
    STAGES,
    StageResources,
    batch_len,
    error_digest,
    good_rows,
    mark_failed,
)
from annotators.images import crop_person
from fitting.camera import project
from fitting.objectives import ehm_wholebody_points
from fitting.quality import QualityConfig, part_reprojection, rejection_reason, silhouette_scores
from fitting.refine import EHM_PARAMS, RefineConfig, RefineInputs, Refiner
from model.checkpoints import torch_device
from model.ehm import EHM
from model.rasterizer import soft_silhouette
from schemas.ehm_v1 import QualityFlag

log = logging.getLogger(__name__)

BODY_COLUMNS = {"betas": "smplx_betas", "global_orient": "smplx_global_orient", "body_pose": "smplx_body_pose",
                "transl": "smplx_transl"}
"""EHM parameter -> record column where the name differs (the rest are the record's own names)."""
SEGMENTATION_SIZE = 256
"""Side of the person crop fed to MediaPipe's selfie segmentation (its general model's input size)."""


def _column(batch: Batch, name: str, stage: str) -> np.ndarray:
    if name not in batch:
        raise KeyError(f"{stage} stage needs a {name!r} column (run the body, hands and face stages first); "
                       f"got {sorted(batch)}")
    return batch[name]


def _stack(batch: Batch, name: str, rows: np.ndarray, stage: str, dtype: Any = np.float32) -> torch.Tensor:
    return torch.as_tensor(np.stack([np.asarray(v, dtype=dtype) for v in _column(batch, name, stage)[rows]]))


def _ehm_params(ehm: EHM) -> tuple[str, ...]:
    """EHM parameters read from the record: :data:`fitting.refine.EHM_PARAMS`, plus the eyelids when the kit
    has eyelid blend shapes."""
    return EHM_PARAMS + (("flame_eyelids",) if ehm.flame.has_eyelids else ())


def identities(sources: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """Identity index ``[B]`` per row: rows with the same source and a non-empty track share one."""
    ids: dict[tuple[str, str], int] = {}
    out = np.empty(len(tracks), dtype=np.int64)
    for i, (source, track) in enumerate(zip(sources, tracks)):
        key = (str(source), str(track)) if str(track) else ("", f"row{i}")
        out[i] = ids.setdefault(key, len(ids))
    return out


class PersonSegmenter:
    """MediaPipe's selfie segmentation (general model, shipped in the wheel) on a person's isolated crop."""

    def __init__(self) -> None:
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None}

    def mask(self, image: np.ndarray, box_xyxy: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Person probability ``[size, size]`` over the square crop around ``box_xyxy`` (everything outside
        the box blanked, so that neighbours are not segmented) and the crop's image region ``[4]`` (x0, y0,
        x1, y1, px)."""
        if self._model is None:
            import mediapipe as mp

            self._model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        crop, c2i = crop_person(image, box_xyxy, scale=scale, out_size=SEGMENTATION_SIZE, isolate=True)
        prob = self._model.process(np.ascontiguousarray(crop)).segmentation_mask
        prob = cv2.resize(np.asarray(prob, np.float32), (size, size), interpolation=cv2.INTER_AREA)
        corners = np.asarray(c2i, np.float64) @ np.array([[0, SEGMENTATION_SIZE], [0, SEGMENTATION_SIZE], [1, 1]])
        return prob, np.array([corners[0, 0], corners[1, 0], corners[0, 1], corners[1, 1]], np.float32)


@dataclass
class RefineStageConfig:
    """Settings of the ``refine/ehm`` stage."""

    body_models: str = "synthetic"
    """Body-model folder (the job fills it in)."""
    seed: int = 0
    """Seed (the job fills it in)."""
    device: str = "auto"
    """Torch device of the refinement: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``..."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    """The refinement itself (:class:`fitting.refine.RefineConfig`; a mapping in YAML)."""
    mask_size: int = 64
    """With the silhouette term on (``refine.ehm.silhouette > 0``): side in px of the person-mask grid."""
    crop_scale: float = 1.25
    """With the silhouette term on: side of the segmented person crop, in box sides."""

    def __post_init__(self) -> None:
        if isinstance(self.refine, dict):
            self.refine = RefineConfig(**self.refine)


@STAGES.register("refine/ehm")
class RefineStage:
    """Batched EHM refinement of every good row with a body (see the module docstring)."""

    name = "refine"
    config_class = RefineStageConfig
    resources = StageResources(num_cpus=0.25, batch_size=64)
    version = "1"
    """Bump when the refinement's output changes for the same input."""

    def __init__(self, config: RefineStageConfig | None = None, policy: ErrorPolicy = ErrorPolicy.QUARANTINE) -> None:
        self.config = config or RefineStageConfig()
        self.policy = policy
        self._refiner: Refiner | None = None
        self.segmenter = PersonSegmenter()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_refiner"] = None  # rebuilt on first use in the worker
        return state

    def refiner(self) -> Refiner:
        """The refiner (EHM loaded from ``body_models``), built once."""
        if self._refiner is None:
            cfg = self.config
            cfg.refine.seed = cfg.seed
            self._refiner = Refiner.from_dir(cfg.body_models, cfg.refine, device=torch_device(cfg.device))
        return self._refiner

    def inputs(self, batch: Batch, rows: np.ndarray) -> RefineInputs:
        """The refinement inputs of ``rows  # [K]`` (indices)."""
        name = self.name
        params = {p: _stack(batch, BODY_COLUMNS.get(p, p), rows, name) for p in _ehm_params(self.refiner().ehm)}
        return RefineInputs(
            params=params,
            mano_global_orient=_stack(batch, "mano_global_orient", rows, name),
            intrinsics=_stack(batch, "cam_intrinsics", rows, name),
            bbox_xyxy=_stack(batch, "bbox_xyxy", rows, name),
            kp2d=_stack(batch, "kp2d_wholebody", rows, name),
            mp_face=_stack(batch, "mp_face_landmarks", rows, name),
            has_face=_stack(batch, "has_face", rows, name, bool),
            conf_face=_stack(batch, "conf_face", rows, name),
            has_hands=_stack(batch, "has_hands", rows, name, bool),
            conf_hands=_stack(batch, "conf_hands", rows, name),
            identity=torch.as_tensor(identities(batch["source"][rows] if "source" in batch else np.full(len(rows), ""),
                                                batch["track_id"][rows] if "track_id" in batch else np.full(len(rows), ""))),
        )

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        ok = good_rows(batch) & np.array([bool(v) for v in _column(batch, "has_body", self.name)], dtype=bool)
        batch.setdefault("quality_final_loss", np.full(n, np.nan, np.float32))
        batch.setdefault("quality_flags", np.zeros(n, np.int32))
        batch.setdefault("quality_loss_terms", np.array(["{}"] * n, dtype=object))
        batch["quality_final_loss"] = np.asarray(batch["quality_final_loss"], np.float32).copy()
        batch["quality_flags"] = np.asarray(batch["quality_flags"], np.int32).copy()
        batch["quality_loss_terms"] = np.asarray(batch["quality_loss_terms"], dtype=object).copy()
        rows = np.flatnonzero(ok)
        if len(rows) == 0:
            return batch
        inputs = self.inputs(batch, rows)  # a missing column is the job's configuration error: raise
        if self.config.refine.ehm.silhouette > 0 and "image" in batch:
            cfg = self.config
            masks = [self.segmenter.mask(batch["image"][i], batch["bbox_xyxy"][i], cfg.mask_size, cfg.crop_scale)
                     for i in rows]
            inputs.person_mask = torch.as_tensor(np.stack([m for m, _ in masks]))
            inputs.mask_box = torch.as_tensor(np.stack([b for _, b in masks]))
        try:
            result = self.refiner().refine(inputs)
        except Exception as exc:  # noqa: BLE001 - the policy decides
            if self.policy is ErrorPolicy.RAISE:
                raise
            reason = error_digest(exc)
            log.warning("refine failed a batch of %d rows: %s", len(rows), reason)
            for i in rows:
                mark_failed(batch, int(i), self.name, reason)
            return batch
        self._write(batch, rows, result)
        return batch

    @staticmethod
    def _write(batch: Batch, rows: np.ndarray, result: Any) -> None:
        p = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in result.params.items()}
        columns = {BODY_COLUMNS.get(k, k): v for k, v in p.items()}
        columns["mano_global_orient"] = result.mano_global_orient.cpu().numpy().astype(np.float32)
        columns["smplx_left_hand_pose"] = p["mano_hand_pose"][:, 0]
        columns["smplx_right_hand_pose"] = p["mano_hand_pose"][:, 1]
        columns["smplx_jaw_pose"] = p["flame_jaw_pose"]
        columns["smplx_leye_pose"] = p["flame_eye_pose"][:, :3]
        columns["smplx_reye_pose"] = p["flame_eye_pose"][:, 3:]
        n = batch_len(batch)
        for name, values in columns.items():
            if name in batch:
                column = np.stack([np.asarray(v, np.float32) for v in batch[name]])
            else:
                column = np.zeros((n,) + values.shape[1:], np.float32)
            column[rows] = values
            batch[name] = column
        batch["quality_final_loss"][rows] = result.loss.cpu().numpy()
        batch["quality_flags"][rows] |= result.flags.cpu().numpy().astype(np.int32)
        terms = {k: v.cpu().numpy() for k, v in result.terms.items()}
        for j, i in enumerate(rows):
            batch["quality_loss_terms"][i] = json.dumps({k: round(float(v[j]), 6) for k, v in terms.items()},
                                                        sort_keys=True)


# --------------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------------


@dataclass
class QualityStageConfig(QualityConfig):
    """Settings of the ``quality/default`` stage (the scores and thresholds of :class:`fitting.quality.QualityConfig`)."""

    body_models: str = "synthetic"
    """Body-model folder (the job fills it in)."""
    device: str = "auto"
    """Torch device for the EHM pass and the rasteriser."""

    def __post_init__(self) -> None:
        super().__post_init__()


QUALITY_COLUMNS = {
    "quality_reproj_px_body": np.float32(np.nan), "quality_reproj_norm_body": np.float32(np.nan),
    "quality_reproj_px_face": np.float32(np.nan), "quality_reproj_norm_face": np.float32(np.nan),
    "quality_reproj_px_hands": np.full(2, np.nan, np.float32), "quality_reproj_norm_hands": np.full(2, np.nan, np.float32),
    "quality_silhouette_iou": np.float32(np.nan), "quality_silhouette_boundary_iou": np.float32(np.nan),
}
"""Columns the quality stage writes, with their value for rows it did not score."""


@STAGES.register("quality/default")
class QualityStage:
    """Per-part quality scores and rejection (see the module docstring)."""

    name = "quality"
    config_class = QualityStageConfig
    resources = StageResources(num_cpus=0.25, batch_size=64)
    version = f"1+mediapipe{metadata.version('mediapipe')}"
    """This stage's scoring and MediaPipe's version (bump on changes)."""

    def __init__(self, config: QualityStageConfig | None = None, policy: ErrorPolicy = ErrorPolicy.QUARANTINE) -> None:
        self.config = config or QualityStageConfig()
        self.policy = policy
        self._ehm: EHM | None = None
        self.segmenter = PersonSegmenter()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ehm"] = None
        return state

    def ehm(self) -> EHM:
        """The EHM model, loaded once."""
        if self._ehm is None:
            device = torch_device(self.config.device)
            self._ehm = EHM.from_dir(self.config.body_models, camera_frame="opencv").to(device)
        return self._ehm

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        ok = good_rows(batch)
        has_body = np.array([bool(v) for v in _column(batch, "has_body", self.name)], dtype=bool)
        for name, fill in QUALITY_COLUMNS.items():
            batch[name] = np.stack([np.asarray(fill).copy() for _ in range(n)]) if n else np.zeros((0,) + np.shape(fill))
        rows = np.flatnonzero(ok & has_body)
        if len(rows):
            try:
                self._score(batch, rows)
            except Exception as exc:  # noqa: BLE001 - the policy decides
                if self.policy is ErrorPolicy.RAISE:
                    raise
                reason = error_digest(exc)
                for i in rows:
                    mark_failed(batch, int(i), self.name, reason)
        self._reject(batch, np.flatnonzero(good_rows(batch)))
        return batch

    def _score(self, batch: Batch, rows: np.ndarray) -> None:
        cfg = self.config
        ehm = self.ehm()
        ref = ehm.body_template
        params = {p: _stack(batch, BODY_COLUMNS.get(p, p), rows, self.name).to(ref) for p in _ehm_params(ehm)}
        with torch.no_grad():
            out = ehm(**params)
            intr = _stack(batch, "cam_intrinsics", rows, self.name).to(ref)
            uv = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68), intr)
        kp2d = _stack(batch, "kp2d_wholebody", rows, self.name).to(ref)
        box = _stack(batch, "bbox_xyxy", rows, self.name).to(ref)
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
