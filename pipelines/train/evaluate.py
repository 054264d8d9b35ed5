"""Evaluation of the regressor: the 3D and 2D metrics of ``docs/metrics.md`` on held-out shards (known EHM
parameters), and the 2D PCK against human COCO-WholeBody labels (``pearl evaluate``).

On shards (:func:`evaluate_shards`), for every sample with the part supervised (after the quality gates):

- ``mpjpe_mm`` / ``pa_mpjpe_mm``: the 22 SMPL-X body joints, pelvis-relative / Procrustes-aligned;
- ``pve_mm``: all EHM vertices, pelvis-relative;
- ``hand_pa_pve_mm``: each hand's 778 MANO vertices, Procrustes-aligned, over the hands with ``has_hands``;
- ``face_landmark_mm``: the 68 FLAME landmarks relative to the midpoint of the eyes (samples with a face);
- ``lip_vertex_mm``: the largest lip-vertex error of FLAME posed with shape, expression and jaw only;
- ``pck_0.05`` / ``pck_0.1``: the predicted COCO-WholeBody points in the crop against the record's confident
  keypoints, normalised by the person box's longer side (and per part: ``pck_0.1_body`` ...).

The targets are the record's parameters posed through the same body models. :func:`batch_metrics` is
shared with the trainer's periodic evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitting.objectives import ehm_wholebody_points
from model import metrics
from model.body_models import SMPLX
from model.ehm import EHM
from model.networks.pear import PearConfig, cam_to_translation, project_crop
from model.pear import ehm_params_from_outputs
from pipelines.train.augment import PARAM_PREFIX
from schemas import keypoints as kpl

log = logging.getLogger(__name__)

BODY_JOINTS = SMPLX.NUM_BODY_JOINTS
"""SMPL-X body joints 0..21 (pelvis first): what MPJPE is over."""
EYES = [SMPLX.LEFT_EYE, SMPLX.RIGHT_EYE]
"""SMPL-X eye joints: the face landmark error's centre."""
PCK_PARTS = {"body": kpl.SCORED_PARTS["body"], "face": kpl.FACE, "hands": slice(kpl.LEFT_HAND.start, kpl.RIGHT_HAND.stop)}
"""Parts reported separately in the 2D PCK."""
MOUTH_LANDMARKS = range(48 - 17, 68 - 17)
"""Rows of FLAME's 51 static landmarks (iBUG 17..67) that are the mouth (iBUG 48..67)."""


def lip_vertex_ids(body_models: str | Path, flame: Any) -> Tensor:
    """FLAME vertex ids of the lips: the ``lips`` region of ``flame/FLAME_masks.pkl`` when the body-model folder
    has it (FLAME's official masks), else the vertices of the triangles that carry the 20 mouth landmarks
    (the synthetic kit has no masks file)."""
    path = Path(body_models) / "flame" / "FLAME_masks.pkl"
    if path.is_file():
        from model.assets.loaders import read_asset_dict

        masks = read_asset_dict(path)
        if "lips" in masks:
            return torch.as_tensor(np.asarray(masks["lips"], np.int64).reshape(-1))
        log.warning("%s has no 'lips' region; using the mouth landmarks' triangles", path)
    faces = flame.faces[flame.static_lmk_faces[list(MOUTH_LANDMARKS)]]
    return torch.unique(faces.reshape(-1).cpu())


@dataclass
class MetricSums:
    """Sums and counts of per-sample metric values (mergeable across batches and processes)."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, values: Tensor, mask: Tensor | None = None) -> None:
        values = values.detach().double()
        keep = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
        self.sums[name] = self.sums.get(name, 0.0) + float(values[keep].sum())
        self.counts[name] = self.counts.get(name, 0.0) + float(keep.sum())

    def add_counts(self, name: str, hits: float, total: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + hits
        self.counts[name] = self.counts.get(name, 0.0) + total

    def means(self) -> dict[str, float | None]:
        return {k: (self.sums[k] / self.counts[k] if self.counts[k] else None) for k in sorted(self.sums)}


class PosedBodies:
    """The body models the metrics and losses pose: EHM, its lip vertices and the COCO-WholeBody points."""

    def __init__(self, body_models: str | Path, device: torch.device | str = "cpu") -> None:
        self.body_models = str(body_models)
        self.ehm = EHM.from_dir(body_models, camera_frame="opencv").to(device).eval()
        for p in self.ehm.parameters():
            p.requires_grad_(False)
        self.lips = lip_vertex_ids(body_models, self.ehm.flame).to(device)

    def to(self, device: torch.device | str) -> PosedBodies:
        self.ehm = self.ehm.to(device)
        self.lips = self.lips.to(device)
        return self

    def pose(self, params: Mapping[str, Tensor]) -> Any:
        """EHM output of ``params`` (eyelids dropped when the model has none)."""
        given = {k: v for k, v in params.items() if k != "flame_eyelids" or self.ehm.flame.has_eyelids}
        return self.ehm(**given)

    def lips_of(self, params: Mapping[str, Tensor]) -> Tensor:
        """Lip vertices ``[B, L, 3]`` of FLAME posed with shape, expression and jaw only."""
        out = self.ehm.flame(betas=params["flame_shape"], expression=params["flame_expression"],
                             jaw_pose=params["flame_jaw_pose"])
        return out.vertices[:, self.lips]


def batch_targets(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The target EHM parameters of a collated batch (``params.*``)."""
    return {k[len(PARAM_PREFIX):]: v for k, v in batch.items() if k.startswith(PARAM_PREFIX)}


