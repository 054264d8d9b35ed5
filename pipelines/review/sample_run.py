"""A run folder of synthetic persons with known answers, for the review's tests, its benchmark and its
screenshots: what ``pearl annotate`` writes, without running the annotators.

Each distinct person is a random EHM body (:data:`model.synthetic_people.STANDING`: standing, arms
lowered, some shape, expression and finger pose) in front of a pinhole camera; its crop is that body
rendered with :func:`model.render.render_mesh` over a coloured backdrop, its keypoints are the projected
COCO-WholeBody points of the same body with a little noise, and its quality figures are drawn at random
(about one person in seven has no face, one in five a missing hand, one in eleven no body: keypoints only).
The records go through the shard writer
(:class:`pipelines.io.shards.ShardWriter`) and the quarantine writer, so the folder has exactly the
layout and commit protocol of a real run: ``manifest.json``, ``wds/``, ``parquet/``, ``stats/``,
``quarantine/`` and ``report.json``. ``distinct`` persons are posed and rendered; beyond that, persons
repeat them under new keys with new quality figures (how the benchmark makes 10,000 persons quickly).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from pipelines.io.quarantine import QuarantineRow, write_quarantine
from pipelines.io.shards import ShardWriter

log = logging.getLogger(__name__)

IMAGE_SIZE = (640, 480)
"""Width and height of the (imaginary) source images."""
CROP_SIZE = 256
"""Side of the stored crops, as the annotation job's default."""
SOURCES = ("synthetic/studio", "synthetic/street")
"""Sources the persons are spread over."""


@dataclass(frozen=True)
class SampleRun:
    """What :func:`write_sample_run` wrote."""

    out: Path
    keys: tuple[str, ...]
    """Keys of the persons in the shards, in shard order."""
    quarantined: tuple[str, ...]
    """Keys of the quarantined persons."""


