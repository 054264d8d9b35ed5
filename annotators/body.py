"""The ``body/auto`` stage: an SMPL-X body per person row, from its SMPL label when the source has one,
else fitted to its 2D body keypoints. Documented in ``docs/body.md``.

Per good row (``error_stage`` empty):

1. **Camera.** ``cam_intrinsics`` = the label's intrinsics when the source has them, else
   :func:`fitting.camera.default_intrinsics` of ``image_width x image_height`` (focal length = image diagonal).
2. **SMPL label** (the row's entry in ``labels``, matched to ``bbox_xyxy`` by box equality,
   :func:`label_entry`; needs ``has_body_pose``): the SMPL body is
   converted by :class:`fitting.transfer.SmplToSmplx` (closed form, then the refinement). Sources without a
   translation get one by linear least squares (:func:`fitting.camera.solve_translation`) that projects the
   converted body's joints onto the label's 2D keypoints, else onto ``kp2d_wholebody``, else that places
   it in its box. ``has_smpl_label`` and the ``smpl_*`` fields keep the label (``smpl_transl``: the source's,
   or the estimated one); ``quality_transfer_vertex_mm`` is the conversion's mean vertex error.
3. **No label**, with at least ``min_keypoints`` body keypoints (COCO-17 + feet) of ``kp2d_wholebody`` at
   ``min_confidence``: :class:`fitting.smplify.KeypointFitter` fits SMPL-X; ``quality_flags`` gets
   ``BODY_FROM_KEYPOINTS``.
4. Otherwise the row keeps ``has_body = False`` (not an error: the person has nothing to fit to).

``quality_reproj_px_body`` / ``quality_reproj_norm_body``: mean pixel distance of the body's joints to the 2D
keypoints used (label keypoints or ``kp2d_wholebody``), and that divided by the box's longer side (NaN when
none). SMPL-X hands, jaw, eyes and expression: see :mod:`fitting.transfer` (hands from SMPL's hand joints,
or flat) and zeros. A row whose label is malformed is failed with the reason; the rest of the batch goes on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotators.base import STAGES, Stage, StageResources, good_rows, resource
from annotators.batches import Batch, batch_len
from fitting.camera import default_intrinsics, project, solve_translation, translation_from_box
from fitting.smplify import KeypointFitter, SmplifyConfig, keypoint_layout, reprojection_px
from fitting.transfer import SmplToSmplx, TransferConfig
from model.checkpoints import torch_device
from schemas.ehm_v1 import QualityFlag

log = logging.getLogger(__name__)

STAGE = "body"
OUTPUT_FIELDS = (
    "has_body", "smplx_betas", "smplx_global_orient", "smplx_body_pose", "smplx_transl", "smplx_left_hand_pose",
    "smplx_right_hand_pose", "smplx_jaw_pose", "smplx_leye_pose", "smplx_reye_pose", "smplx_expression",
    "has_smpl_label", "smpl_global_orient", "smpl_body_pose", "smpl_betas", "smpl_transl", "cam_intrinsics",
    "quality_transfer_vertex_mm", "quality_reproj_px_body", "quality_reproj_norm_body", "quality_flags",
)
"""Record columns this stage writes (every other column passes through)."""
WHOLEBODY = "coco_wholebody"
BOX_ATOL_PX = 0.01
"""Largest difference (px, per coordinate) between a person row's box and its label entry's box."""
SMPLX_PARAM_COLUMNS = {"global_orient": "smplx_global_orient", "body_pose": "smplx_body_pose",
                       "betas": "smplx_betas", "transl": "smplx_transl", "left_hand_pose": "smplx_left_hand_pose",
                       "right_hand_pose": "smplx_right_hand_pose"}


@dataclass
class BodyConfig:
    """Settings of the ``body/auto`` stage."""

    device: str = "auto"
    """Torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``."""
    gender: str = "neutral"
    """SMPL / SMPL-X model pair used for every row."""
    transfer_mode: str = "composed"
    """Closed form of the transfer: ``composed`` or ``additive`` (:class:`fitting.transfer.TransferConfig`)."""
    hand_joints: str = "fingers"
    """SMPL hand joints 22/23: ``fingers`` or ``drop`` (:class:`fitting.transfer.TransferConfig`)."""
    refine_iterations: int = 3
    """Levenberg-Marquardt iterations after the closed form (0: closed form only)."""
    refine_vertices: int = 512
    """SMPL-X vertices the refinement aligns."""
    cache_dir: str | None = None
    """Transfer calibration cache (default: :func:`fitting.transfer.default_cache_dir`, ``$PEARL_CACHE/transfer``)."""
    fit: bool = True
    """Fit SMPL-X to the 2D keypoints of rows without an SMPL label."""
    min_keypoints: int = 6
    """Confident body keypoints (COCO-17 + feet) a row needs for the keypoint fit."""
    min_confidence: float = 0.3
    """Keypoint confidence below which a keypoint is not used (fit and translation)."""
    fit_iterations: int = 300
    """Adam steps of the keypoint fit's body stage (:class:`fitting.smplify.SmplifyConfig`)."""
    orient_iterations: int = 40
    """Adam steps of the keypoint fit's torso stage."""
    chunk_size: int = 32
    """Most rows per batched solve (transfer and keypoint fit); a shard's rows are cut into consecutive chunks."""

    def __post_init__(self) -> None:
        if self.min_keypoints < 1 or self.chunk_size < 1:
            raise ValueError(f"BodyConfig.min_keypoints and chunk_size must be at least 1, got {self.min_keypoints} "
                             f"and {self.chunk_size}")

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(gender=self.gender, mode=self.transfer_mode, hand_joints=self.hand_joints,
                              refine_iterations=self.refine_iterations, refine_vertices=self.refine_vertices,
                              cache_dir=self.cache_dir)

    def smplify_config(self) -> SmplifyConfig:
        return SmplifyConfig(iterations=self.fit_iterations, orient_iterations=self.orient_iterations,
                             min_confidence=self.min_confidence)


