"""``pearl predict``: a trained regressor on images, writing overlays and shards in the record schema.

For each image (files, or folders searched recursively): persons come from the ``persons/mediapipe`` stage
(its detector; or the boxes of ``--boxes FILE.json``: ``{"image name": [[x0, y0, x1, y1], ...]}``), the
regressor predicts each person's EHM parameters from its crop (:class:`model.pear.PearPredictor`, the
camera of an unknown lens: :func:`fitting.camera.default_intrinsics`), and the output folder gets

- ``wds/``, ``parquet/``, ``stats/`` (split ``predict``): one record per person, ``backends`` saying
  ``{"persons": "persons/mediapipe@<v>", "body": "body/pear@<checkpoint digest>"}``, the body, hands and
  face filled from the prediction (no keypoints: ``kp2d_wholebody`` is empty, ``has_kp_body`` False), and
  the person's ``crop.jpg`` with the annotate job's crop convention (``crop_scale`` box sides, ``crop_size``
  px, ``crop_xyxy`` its image region);
- ``overlays/<image>.jpg``: the image with every predicted mesh drawn over it;
- ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import schemas

log = logging.getLogger(__name__)

SPLIT = "predict"


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict_images` wrote."""

    out: Path
    persons: int
    images: int
    failed: dict[str, str]
    """Image -> reason, for images that could not be read or held no person."""


