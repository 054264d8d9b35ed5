"""``pearl corpus synthesize``: a training corpus with known answers.

Each person is the body-model kit posed from a pose distribution that respects the joint limits
(:data:`model.synthetic_people.PoseDistribution` ``varied``: body joints within their ranges, hands from open
to fist, FLAME shape, expression, jaw and eyes), dressed with a random texture
(:func:`model.synthetic_people.body_texture`: skin, hair, shirt with a chest band, trousers, shoes), seen by a
random pinhole camera (image size, focal length) at a random place and size in the image, and rendered with
the project's rasteriser (:func:`model.render.render_mesh`, Lambert shading) over a random cluttered backdrop.

What is written is what ``pearl annotate`` would write for that image, through the annotate job's own sink
(:class:`pipelines.io.sinks.ShardSink`: WebDataset tar, Parquet, stats, commit protocol) and with its crop
convention: ``crop.jpg`` shows the square of ``crop_scale`` person-box sides around the box (zeros outside the
image) at ``crop_size`` px, ``crop_xyxy`` its exact image region. The records hold the exact EHM
parameters, the projected COCO-WholeBody keypoints with a little noise (confidence 0 outside the image), the
box of the visible mesh, the camera, and quality fields measured against those keypoints. ``OUT`` gets
``manifest.json``, ``wds/``, ``parquet/``, ``stats/`` and ``quarantine/`` like an annotation run, with splits
``train`` and (``val_count > 0``) ``val``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import schemas
from schemas import keypoints as kpl
from model.synthetic_people import PoseDistribution

log = logging.getLogger(__name__)

IMAGE_SIZES = ((640, 480), (480, 640), (800, 600), (1280, 720), (720, 1280))
"""(width, height) of the imaginary source images, drawn at random."""
BODY_HEIGHT_M = 1.7
"""Nominal standing height used to place people at a chosen size in the image."""


@dataclass
class CorpusConfig:
    """What ``pearl corpus synthesize`` makes."""

    count: int = 1000
    """Training persons (split ``train``)."""
    val_count: int = 0
    """Held-out persons (split ``val``, drawn after the training ones)."""
    per_shard: int = 64
    """Persons per shard."""
    seed: int = 0
    """Seed of everything drawn."""
    crop_scale: float = 2.0
    """Side of each ``crop.jpg`` in person-box sides (the annotate job's ``sink.crop_scale``)."""
    crop_size: int = 384
    """Side of ``crop.jpg`` in px (the annotate job's ``sink.crop_size``)."""
    pose: PoseDistribution = field(default_factory=PoseDistribution)
    """The pose distribution (:class:`model.synthetic_people.PoseDistribution`)."""
    person_size: tuple[float, float] = (0.35, 0.85)
    """Range of a standing person's height as a share of the image height."""
    focal: tuple[float, float] = (0.7, 1.5)
    """Range of the focal length as a multiple of the image diagonal."""
    clutter: int = 6
    """Objects on each backdrop."""
    keypoint_noise_px: float = 1.0
    """Standard deviation (px) of the noise on the body keypoints (a third of it on face and hands)."""
    chunk: int = 32
    """Persons posed per EHM call."""

    def __post_init__(self) -> None:
        if self.count < 1 or self.val_count < 0 or self.per_shard < 1 or self.chunk < 1:
            raise ValueError("corpus: count, per_shard and chunk must be >= 1 and val_count >= 0")
        if not self.crop_scale > 0 or self.crop_size < 16:
            raise ValueError("corpus: crop_scale must be > 0 and crop_size >= 16")


@dataclass(frozen=True)
class Corpus:
    """What :func:`synthesize` wrote."""

    out: Path
    persons: dict[str, int]
    """Persons per split."""
    seconds: float


def _camera(rng: np.random.Generator, cfg: CorpusConfig) -> tuple[int, int, np.ndarray]:
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    f = rng.uniform(*cfg.focal) * float(np.hypot(width, height))
    k = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], np.float32)
    return width, height, k


