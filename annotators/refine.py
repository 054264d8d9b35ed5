"""The ``refine/ehm`` stage: batched EHM refinement of every person with a body.

``refine/ehm`` (:class:`RefineStage`) reads every person row that no stage has failed and that has a body
(``has_body``): the SMPL-X body, the MANO hands, the FLAME face, the keypoints, the box and the camera,
runs :class:`fitting.refine.Refiner` on them all at once, and writes the refined parameters back into the
same columns, plus ``quality_final_loss``, ``quality_flags`` (OR-ed into the flags earlier stages set) and
``quality_loss_terms`` (JSON: term -> final weighted value). The SMPL-X hand, jaw and eye fields are set
from the EHM parts that drive them (``mano_hand_pose``, ``flame_jaw_pose``, ``flame_eye_pose``), and
``mano_global_orient`` to each hand's orientation on the refined body. Rows with the same non-empty
``track_id`` (one person of one video clip, see ``track/iou-oks``) share one identity: one set of SMPL-X betas,
FLAME shape and head and hand scales, fitted to all of its frames together. The rows are solved in chunks of
about ``chunk_size`` rows that never split a track, in row order: the chunks are a function of the shard alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from annotators.base import STAGES, Stage, StageResources, good_rows, resource
from annotators.batches import Batch, batch_len, stack_rows
from annotators.images import PersonSegmenter
from fitting.refine import RefineInputs, Refiner
from fitting.refine_config import RefineConfig
from model.checkpoints import torch_device
from model.ehm_record import ehm_params_from_columns, record_columns_from_ehm_params

log = logging.getLogger(__name__)



def identities(tracks: np.ndarray) -> np.ndarray:
    """Identity index ``[B]`` per row, numbered in order of first appearance: rows with the same non-empty
    ``track_id`` share one, every other row is its own."""
    ids: dict[tuple[str, int], int] = {}
    out = np.empty(len(tracks), dtype=np.int64)
    for i, track in enumerate(tracks):
        key = (str(track), -1) if str(track) else ("", i)
        out[i] = ids.setdefault(key, len(ids))
    return out


def identity_chunks(identity: np.ndarray, size: int) -> list[np.ndarray]:
    """Positions ``[K]`` of each chunk: identities (``identity  # [B]``) in order of first appearance are added
    whole to the current chunk, which closes once it holds ``size`` rows or more (a track longer than ``size``
    is one chunk of its own)."""
    order = sorted(np.unique(identity).tolist(), key=lambda g: int(np.flatnonzero(identity == g)[0]))
    chunks, current = [], []
    for g in order:
        current.extend(np.flatnonzero(identity == g).tolist())
        if len(current) >= size:
            chunks.append(np.array(current, dtype=np.int64))
            current = []
    if current:
        chunks.append(np.array(current, dtype=np.int64))
    return chunks


@dataclass
class RefineStageConfig:
    """Settings of the ``refine/ehm`` stage."""

    device: str = "auto"
    """Torch device of the refinement: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``..."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    """The refinement itself (:class:`fitting.refine_config.RefineConfig`; a mapping in YAML). Its ``seed`` is
    replaced by the job's."""
    mask_size: int = 64
    """With the silhouette term on (``refine.ehm.silhouette > 0``): side in px of the person-mask grid."""
    crop_scale: float = 1.25
    """With the silhouette term on: side of the segmented person crop, in box sides."""
    chunk_size: int = 64
    """About this many rows per batched refinement; a track is never split (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"RefineStageConfig.chunk_size must be at least 1, got {self.chunk_size}")


@STAGES.register("refine/ehm")
class RefineStage(Stage):
    """Batched EHM refinement of every good row with a body (see the module docstring)."""

    name = "refine"
    config_class = RefineStageConfig
    resources = StageResources(num_cpus=0.25)
    version = "1"
    """Bump when the refinement's output changes for the same input."""
    required = ("has_body",)
    requirement_hint = "run the body, hands and face stages first"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.segmenter = PersonSegmenter()

    @resource
    def refiner(self) -> Refiner:
        """The refiner (EHM loaded from the context's body models, the job's seed), built once."""
        cfg = self.config
        refine = dataclasses.replace(cfg.refine, seed=self.context.seed)
        return Refiner.from_dir(self.context.body_model_folder(self.name), refine, device=torch_device(cfg.device))

    def inputs(self, batch: Batch, rows: np.ndarray) -> RefineInputs:
        """The refinement inputs of ``rows  # [K]`` (indices)."""
        where = f"{self.name} stage"

        def stack(name: str, dtype: Any = np.float32) -> torch.Tensor:
            return torch.as_tensor(stack_rows(batch, name, rows, dtype=dtype, needed_by=where))

        n = len(rows)
        return RefineInputs(
            params=ehm_params_from_columns(batch, rows=rows, eyelids=self.refiner.ehm.flame.has_eyelids),
            mano_global_orient=stack("mano_global_orient"),
            intrinsics=stack("cam_intrinsics"),
            bbox_xyxy=stack("bbox_xyxy"),
            kp2d=stack("kp2d_wholebody"),
            mp_face=stack("mp_face_landmarks"),
            has_face=stack("has_face", bool),
            conf_face=stack("conf_face"),
            has_hands=stack("has_hands", bool),
            conf_hands=stack("conf_hands"),
            identity=torch.as_tensor(identities(batch["track_id"][rows] if "track_id" in batch else np.full(n, ""))),
        )

    def __call__(self, batch: Batch) -> Batch:
        n = self.check_columns(batch)
        ok = good_rows(batch) & np.array([bool(v) for v in batch["has_body"]], dtype=bool)
        batch.setdefault("quality_final_loss", np.full(n, np.nan, np.float32))
        batch.setdefault("quality_flags", np.zeros(n, np.int32))
        batch.setdefault("quality_loss_terms", np.array(["{}"] * n, dtype=object))
        batch["quality_final_loss"] = np.asarray(batch["quality_final_loss"], np.float32).copy()
        batch["quality_flags"] = np.asarray(batch["quality_flags"], np.int32).copy()
        batch["quality_loss_terms"] = np.asarray(batch["quality_loss_terms"], dtype=object).copy()
        good = np.flatnonzero(ok)
        tracks = batch["track_id"][good] if "track_id" in batch else np.full(len(good), "")
        for chunk in identity_chunks(identities(tracks), self.config.chunk_size):
            self._refine_rows(batch, good[chunk])
        return batch

    def _refine_rows(self, batch: Batch, rows: np.ndarray) -> None:
        """Refine the rows ``rows  # [K]`` together and write them back (or fail them all)."""
        inputs = self.inputs(batch, rows)  # a missing column is the job's configuration error: raise
        if self.config.refine.ehm.silhouette > 0 and "image" in batch:
            cfg = self.config
            masks = [self.segmenter.mask(batch["image"][i], batch["bbox_xyxy"][i], cfg.mask_size, cfg.crop_scale)
                     for i in rows]
            inputs.person_mask = torch.as_tensor(np.stack([m for m, _ in masks]))
            inputs.mask_box = torch.as_tensor(np.stack([b for _, b in masks]))
        try:
            result = self.refiner.refine(inputs)
        except Exception as exc:  # noqa: BLE001 - the policy decides
            self.fail_rows(batch, rows, exc)
            return
        self._write(batch, rows, result)

    @staticmethod
    def _write(batch: Batch, rows: np.ndarray, result: Any) -> None:
        columns = record_columns_from_ehm_params(result.params)
        columns["mano_global_orient"] = result.mano_global_orient.cpu().numpy().astype(np.float32)
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