def batch_metrics(bodies: PosedBodies, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                  config: PearConfig, sums: MetricSums) -> None:
    """Add one batch's metrics (module docstring) to ``sums``; ``outputs``: the regressor's outputs."""
    pred_params = ehm_params_from_outputs(outputs)
    pred_params = {k: v.to(bodies.ehm.j_template) for k, v in pred_params.items()}
    target = {k: v.to(bodies.ehm.j_template) for k, v in batch_targets(batch).items()}
    pred, gt = bodies.pose(pred_params), bodies.pose(target)
    has_body, has_face = batch["has_body"] > 0, batch["has_face"] > 0
    has_hands = batch["has_hands"] > 0
    pj, gj = pred.joints[:, :BODY_JOINTS], gt.joints[:, :BODY_JOINTS]
    sums.add("mpjpe_mm", 1000 * metrics.mpjpe(pj, gj, pj[:, 0], gj[:, 0]), has_body)
    sums.add("pa_mpjpe_mm", 1000 * metrics.pa_mpjpe(pj, gj), has_body)
    sums.add("pve_mm", 1000 * metrics.mpjpe(pred.vertices, gt.vertices, pj[:, 0], gj[:, 0]), has_body)
    for side, ids in enumerate((bodies.ehm.left_hand_vertex_ids, bodies.ehm.right_hand_vertex_ids)):
        sums.add("hand_pa_pve_mm", 1000 * metrics.pa_mpjpe(pred.vertices[:, ids], gt.vertices[:, ids]),
                 has_hands[:, side])
    sums.add("face_landmark_mm", 1000 * metrics.face_landmark_error(
        pred.landmarks68, gt.landmarks68, pred.joints[:, EYES], gt.joints[:, EYES]), has_face)
    sums.add("lip_vertex_mm", 1000 * metrics.lip_vertex_error(bodies.lips_of(pred_params), bodies.lips_of(target)),
             has_face)
    # 2D: the predicted points through the crop camera against the record's confident keypoints
    h, w = config.image_size
    points = ehm_wholebody_points(pred.joints, pred.keypoints, pred.landmarks68)
    transl = cam_to_translation(outputs["cam"].to(points), config.focal_px, h)
    uv = project_crop(points + transl[:, None], config.focal_px, h, w)
    kp = batch["kp2d"].to(uv)
    visible = kp[..., 2] > 0
    err = (uv - kp[..., :2]).norm(dim=-1) / batch["box_side"].to(uv)[:, None]
    for alpha in (0.05, 0.1):
        hits = (err < alpha) & visible
        sums.add_counts(f"pck_{alpha}", float(hits.sum()), float(visible.sum()))
        for part, sl in PCK_PARTS.items():
            sums.add_counts(f"pck_{alpha}_{part}", float(hits[:, sl].sum()), float(visible[:, sl].sum()))


def mean_outputs(network: Any, batch_size: int) -> dict[str, Tensor]:
    """The regressor's outputs for a batch when it predicts its mean parameters (the baseline)."""
    from model.networks.pear import unpack_params

    return unpack_params(network.config, network.init_params.expand(batch_size, -1))


def evaluate_shards(checkpoint: str | Path, urls: Any, *, body_models: str | None = None, device: str = "auto",
                    batch_size: int = 16, limit: int | None = None, baseline: bool = False) -> dict[str, Any]:
    """Metrics (module docstring) of a ``pearl train`` checkpoint on the shards ``urls`` (unaugmented crops,
    gated as in training). ``baseline``: also report the mean-parameter prediction (``*_mean_pose``)."""
    from model.checkpoints import torch_device
    from model.flip import ShapeMirror
    from model.pear import load_regressor
    from pipelines.io.body_models import resolve_body_models
    from pipelines.train.augment import SamplePreparer
    from pipelines.train.config import config_from_dict
    from pipelines.train.data import EvalStream, collate, resolve_urls

    loaded = load_regressor(checkpoint)
    train_config = config_from_dict(dict(loaded.train_config), f"{checkpoint} (its config)")
    dev = torch_device(device)
    folder = resolve_body_models(body_models or train_config.body_models).folder
    bodies = PosedBodies(folder, dev)
    network = loaded.network.to(dev)
    data = train_config.data
    preparer = SamplePreparer(data, loaded.config, ShapeMirror.identity())
    stream = EvalStream(resolve_urls(urls), preparer, limit=limit or 10**12)
    sums, base = MetricSums(), MetricSums()
    batch: list[dict[str, Any]] = []
    n = 0

    def run(samples: list[dict[str, Any]]) -> None:
        b = collate(samples)
        with torch.no_grad():
            images = network.normalize(b["image"].to(dev))
            batch_metrics(bodies, network(images), b, loaded.config, sums)
            if baseline:
                batch_metrics(bodies, mean_outputs(network, len(samples)), b, loaded.config, base)

    for sample in stream:
        batch.append(sample)
        n += 1
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    result: dict[str, Any] = {"samples": n, "checkpoint": str(checkpoint), "checkpoint_digest": loaded.digest}
    result.update(sums.means())
    if baseline:
        result.update({f"{k}_mean_pose": v for k, v in base.means().items()})
    return result