def _persons(ehm: Any, regions: dict[str, np.ndarray], count: int, cfg: CorpusConfig, rng: np.random.Generator,
             ) -> list[dict[str, Any]]:
    """``count`` posed, placed and rendered persons: record fields plus ``crop_jpeg``."""
    import torch

    from annotators.images import crop_region, encode_jpeg
    from fitting.camera import project
    from fitting.objectives import ehm_wholebody_points
    from model.body_models import SMPLX
    from model.ehm_record import record_columns_from_ehm_params
    from model.render import render_mesh
    from model.rotations import rotmat_to_rotvec
    from model.synthetic_people import backdrop, body_texture, sample_ehm_params
    from pipelines.review.overlay import region_intrinsics

    params = sample_ehm_params(ehm, count, rng, cfg.pose)
    cams = [_camera(rng, cfg) for _ in range(count)]
    with torch.no_grad():
        tensors = {k: torch.as_tensor(v) for k, v in params.items()}
        tensors["transl"] = torch.zeros(count, 3)
        rest = ehm(**tensors)
        # place each person: pelvis at a random image point, at the depth that gives the drawn size
        for i, (w, h, k) in enumerate(cams):
            depth = k[1, 1] * BODY_HEIGHT_M / (rng.uniform(*cfg.person_size) * h)
            u, v = rng.uniform(0.25, 0.75) * w, rng.uniform(0.4, 0.6) * h
            pelvis = np.array([(u - k[0, 2]) * depth / k[0, 0], (v - k[1, 2]) * depth / k[1, 1], depth])
            params["transl"][i] = pelvis - rest.joints[i, 0].numpy()
        tensors["transl"] = torch.as_tensor(params["transl"])
        out = ehm(**tensors)
        points = ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68)
        intr = torch.as_tensor(np.stack([c[2] for c in cams]))
        uv = project(points, intr).numpy()
        verts_uv = project(out.vertices, intr).numpy()
    columns = record_columns_from_ehm_params(tensors)
    wrists = rotmat_to_rotvec(out.joint_rotations[:, [SMPLX.LEFT_WRIST, SMPLX.RIGHT_WRIST]]).numpy().astype(np.float32)
    persons = []
    for i, (w, h, k) in enumerate(cams):
        inside = (verts_uv[i, :, 0] >= 0) & (verts_uv[i, :, 0] <= w) & (verts_uv[i, :, 1] >= 0) & (verts_uv[i, :, 1] <= h)
        if inside.sum() < 50:  # hardly in the picture: place it again next time
            continue
        vis = verts_uv[i, inside]
        box = np.array([*vis.min(0), *vis.max(0)], np.float32)
        noise = np.where(np.arange(kpl.NUM_KEYPOINTS)[:, None] >= kpl.FEET.stop, cfg.keypoint_noise_px / 3,
                         cfg.keypoint_noise_px)
        kp_xy = uv[i] + rng.normal(0, 1.0, uv[i].shape) * noise
        in_image = (kp_xy[:, 0] >= 0) & (kp_xy[:, 0] <= w) & (kp_xy[:, 1] >= 0) & (kp_xy[:, 1] <= h)
        conf = np.where(in_image, rng.uniform(0.7, 1.0, kpl.NUM_KEYPOINTS), 0.0)
        kp = np.concatenate([kp_xy, conf[:, None]], -1).astype(np.float32)
        region = crop_region(box, cfg.crop_scale)
        size = cfg.crop_size
        kc = torch.as_tensor(region_intrinsics(k, region, size, size), dtype=torch.float32)
        colours = torch.as_tensor(body_texture(regions, rng))
        rgb, alpha = render_mesh(out.vertices[i], out.faces, kc, size, size, color=colours)
        a = alpha[0].numpy()[..., None]
        image = backdrop(rng, size, size, clutter=cfg.clutter) * (1 - a) + rgb[0].numpy() * a
        # outside the source image the annotate job's crop is black
        px = region[0] + (np.arange(size) + 0.5) * (region[2] - region[0]) / size
        py = region[1] + (np.arange(size) + 0.5) * (region[3] - region[1]) / size
        image[~((py >= 0) & (py < h))[:, None] | ~((px >= 0) & (px < w))[None, :]] = 0.0
        jpeg = encode_jpeg(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8))
        person = {c: v[i] for c, v in columns.items()}
        person.update(_quality(uv[i], kp, box))
        person.update(
            kp2d_wholebody=kp, bbox_xyxy=box, bbox_score=np.float32(1.0), bbox_source="label", crop_xyxy=region,
            cam_intrinsics=k, image_width=np.int32(w), image_height=np.int32(h), has_kp_body=True, has_body=True, has_face=True,
            has_hands=np.ones(2, bool), mano_global_orient=wrists[i],
            conf_body=np.float32(conf[kpl.BODY].mean()), conf_face=np.float32(conf[kpl.FACE].mean()),
            conf_hands=np.array([conf[sl].mean() for sl in kpl.HANDS], np.float32), crop_jpeg=jpeg,
        )
        persons.append(person)
    return persons