def _distinct_persons(body_models: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` posed, rendered persons: EHM parameters, keypoints, box, crop region and crop JPEG."""
    import torch
    from PIL import Image

    from fitting.objectives import ehm_wholebody_points
    from model.ehm import EHM
    from model.ehm_record import record_columns_from_ehm_params
    from model.render import render_mesh
    from model.synthetic_people import STANDING, backdrop, sample_ehm_params
    from pipelines.review.overlay import region_intrinsics

    rng = np.random.default_rng(seed)
    ehm = EHM.from_dir(body_models, camera_frame="opencv").eval()
    width, height = IMAGE_SIZE
    k = np.array([[700.0, 0.0, width / 2], [0.0, 700.0, height / 2], [0.0, 0.0, 1.0]], np.float32)
    params = sample_ehm_params(ehm, count, rng, STANDING)
    with torch.no_grad():
        out = ehm(**{n: torch.as_tensor(v) for n, v in params.items()})
        points = ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68)  # [N, 133, 3]
        uvw = points @ torch.as_tensor(k).T
        uv = (uvw[..., :2] / uvw[..., 2:]).numpy()
    columns = record_columns_from_ehm_params({n: torch.as_tensor(v) for n, v in params.items()})
    persons = []
    for i in range(count):
        noise = np.where(np.arange(133)[:, None] >= 23, 0.4, 1.5)  # px: face and hands are small
        kp = np.concatenate([uv[i] + rng.normal(0, 1.0, uv[i].shape) * noise, rng.uniform(0.55, 1.0, (133, 1))], -1)
        body = kp[:23, :2]
        box = np.concatenate([body.min(0) - 12, body.max(0) + 12]).astype(np.float32)
        centre, half = (box[:2] + box[2:]) / 2, max(box[2] - box[0], box[3] - box[1]) * 1.25 / 2
        region = np.concatenate([centre - half, centre + half]).astype(np.float32)
        kc = torch.as_tensor(region_intrinsics(k, region, CROP_SIZE, CROP_SIZE), dtype=torch.float32)
        rgb, alpha = render_mesh(out.vertices[i], out.faces, kc, CROP_SIZE, CROP_SIZE,
                                 color=tuple(rng.uniform(0.55, 0.95, 3)))
        a = alpha[0].numpy()[..., None]
        image = backdrop(rng, CROP_SIZE, CROP_SIZE) * (1 - a) + rgb[0].numpy() * a
        buf = io.BytesIO()
        Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        person = {c: v[i] for c, v in columns.items()}
        person.update(kp2d_wholebody=kp.astype(np.float32), bbox_xyxy=box, crop_xyxy=region, cam_intrinsics=k,
                      jpeg=buf.getvalue())
        persons.append(person)
    return persons


def _record(person: dict[str, Any], index: int, sample_key: str, split: str, run_fields: dict[str, str],
            rng: np.random.Generator) -> dict[str, Any]:
    values = {k: v for k, v in person.items() if k != "jpeg"}
    has_body = index % 11 != 5
    has_face = index % 7 != 3
    hands = np.array([index % 5 != 2, True])
    kp = values["kp2d_wholebody"].copy()
    if not has_face:
        kp[23:91, 2] = 0.0
    kp[91:112, 2] *= hands[0]
    box = values["bbox_xyxy"]
    side = float(max(box[2] - box[0], box[3] - box[1]))
    body_px = float(abs(rng.normal(6, 4)))
    face_px = float(abs(rng.normal(3, 2))) if has_face else np.nan
    hand_px = np.where(hands, np.abs(rng.normal(4, 3, 2)), np.nan).astype(np.float32)
    values.update(
        kp2d_wholebody=kp,
        has_kp_body=True, has_face=has_face, has_hands=hands, has_hand_landmarks=hands & (rng.random(2) < 0.7),
        has_body=has_body,
        conf_body=np.float32(kp[:17, 2].mean()), conf_face=np.float32(kp[23:91, 2].mean()),
        conf_hands=np.array([kp[91:112, 2].mean(), kp[112:, 2].mean()], np.float32),
        quality_reproj_px_body=np.float32(body_px if has_body else np.nan),
        quality_reproj_norm_body=np.float32(body_px / side if has_body else np.nan),
        quality_reproj_px_face=np.float32(face_px if has_body else np.nan),
        quality_reproj_norm_face=np.float32(face_px / (side / 6) if has_body else np.nan),
        quality_reproj_px_hands=hand_px if has_body else np.full(2, np.nan, np.float32),
        quality_reproj_norm_hands=(hand_px / (side / 8)).astype(np.float32) if has_body
        else np.full(2, np.nan, np.float32),
        quality_final_loss=np.float32(rng.uniform(0.01, 0.5) if has_body else np.nan),
        quality_silhouette_iou=np.float32(rng.uniform(0.55, 0.95) if has_body else np.nan),
        quality_silhouette_boundary_iou=np.float32(rng.uniform(0.3, 0.8) if has_body else np.nan),
        quality_flags=np.int32(int(schemas.QualityFlag.BODY_FROM_KEYPOINTS) * has_body
                               | int(schemas.QualityFlag.NOT_CONVERGED) * (index % 4 == 1)
                               | int(schemas.QualityFlag.LEFT_HAND_GATED) * (not hands[0])),
        quality_loss_terms=json.dumps({"ehm/keypoints": round(float(rng.uniform(0, 0.2)), 6)}, sort_keys=True),
        key=schemas.person_key(sample_key, 0), sample_key=sample_key, person_index=0,
        source=SOURCES[index % len(SOURCES)], split=split, image_width=IMAGE_SIZE[0], image_height=IMAGE_SIZE[1],
        bbox_score=np.float32(rng.uniform(0.7, 1.0)), bbox_source="detector", **run_fields,
    )
    if not has_body:
        for name in schemas.FIELD_NAMES:
            f = schemas.field(name)
            if f.part in ("body", "hands", "face") and not f.name.startswith("has_"):
                values.pop(name, None)
    if not has_face:
        for f in schemas.fields_of_part("face"):
            values.pop(f.name, None)
    return schemas.empty_record(**values)


def write_sample_run(
    out: str | Path,
    body_models: str | Path,
    *,
    persons: int = 12,
    per_shard: int = 5,
    quarantined: int = 2,
    distinct: int | None = None,
    splits: tuple[str, ...] = ("train",),
    seed: int = 0,
) -> SampleRun:
    """Write a synthetic run to ``out`` (see the module docstring): ``persons`` good persons in shards of
    ``per_shard``, spread over ``splits`` (consecutive blocks), plus ``quarantined`` persons in the
    quarantine tables (stage ``quality``, one per shard from the first on). ``distinct`` persons are
    rendered (default: all of them)."""
    import fsspec

    from model.assets.check import asset_hashes, kit_kind

    out = Path(out)
    fs, root = fsspec.core.url_to_fs(str(out))
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 1)
    distinct = min(persons, distinct or persons)
    bodies = _distinct_persons(str(body_models), distinct, seed)
    render_s = time.perf_counter() - t0
    hashes = asset_hashes(Path(body_models))
    kit = kit_kind(Path(body_models))
    run_fields = {"code_version": "sample-run", "config_hash": f"sample-{seed}", "body_model_kit": kit,
                  "asset_hashes": json.dumps(hashes, sort_keys=True, separators=(",", ":")),
                  "backends": json.dumps({"review": "sample_run@1"}, sort_keys=True)}
    keys, bad = [], []
    per_split = -(-persons // len(splits))
    t1 = time.perf_counter()
    shard_counts: dict[str, int] = {}
    index = 0
    for s, split in enumerate(splits):
        block = range(s * per_split, min(persons, (s + 1) * per_split))
        for shard, start in enumerate(range(block.start, block.stop, per_shard)):
            members = range(start, min(block.stop, start + per_shard))
            q_rows = []
            with ShardWriter(out, split, shard) as writer:
                for i in members:
                    sample_key = f"{SOURCES[i % len(SOURCES)]}/img{i:06d}.jpg"
                    record = _record(bodies[i % distinct], i, sample_key, split, run_fields, rng)
                    writer.add(record, bodies[i % distinct]["jpeg"])
                    keys.append(record["key"])
                if len(bad) < quarantined:
                    q_key = f"{SOURCES[0]}/bad{len(bad):06d}.jpg"
                    reason = (f"RejectedError: body reprojection {0.3 + 0.1 * len(bad):.2f} > 0.2 of the box "
                              f"(digest {index:06x})")
                    q_rows.append(QuarantineRow(schemas.person_key(q_key, 0), q_key, SOURCES[0], "quality", reason))
                    bad.append(q_rows[-1].key)
                write_quarantine(fs, root, split, shard, q_rows)
                writer.commit({"persons": len(members), "quarantined": len(q_rows),
                               "quarantined_by_reason": {"quality: RejectedError": len(q_rows)} if q_rows else {},
                               "timings": {"write_s": 0.0}})
                index += 1
            shard_counts[split] = shard + 1
    write_s = time.perf_counter() - t1
    manifest = {"schema_version": schemas.SCHEMA_VERSION, "splits": {
        split: {"code_version": run_fields["code_version"], "config_hash": run_fields["config_hash"],
                "body_model_kit": kit, "asset_hashes": hashes, "backends": {"review": "sample_run@1"},
                "shards": n, "config": {"sample_run": {"persons": persons, "seed": seed}}}
        for split, n in shard_counts.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    stages = {"render": {"calls": 1, "rows_in": distinct, "rows_out": distinct, "seconds": round(render_s, 4),
                         "rows_per_s": round(distinct / render_s, 3) if render_s > 0 else None},
              "write": {"calls": index, "rows_in": persons, "rows_out": persons, "seconds": round(write_s, 4),
                        "rows_per_s": round(persons / write_s, 3) if write_s > 0 else None}}
    report = {"run": {"runner": "sample_run", "samples_this_run": persons + len(bad)},
              "throughput": {"images_per_s": None, "stages": stages}}
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    log.info("wrote a sample run of %d persons (+%d quarantined) to %s", persons, len(bad), out)
    return SampleRun(out, tuple(keys), tuple(bad))


def start_review_server(args: list[str], cwd: str | Path) -> tuple[Any, str | None]:
    """``pearl review ARGS`` in a subprocess (``--port 0`` picks a free port): the process and the URL it
    serves on (read from its log), or ``None`` when it exited without serving. The caller terminates it."""
    import os
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "review", *args], cwd=str(cwd),
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:
        match = re.search(r"serving on (http://\S+/)", line)
        if match:
            return proc, match.group(1)
    return proc, None