def overlay(image: np.ndarray, vertices: Any, faces: Any, intrinsics: np.ndarray) -> np.ndarray:
    """``image  # [H, W, 3]`` uint8 with the meshes ``vertices  # [N, V, 3]`` (camera frame) drawn over it,
    nearest first."""
    import torch

    from model.render import render_mesh

    h, w = image.shape[:2]
    out = image.astype(np.float32) / 255.0
    if len(vertices):
        order = torch.argsort(vertices[:, :, 2].mean(1), descending=True)  # far ones first
        for i in order.tolist():
            rgb, alpha = render_mesh(vertices[i], faces, torch.as_tensor(intrinsics[i], dtype=torch.float32), h, w)
            a = alpha[0].numpy()[..., None] * 0.85
            out = out * (1 - a) + rgb[0].numpy() * a
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def predict_images(inputs: list[str], checkpoint: str | Path, out: str | Path, *, body_models: str | None = None,
                   boxes: dict[str, list[list[float]]] | None = None, device: str = "auto", batch_size: int = 16,
                   per_shard: int = 256, crop_scale: float = 2.0, crop_size: int = 384) -> Prediction:
    """Run the regressor on ``inputs`` and write ``out`` (module docstring)."""
    import torch

    from annotators.base import STAGES, StageContext
    from annotators.images import crop_person, crop_region, decode_image, encode_jpeg
    from fitting.camera import default_intrinsics
    from model.assets.check import asset_hashes, kit_kind
    from model.body_models import SMPLX
    from model.ehm import EHM
    from model.ehm_record import ehm_params_from_columns
    from model.pear import PearPredictor
    from model.rotations import rotmat_to_rotvec
    from pipelines.annotation.job import code_version
    from pipelines.io.body_models import resolve_body_models
    from pipelines.io.shards import ShardWriter
    from pipelines.io.sources import discover_samples, read_bytes

    out = Path(out)
    if (out / "manifest.json").exists():
        raise FileExistsError(f"{out} already holds a run (manifest.json); give a new folder")
    samples = discover_samples(inputs)  # the annotate job's discovery: FIFOs and broken files become reasons
    predictor = PearPredictor(checkpoint, device=device, batch_size=batch_size)
    folder = resolve_body_models(body_models or predictor.train_config.get("body_models")).folder
    ehm = EHM.from_dir(folder, camera_frame="opencv").eval()
    persons_stage = STAGES.get("persons/mediapipe")(None, "quarantine", context=StageContext(body_models=folder))
    backends = {"persons": f"persons/mediapipe@{persons_stage.version}", "body": f"body/pear@{predictor.digest}"}
    run_fields = {"code_version": code_version(), "config_hash": predictor.digest, "body_model_kit": kit_kind(folder),
                  "asset_hashes": json.dumps(asset_hashes(folder), sort_keys=True, separators=(",", ":")),
                  "backends": json.dumps(backends, sort_keys=True), "split": SPLIT, "source": "pearl-predict"}
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    records: list[tuple[dict[str, Any], bytes | None]] = []
    for sample in samples:
        key, source = sample.sample_key, sample.source
        if sample.kind != "image" or sample.error_reason:
            failed[source] = sample.error_reason or "videos are not predicted: give image files"
            continue
        try:
            image = decode_image(read_bytes(sample.uri), source=source)
        except (OSError, ValueError) as exc:
            failed[source] = str(exc)
            continue
        label = np.asarray((boxes or {}).get(Path(source).name, np.zeros((0, 4))), np.float32).reshape(-1, 4)
        rows = persons_stage({"sample_key": np.array([key], object), "image": _objects([image]),
                              "label_boxes": _objects([label]), "has_label_boxes": np.array([boxes is not None])})
        good = [i for i in range(len(rows["sample_key"])) if not rows["error_stage"][i]]
        if not good:
            failed[source] = str(rows["error_reason"][0]) or "no person found"
            continue
        box = np.stack([rows["bbox_xyxy"][i] for i in good]).astype(np.float64)
        k = default_intrinsics(image.shape[1], image.shape[0]).numpy()
        intr = np.repeat(k[None], len(good), 0)
        columns = predictor.predict([image], box, intr, np.zeros(len(good), np.int64))
        params = ehm_params_from_columns(columns, eyelids=ehm.flame.has_eyelids)
        with torch.no_grad():
            posed = ehm(**params)
        wrists = rotmat_to_rotvec(posed.joint_rotations[:, [SMPLX.LEFT_WRIST, SMPLX.RIGHT_WRIST]]).numpy().astype(np.float32)
        Path(out / "overlays" / f"{schemas.wds_key(key)}.jpg").write_bytes(
            encode_jpeg(overlay(image, posed.vertices, posed.faces, intr)))
        for j, i in enumerate(good):
            crop, _ = crop_person(image, box[j], scale=crop_scale, out_size=crop_size)
            region = crop_region(box[j], crop_scale)
            values = {c: v[j] for c, v in columns.items() if c in schemas.FIELD_NAMES}
            values.update(run_fields)
            values.update(sample_key=key, person_index=np.int32(rows["person_index"][i]),
                          key=schemas.person_key(key, int(rows["person_index"][i])),
                          image_width=np.int32(image.shape[1]), image_height=np.int32(image.shape[0]),
                          bbox_xyxy=np.asarray(rows["bbox_xyxy"][i], np.float32),
                          bbox_score=np.float32(rows["bbox_score"][i]), bbox_source=str(rows["bbox_source"][i]),
                          mano_global_orient=wrists[j], has_kp_body=False, crop_xyxy=region)
            records.append((schemas.validate(schemas.empty_record(**values)), encode_jpeg(crop)))
    records.sort(key=lambda r: r[0]["key"])
    for shard, start in enumerate(range(0, len(records), per_shard)):
        with ShardWriter(out, SPLIT, shard) as writer:
            for record, crop in records[start:start + per_shard]:
                writer.add(record, crop)
            writer.commit({"persons": len(records[start:start + per_shard])})
    manifest = {"schema_version": schemas.SCHEMA_VERSION, "splits": {SPLIT: {
        "code_version": run_fields["code_version"], "config_hash": predictor.digest, "body_model_kit": run_fields[
            "body_model_kit"], "backends": backends, "shards": -(-len(records) // per_shard),
        "config": {"predict": {"checkpoint": str(checkpoint), "inputs": list(inputs)}}}}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    done = len(samples) - len(failed)
    log.info("predicted %d persons in %d images (%d failed) -> %s", len(records), done, len(failed), out)
    return Prediction(out, len(records), done, failed)


def _objects(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        column[i] = v
    return column