def _quality(points_uv: np.ndarray, kp: np.ndarray, box: np.ndarray) -> dict[str, Any]:
    """Reprojection of the exact body against its noisy keypoints, per part: the record's quality fields as
    the annotate job's quality stage measures them (:func:`fitting.quality.part_reprojection`)."""
    import torch

    from fitting.quality import part_reprojection

    q = {k: v[0].numpy().astype(np.float32) for k, v in part_reprojection(
        torch.as_tensor(points_uv[None], dtype=torch.float32), torch.as_tensor(kp[None]),
        torch.as_tensor(box[None])).items()}
    return {f"quality_reproj_px_{part}": q[part] for part in ("body", "face", "hands")} | {
        f"quality_reproj_norm_{part}": q[f"{part}_norm"] for part in ("body", "face", "hands")}


def _config_hash(cfg: CorpusConfig) -> str:
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def synthesize(out: str | Path, body_models: str | Path, config: CorpusConfig | None = None) -> Corpus:
    """Write the corpus (module docstring) to ``out`` (a local folder or fsspec URL that holds no run yet);
    ``config`` defaults to ``CorpusConfig()``."""
    config = config or CorpusConfig()
    import fsspec
    import torch

    from model.assets.check import asset_hashes, kit_kind
    from model.synthetic_people import texture_regions
    from model.ehm import EHM
    from pipelines.annotation.job import code_version
    from pipelines.io.samples import Sample
    from pipelines.io.sinks import CROP_JPEG, SAMPLE_ROWS, ShardSink, plan_shards
    from annotators.base import ERROR_REASON, ERROR_STAGE

    t0 = time.perf_counter()
    fs, root = fsspec.core.url_to_fs(str(out))
    if fs.exists(f"{root}/manifest.json"):
        raise FileExistsError(f"{out} already holds a run (manifest.json); give a new folder")
    ehm = EHM.from_dir(str(body_models), camera_frame="opencv").eval()
    with torch.no_grad():
        regions = texture_regions(ehm)
    hashes = asset_hashes(Path(body_models))
    kit = kit_kind(Path(body_models))
    config_hash = _config_hash(config)
    backends = {"corpus": "synthesize@1"}
    rng = np.random.default_rng(config.seed)
    manifest: dict[str, Any] = {"schema_version": schemas.SCHEMA_VERSION, "splits": {}}
    written: dict[str, int] = {}
    for split, count in (("train", config.count), ("val", config.val_count)):
        if not count:
            continue
        samples = [Sample(sample_key=f"synthetic/{split}/{i:07d}", source="pearl-corpus", uri="") for i in range(count)]
        shards = plan_shards(samples, config.per_shard)
        run_fields = {"code_version": code_version(), "config_hash": config_hash, "body_model_kit": kit,
                      "asset_hashes": json.dumps(hashes, sort_keys=True, separators=(",", ":")),
                      "backends": json.dumps(backends, sort_keys=True), "split": split}
        sink = ShardSink(fs, root, split, shards, run_fields)
        done = 0
        while done < count:
            persons = _persons(ehm, regions, min(config.chunk, count - done), config, rng)
            for person in persons[: count - done]:
                row = {k: v for k, v in person.items() if k != "crop_jpeg"}
                row.update({"sample_key": samples[done].sample_key, "source": "pearl-corpus", "person_index": np.int32(0),
                            SAMPLE_ROWS: 1, CROP_JPEG: person["crop_jpeg"], ERROR_STAGE: "", ERROR_REASON: ""})
                sink.add({k: _column([v]) for k, v in row.items()})
                done += 1
            log.info("corpus %s: %d / %d persons", split, done, count)
        sink.finish()
        written[split] = done
        manifest["splits"][split] = {"code_version": run_fields["code_version"], "config_hash": config_hash,
                                     "body_model_kit": kit, "asset_hashes": hashes, "backends": backends,
                                     "shards": len(shards), "config": {"corpus": _plain(config)}}
    fs.pipe_file(f"{root}/manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return Corpus(Path(str(out)), written, time.perf_counter() - t0)


def _column(values: list[Any]) -> np.ndarray:
    """A one-row batch column (object column for strings and bytes)."""
    v = values[0]
    if isinstance(v, (str, bytes)):
        col = np.empty(1, dtype=object)
        col[0] = v
        return col
    return np.stack([np.asarray(v) for v in values])


def _plain(config: CorpusConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
