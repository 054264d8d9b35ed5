"""The Lightning module of ``pearl train``: the regressor, its losses (PEAR eq. 1-3), the optimiser and its
schedule, the periodic evaluation and what a checkpoint carries.

A training step poses two EHM bodies per sample on the training device: the prediction (rotations from the
network's 6D output, the rest as predicted, ``transl = 0``) and the target (the record's parameters, no
gradient). Their COCO-WholeBody points (:func:`fitting.objectives.ehm_wholebody_points`) give the 3D keypoint
terms (pelvis-relative) and, through the crop camera, the 2D terms; the parameters give eq. 1 and 2
(:mod:`model.losses`). Masks come from the sample's gated ``has_*`` flags and keypoint weights
(:mod:`pipelines.train.augment`).

A checkpoint (``OUT/checkpoints/*.ckpt``, a Lightning checkpoint) holds, besides the weights (the mean
parameters among them, ``regressor.init_params``), the optimiser, the schedule and the loop state, an entry
``pearl``: the resolved training config, the model config, the data position (epoch, batches done in it),
the data counters and torch's random state. Resuming from it continues the same batches in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from fitting.objectives import ehm_wholebody_points
from model.flip import ShapeMirror
from model.losses import combine, masked_l1, masked_mse, root_relative, rotation_mse
from model.networks.pear import NUM_HAND_JOINTS, PearRegressor, cam_to_translation, project_crop
from model.pear import ehm_params_from_outputs
from model.rotations import rotvec_to_rotmat
from pipelines.train.augment import SamplePreparer
from pipelines.train.config import TrainConfig, to_dict
from pipelines.train.data import COUNTERS, EpochLoader, EvalStream, StreamSpec, TrainStream, collate, resolve_urls
from pipelines.train.evaluate import PCK_PARTS, MetricSums, PosedBodies, batch_metrics, batch_targets
from schemas import keypoints as kpl

VAL_METRICS = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "hand_pa_pve_mm", "face_landmark_mm", "lip_vertex_mm",
               "pck_0.05", "pck_0.1")
"""Metrics of the periodic evaluation, logged as ``val/<name>``."""

BODY = kpl.SCORED_PARTS["body"]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then a cosine from 1 to
    ``min_ratio`` at ``total`` steps (constant after)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PearModule(L.LightningModule):
    """The regressor under Lightning (module docstring).

    Args:
        config: the resolved training config.
        body_models: the body-model folder the losses pose bodies with.
        mirror: how shapes flip (for the mirrored samples).
        mean_params: the corpus's mean parameter blocks (None: the defaults, e.g. before resuming).
    """

    def __init__(self, config: TrainConfig, body_models: str, mirror: ShapeMirror,
                 mean_params: Mapping[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.config = config
        self.model_config = config.model.resolved()
        self.regressor = PearRegressor(self.model_config)
        if mean_params is not None:
            self.regressor.set_mean_params({k: torch.as_tensor(v) for k, v in mean_params.items()})
        self.body_models = body_models
        self.mirror = mirror
        self._bodies: PosedBodies | None = None
        self.position = {"epoch": 0, "batches": 0}
        """Data position of the last finished training batch (saved in checkpoints)."""
        self.resume_position: dict[str, int] | None = None
        self.counters = {name: 0 for name in COUNTERS}
        self.val_sums = MetricSums()

    # -- pieces ------------------------------------------------------------------------------------

    @property
    def bodies(self) -> PosedBodies:
        """The posed body models on this module's device (built on first use)."""
        if self._bodies is None:
            self._bodies = PosedBodies(self.body_models, self.device)
        elif self._bodies.ehm.j_template.device != self.device:
            self._bodies.to(self.device)
        return self._bodies

    def preparer(self) -> SamplePreparer:
        return SamplePreparer(self.config.data, self.model_config, self.mirror)

    def batches_per_epoch(self) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return max(1, self.config.data.epoch_size // (self.config.data.batch_size * world))

    # -- data --------------------------------------------------------------------------------------

    def train_dataloader(self) -> EpochLoader:
        data = self.config.data
        spec = StreamSpec(tuple((tuple(resolve_urls(s.urls)), float(s.weight)) for s in data.train),
                          seed=self.config.seed, resampled=data.resampled, shuffle_buffer=data.shuffle_buffer)
        batches = self.batches_per_epoch()
        stream = TrainStream(spec, self.preparer(), batch_size=data.batch_size, batches=batches,
                             rank=self.trainer.global_rank, world=self.trainer.world_size)
        epoch, skip = 0, 0
        if self.resume_position is not None:
            epoch, skip = self.resume_position["epoch"], self.resume_position["batches"]
            if skip >= batches:
                epoch, skip = epoch + 1, 0
        return EpochLoader(stream, start_epoch=epoch, skip_batches=skip, num_workers=data.num_workers,
                           collate_fn=collate, persistent_workers=False)

    def val_dataloader(self) -> Any:
        from torch.utils.data import DataLoader

        data = self.config.data
        if not data.val:
            return []
        stream = EvalStream(resolve_urls(data.val), self.preparer(), limit=data.val_samples,
                            rank=self.trainer.global_rank, world=self.trainer.world_size)
        return DataLoader(stream, batch_size=data.batch_size, num_workers=min(1, data.num_workers),
                          collate_fn=collate)

    # -- losses ------------------------------------------------------------------------------------

    def loss_terms(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample loss terms ``{name: [B]}`` (names of :class:`model.losses.LossWeights`)."""
        bodies = self.bodies
        cfg = self.model_config
        target = {k: v.float() for k, v in batch_targets(batch).items()}
        pred = bodies.pose(ehm_params_from_outputs(outputs))
        with torch.no_grad():
            gt = bodies.pose(target)
            gt_points = root_relative(ehm_wholebody_points(gt.joints, gt.keypoints, gt.landmarks68), gt.joints[:, 0])
        points = ehm_wholebody_points(pred.joints, pred.keypoints, pred.landmarks68)
        rel = root_relative(points, pred.joints[:, 0])
        hb, hf, hh = batch["has_body"].float(), batch["has_face"].float(), batch["has_hands"].float()
        terms = {
            "kp3d_body": masked_l1(rel[:, BODY], gt_points[:, BODY], hb),
            "kp3d_face": masked_l1(rel[:, kpl.FACE], gt_points[:, kpl.FACE], hb * hf),
            "kp3d_hands": sum(masked_l1(rel[:, sl], gt_points[:, sl], hb * hh[:, side]) for side, sl in enumerate(kpl.HANDS)),
        }
        h, w = cfg.image_size
        transl = cam_to_translation(outputs["cam"], cfg.focal_px, h)
        uv = project_crop(points + transl[:, None], cfg.focal_px, h, w) / h
        kp = batch["kp2d"].float()
        kp_uv, weight = kp[..., :2] / h, kp[..., 2]
        terms["kp2d_body"] = masked_l1(uv[:, BODY], kp_uv[:, BODY], weight[:, BODY])
        terms["kp2d_face"] = masked_l1(uv[:, kpl.FACE], kp_uv[:, kpl.FACE], weight[:, kpl.FACE])
        hands = PCK_PARTS["hands"]
        terms["kp2d_hands"] = masked_l1(uv[:, hands], kp_uv[:, hands], weight[:, hands])
        # eq. 1 and 2 on the parameters
        go, body = rotvec_to_rotmat(target["global_orient"]), rotvec_to_rotmat(target["body_pose"])
        pred_rot = torch.cat([outputs["global_orient"][:, None], outputs["body_pose"]], 1)
        terms["smplx_pose"] = rotation_mse(pred_rot, torch.cat([go[:, None], body], 1), hb)
        b = hh.shape[0]
        terms["hand_pose"] = rotation_mse(outputs["hand_pose"].reshape(b, -1, 3, 3),
                                          rotvec_to_rotmat(target["mano_hand_pose"]).reshape(b, -1, 3, 3),
                                          hh.repeat_interleave(NUM_HAND_JOINTS, 1))
        terms["betas"] = masked_mse(outputs["betas"], target["betas"][:, : cfg.num_betas], hb)
        terms["flame_pose"] = rotation_mse(outputs["jaw_pose"][:, None],
                                           rotvec_to_rotmat(target["flame_jaw_pose"])[:, None], hf)
        terms["flame_shape"] = masked_l1(outputs["flame_shape"], target["flame_shape"][:, : cfg.num_flame_shape], hf)
        terms["flame_expression"] = masked_l1(outputs["flame_expression"],
                                              target["flame_expression"][:, : cfg.num_flame_expression], hf)
        terms["flame_extra"] = masked_l1(torch.cat([outputs["flame_eyelids"], outputs["head_scale"]], -1),
                                         torch.cat([target["flame_eyelids"], target["head_scale"]], -1), hf)
        return terms

    # -- steps -------------------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self.regressor(self.regressor.normalize(batch["image"]))
        total, weighted = combine(self.loss_terms(outputs, batch), self.config.loss)
        size = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in weighted.items()}, batch_size=size)
        for name in COUNTERS:
            self.counters[name] += int(batch[name].sum())
        self.log("data/skipped", float(self.counters["n_skipped"]), batch_size=size)  # this process's totals
        self.log("data/invalid", float(self.counters["n_invalid"]), batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        self.position = {"epoch": int(self.current_epoch), "batches": batch_idx + 1}
        return total

    def on_validation_epoch_start(self) -> None:
        self.val_sums = MetricSums()

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        outputs = self.regressor(self.regressor.normalize(batch["image"]))
        batch_metrics(self.bodies, outputs, batch, self.model_config, self.val_sums)

    def on_validation_epoch_end(self) -> None:
        sums = torch.tensor([[self.val_sums.sums.get(k, 0.0), self.val_sums.counts.get(k, 0.0)] for k in VAL_METRICS],
                            dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        for name, (total, count) in zip(VAL_METRICS, sums.tolist()):
            if count:
                self.log(f"val/{name}", total / count, sync_dist=False, rank_zero_only=True)

    # -- optimiser ---------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.config.optim
        optimizer = torch.optim.AdamW(self.regressor.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                      betas=tuple(o.betas))
        total = self.config.trainer.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- checkpoints -------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pearl"] = {
            "config": to_dict(self.config),
            "model": self.model_config.to_dict(),
            "data_position": dict(self.position),
            "counters": dict(self.counters),
            "torch_rng": torch.get_rng_state(),
            "mirror": {k: torch.as_tensor(v) for k, v in self.mirror.to_arrays().items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("pearl") or {}
        if "data_position" in meta:
            self.resume_position = {k: int(v) for k, v in meta["data_position"].items()}
            self.position = dict(self.resume_position)
        self.counters.update({k: int(v) for k, v in meta.get("counters", {}).items()})
        if "torch_rng" in meta:
            torch.set_rng_state(meta["torch_rng"])