@dataclass
class _Label:
    """One row's SMPL label, parsed."""

    global_orient: np.ndarray  # [3]
    body_pose: np.ndarray  # [23, 3]
    betas: np.ndarray  # [10]
    transl: np.ndarray | None  # [3]
    keypoints: np.ndarray | None  # [K, 3]
    layout: str


def _finite(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"label {name} has {arr.size} values, expected {int(np.prod(shape))}")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"label {name} has NaN or inf")
    return arr


def parse_entry(entry: dict[str, Any]) -> tuple[_Label | None, np.ndarray | None]:
    """``(SMPL label or None, intrinsics [3, 3] or None)`` of a label entry; ``ValueError`` when malformed."""
    k = _finite("cam_intrinsics", entry["cam_intrinsics"], (3, 3)) if "cam_intrinsics" in entry else None
    smpl = entry.get("smpl")
    if not smpl or not int(smpl.get("has_body_pose", 0)):
        return None, k
    kp, layout = None, ""
    if "keypoints_2d" in entry:
        layout = str(entry["keypoints_2d"]["layout"])
        kp = _finite("keypoints_2d", entry["keypoints_2d"]["points"], (keypoint_layout(layout).size, 3))
    betas = _finite("betas", smpl["betas"], (10,)) if int(smpl.get("has_betas", 0)) else np.zeros(10)
    transl = _finite("transl", smpl["transl"], (3,)) if "transl" in smpl else None
    return _Label(_finite("global_orient", smpl["global_orient"], (3,)),
                  _finite("body_pose", smpl["body_pose"], (23, 3)), betas, transl, kp, layout), k


def label_entry(labels: str, box: np.ndarray) -> dict[str, Any] | None:
    """The entry of ``labels`` (a sample's label JSON, see :mod:`pipelines.io.smpl_sources`) whose box equals
    ``box  # [4]`` within :data:`BOX_ATOL_PX` (robust to reordering and to float32 boxes); None when the
    labels are plain boxes, empty, or none matches."""
    if not labels:
        return None
    for entry in json.loads(labels):
        if isinstance(entry, dict) and np.allclose(np.asarray(entry["box"], np.float64), np.asarray(box, np.float64),
                                                   atol=BOX_ATOL_PX, rtol=0):
            return entry
    return None