def evaluate_coco_wholebody(checkpoint: str | Path, labels: str | Path, *, image_root: str | Path | None = None,
                            body_models: str | None = None, device: str = "auto", batch_size: int = 16,
                            ) -> dict[str, Any]:
    """2D PCK@0.05 / 0.1 of the predicted COCO-WholeBody points against human labels (PEAR Tab. 3): each
    labelled person's box (``bbox``) is cropped from its image (``image_root``, default the json's folder),
    the prediction projected into the image, and every labelled keypoint (``v > 0``) counted, normalised by
    the box's longer side (``docs/metrics.md``; COCO pixel centres at integers, +0.5 on reading)."""
    from annotators.images import decode_image
    from fitting.camera import default_intrinsics
    from model.pear import PearPredictor
    from pipelines.io.body_models import resolve_body_models
    from pipelines.io.sources import coco_box_xyxy, safe_relative_path

    labels = Path(labels)
    root = Path(image_root) if image_root else labels.parent
    data = json.loads(labels.read_text())
    images = {im["id"]: im for im in data.get("images", [])}
    people: dict[int, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd"):
            continue
        kp = _wholebody_label(ann)
        if kp is None or not (kp[:, 2] > 0).any():
            continue
        try:
            box = coco_box_xyxy(ann)
        except ValueError as exc:
            log.warning("%s: %s; left out", labels, exc)
            continue
        people.setdefault(ann["image_id"], []).append({"box": box, "kp": kp})
    predictor = PearPredictor(checkpoint, device=device, batch_size=batch_size)
    bodies = PosedBodies(resolve_body_models(body_models or predictor.train_config.get("body_models")).folder)
    sums = MetricSums()
    persons = 0
    for image_id, anns in sorted(people.items()):
        name = str(images.get(image_id, {}).get("file_name", ""))
        problem = safe_relative_path(name) if name else f"image {image_id} has no file_name"
        if problem:
            log.warning("%s: %s; left out", labels, problem)
            continue
        path = root / name
        rgb = decode_image(path.read_bytes(), source=str(path))
        boxes = np.array([a["box"] for a in anns], np.float64)
        k = default_intrinsics(rgb.shape[1], rgb.shape[0]).numpy()
        columns = predictor.predict([rgb], boxes, np.repeat(k[None], len(boxes), 0), np.zeros(len(boxes), np.int64))
        uv = _projected_wholebody(bodies, columns)
        for i, ann in enumerate(anns):
            gt = ann["kp"]
            visible = gt[:, 2] > 0
            side = max(boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1])
            err = np.linalg.norm(uv[i] - gt[:, :2], axis=-1) / side
            for alpha in (0.05, 0.1):
                sums.add_counts(f"coco_wholebody_pck_{alpha}", float(((err < alpha) & visible).sum()), float(visible.sum()))
                for part, sl in PCK_PARTS.items():
                    sums.add_counts(f"coco_wholebody_pck_{alpha}_{part}", float(((err < alpha) & visible)[sl].sum()),
                                    float(visible[sl].sum()))
            persons += 1
    result: dict[str, Any] = {"coco_wholebody_persons": persons, "coco_wholebody_labels": str(labels)}
    result.update(sums.means())
    return result


def _projected_wholebody(bodies: PosedBodies, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Image px ``[N, 133, 2]`` of the EHM bodies in record ``columns`` (camera frame, their intrinsics)."""
    from fitting.camera import project
    from model.ehm_record import ehm_params_from_columns

    params = ehm_params_from_columns(columns, eyelids=bodies.ehm.flame.has_eyelids)
    with torch.no_grad():
        out = bodies.pose(params)
        points = ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68)
        return project(points, torch.as_tensor(columns["cam_intrinsics"])).numpy()


def _wholebody_label(ann: Mapping[str, Any]) -> np.ndarray | None:
    """``[133, 3]`` (x, y, v) of a COCO-WholeBody annotation in pearl's pixel convention (+0.5), or None."""
    parts = ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")
    sizes = (17, 6, 68, 21, 21)
    if not all(p in ann for p in parts):
        return None
    kp = np.concatenate([np.asarray(ann[p], np.float64).reshape(n, 3) for p, n in zip(parts, sizes)])
    kp[:, :2] += 0.5
    return kp