@STAGES.register("body/auto")
class BodyStage(Stage):
    """SMPL-X bodies per person row: transfer from SMPL labels, keypoint fit otherwise (module docstring).
    The fits draw no random numbers (the job's seed does not change them)."""

    name = STAGE
    config_class = BodyConfig
    resources = StageResources(num_cpus=0.25)
    """Default actor resources (give ``num_gpus`` on GPU; rows per solve: ``chunk_size``)."""
    default_backend = True
    version = "1"
    """Bump when the stage's output changes for the same input."""
    required = ("bbox_xyxy", "image_width", "image_height")
    requirement_hint = "run the persons stage first"
    outputs = OUTPUT_FIELDS

    @property
    def device(self) -> torch.device:
        return torch_device(self.config.device)

    def _folder(self) -> Path:
        folder = Path(self.context.body_model_folder(self.name))
        if not folder.is_dir():
            raise ValueError(f"body stage: body-model folder {str(folder)!r} is not a folder; give the body-model "
                             "folder (the job fills it in from --body-models)")
        return folder

    @resource
    def transfer(self) -> SmplToSmplx:
        """The SMPL -> SMPL-X conversion (calibrated or loaded from the cache on first use)."""
        return SmplToSmplx.from_dir(self._folder(), self.config.transfer_config()).to(self.device)

    @resource
    def fitter(self) -> KeypointFitter:
        """The keypoint fit (shares the SMPL-X model of :attr:`transfer` when that is loaded)."""
        if "transfer" in self.__dict__:
            smplx = self.transfer.smplx
        else:
            from model.body_models import SMPLX

            smplx = SMPLX.from_dir(self._folder(), self.config.gender).to(self.device)
        return KeypointFitter(smplx, self.config.smplify_config())

    # -- the batch ---------------------------------------------------------------------------------

    def __call__(self, batch: Batch) -> Batch:
        n, out = self.start(batch)
        if "quality_flags" in batch:
            out["quality_flags"] = np.asarray(batch["quality_flags"], np.int32).copy()
        ok = good_rows(batch)
        labels: dict[int, _Label] = {}
        for i in np.nonzero(ok)[0]:
            try:
                entry = label_entry(str(batch["labels"][i]) if "labels" in batch else "", batch["bbox_xyxy"][i])
                label, k = parse_entry(entry) if entry is not None else (None, None)
                if k is None:
                    k = default_intrinsics(float(batch["image_width"][i]), float(batch["image_height"][i])).numpy()
                out["cam_intrinsics"][i] = k
                if label is not None:
                    labels[int(i)] = label
            except (ValueError, KeyError, TypeError) as exc:
                self.fail(batch, int(i), exc)
        ok = good_rows(batch)
        transfer_rows = [i for i in sorted(labels) if ok[i]]
        fit_rows = [i for i in np.nonzero(ok)[0].tolist() if i not in labels and self._fittable(batch, i)]
        size = self.config.chunk_size
        for start in range(0, len(transfer_rows), size):
            self._transfer_rows(batch, out, transfer_rows[start:start + size], labels)
        if self.config.fit:
            for start in range(0, len(fit_rows), size):
                self._fit_rows(batch, out, fit_rows[start:start + size])
        for key, value in out.items():
            batch[key] = value
        return batch

    def _fittable(self, batch: Batch, i: int) -> bool:
        if "kp2d_wholebody" not in batch or not bool(batch.get("has_kp_body", np.ones(batch_len(batch), bool))[i]):
            return False
        kp_idx, _ = keypoint_layout(WHOLEBODY).index_arrays()
        conf = np.asarray(batch["kp2d_wholebody"][i], np.float32)[kp_idx, 2]
        return int((conf >= self.config.min_confidence).sum()) >= self.config.min_keypoints

    def _tensor(self, values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, np.float32), device=self.device)

    def _observations(self, batch: Batch, rows: list[int], labels: dict[int, _Label]) -> dict[str, list[int]]:
        """Rows grouped by the layout of the 2D keypoints used for them (label's, else ``kp2d_wholebody``)."""
        groups: dict[str, list[int]] = {}
        for i in rows:
            label = labels.get(i)
            if label is not None and label.keypoints is not None and self._enough(label.keypoints, label.layout):
                groups.setdefault(label.layout, []).append(i)
            elif self._fittable(batch, i):
                groups.setdefault(WHOLEBODY, []).append(i)
            else:
                groups.setdefault("", []).append(i)
        return groups

    def _enough(self, keypoints: np.ndarray, layout: str) -> bool:
        kp_idx, _ = keypoint_layout(layout).index_arrays()
        return int((keypoints[kp_idx, 2] >= self.config.min_confidence).sum()) >= 2

    def _keypoints(self, batch: Batch, rows: list[int], labels: dict[int, _Label], layout: str) -> torch.Tensor:
        if layout == WHOLEBODY:
            return self._tensor(np.stack([np.asarray(batch["kp2d_wholebody"][i], np.float32) for i in rows]))
        return self._tensor(np.stack([labels[i].keypoints for i in rows]))

    def _reprojection(self, out: dict[str, np.ndarray], batch: Batch, rows: list[int], px: torch.Tensor) -> None:
        px = px.detach().cpu().numpy()
        for j, i in enumerate(rows):
            box = np.asarray(batch["bbox_xyxy"][i], np.float64)
            size = max(box[2] - box[0], box[3] - box[1], 1.0)
            out["quality_reproj_px_body"][i] = px[j]
            out["quality_reproj_norm_body"][i] = px[j] / size

    def _transfer_rows(self, batch: Batch, out: dict[str, np.ndarray], rows: list[int],
                       labels: dict[int, _Label]) -> None:
        transfer = self.transfer
        go = self._tensor(np.stack([labels[i].global_orient for i in rows]))
        pose = self._tensor(np.stack([labels[i].body_pose for i in rows]))
        betas = self._tensor(np.stack([labels[i].betas for i in rows]))
        intr = self._tensor(out["cam_intrinsics"][rows])
        with torch.no_grad():
            base = transfer.closed_form(go, pose, betas)  # SMPL transl 0: base["transl"] is the pelvis offset
        groups = self._observations(batch, rows, labels)
        pos = {i: j for j, i in enumerate(rows)}
        fitter = self.fitter
        body = ("global_orient", "body_pose", "betas", "transl")
        transl = torch.zeros(len(rows), 3, device=self.device)  # SMPL translations
        for layout, members in groups.items():
            idx = torch.tensor([pos[i] for i in members], device=self.device)
            with torch.no_grad():
                points = fitter.points({k: base[k][idx] for k in body})  # the converted body at SMPL transl 0
                height = (points[..., 1].amax(1) - points[..., 1].amin(1)).clamp(min=0.3)
                boxes = self._tensor(np.stack([batch["bbox_xyxy"][i] for i in members]))
                shift = translation_from_box(height, boxes, intr[idx]) - 0.5 * (points.amax(1) + points.amin(1))
                if layout:
                    kp = self._keypoints(batch, members, labels, layout)
                    kp_idx, model_idx = (torch.as_tensor(a, device=self.device)
                                         for a in keypoint_layout(layout).index_arrays())
                    w = kp[:, kp_idx, 2]
                    w = torch.where(w >= self.config.min_confidence, w, torch.zeros_like(w))
                    solved, ok = solve_translation(points[:, model_idx], kp[:, kp_idx, :2], w, intr[idx])
                    shift = torch.where(ok[:, None], solved, shift)
            transl[idx] = shift
        for j, i in enumerate(rows):
            if labels[i].transl is not None:
                transl[j] = self._tensor(labels[i].transl)
        result = transfer(go, pose, betas, transl, refine=True, error=True)
        params = {k: v.detach().cpu().numpy() for k, v in result.params.items()}
        for j, i in enumerate(rows):
            out["has_body"][i] = True
            for name, column in SMPLX_PARAM_COLUMNS.items():
                out[column][i] = params[name][j]
            out["has_smpl_label"][i] = True
            out["smpl_global_orient"][i] = labels[i].global_orient
            out["smpl_body_pose"][i] = labels[i].body_pose
            out["smpl_betas"][i] = labels[i].betas
            out["smpl_transl"][i] = transl[j].cpu().numpy()
            out["quality_transfer_vertex_mm"][i] = float(result.vertex_error_mm[j])
        for layout, members in groups.items():
            if not layout:
                continue
            idx = torch.tensor([pos[i] for i in members], device=self.device)
            kp = self._keypoints(batch, members, labels, layout)
            kp_idx, model_idx = (torch.as_tensor(a, device=self.device) for a in keypoint_layout(layout).index_arrays())
            with torch.no_grad():
                points = fitter.points({k: result.params[k][idx] for k in body})
                w = kp[:, kp_idx, 2]
                w = torch.where(w >= self.config.min_confidence, w, torch.zeros_like(w))
                px = reprojection_px(project(points[:, model_idx], intr[idx]), kp[:, kp_idx, :2], w)
            self._reprojection(out, batch, members, px)

    def _fit_rows(self, batch: Batch, out: dict[str, np.ndarray], rows: list[int]) -> None:
        kp = self._keypoints(batch, rows, {}, WHOLEBODY)
        intr = self._tensor(out["cam_intrinsics"][rows])
        boxes = self._tensor(np.stack([batch["bbox_xyxy"][i] for i in rows]))
        result = self.fitter.fit(kp, keypoint_layout(WHOLEBODY), intr, boxes)
        params = {k: v.detach().cpu().numpy() for k, v in result.params.items()}
        for j, i in enumerate(rows):
            out["has_body"][i] = True
            for name in ("global_orient", "body_pose", "betas", "transl"):
                out[SMPLX_PARAM_COLUMNS[name]][i] = params[name][j]
            out["quality_flags"][i] |= int(QualityFlag.BODY_FROM_KEYPOINTS)
        self._reprojection(out, batch, rows, result.reprojection_px)
