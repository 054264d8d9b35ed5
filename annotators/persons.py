"""The persons stage: image rows in, one row per person out (boxes from labels, else a detector).

Input rows are images: ``sample_key`` (str), ``image`` (object column of ``[H, W, 3]`` uint8 RGB),
``label_boxes`` (object column of ``[N, 4]`` float32 xyxy image px; ``[0, 4]`` when the source has
none), optionally ``has_label_boxes`` (bool: the source labels boxes for this image, even if none),
and any other columns. The batch is exploded: every person becomes a row that carries all input
columns (object columns such as ``image`` share their objects, nothing is copied) plus ``key``,
``person_index``, ``bbox_xyxy``, ``bbox_score``, ``bbox_source``, ``image_width`` and ``image_height``.

- Labelled images keep their label boxes (``bbox_source = "label"``, score 1), in the stage's order.
- Other images go to the detector (``bbox_source = "detector"``); see :class:`MediaPipePoseDetector`.
- Persons are ordered by box area (largest first), then top, then left edge; ``person_index`` counts
  from 0 in that order and ``key = "{sample_key}/p{person_index:02d}"``.
- An image with no person (none detected, none labelled, or all below ``min_box_size``) yields one row
  with ``error_stage = "persons"``, ``error_reason`` starting ``"no person found"``, ``person_index = -1``
  and ``key = sample_key``; so do images whose label boxes are malformed. Rows that arrive failed pass
  through as one row each, unchanged apart from those placeholder columns.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import numpy as np

from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy, Registry, Stage, StageResources, error_digest, resource
from annotators.batches import Batch
from annotators.images import box_iou, crop_person, nms
from schemas import person_key

log = logging.getLogger(__name__)

STAGE = "persons"
"""``error_stage`` of rows this stage fails."""
NO_PERSON = "no person found"
"""Start of the ``error_reason`` of images without a person."""

POSE_DETECTOR_TFLITE = "pose_detection/pose_detection.tflite"
POSE_LANDMARKS_TFLITE = "pose_landmark/pose_landmark_full.tflite"
"""The wheel's BlazePose models (``mediapipe/modules/...``): the detector and the *full* landmark model,
the only landmark model the wheel ships (lite/heavy would be downloaded, which fails offline)."""
BUNDLE_MEMBERS = {"pose_detector.tflite": (POSE_DETECTOR_TFLITE, 127.5, 127.5),
                  "pose_landmarks_detector.tflite": (POSE_LANDMARKS_TFLITE, 0.0, 255.0)}
"""``.task`` member name -> (wheel model, input mean, input std): the names the Tasks PoseLandmarker graph
looks up, and the input normalisation of the legacy graphs (detector [-1, 1], landmarks [0, 1])."""

HEAD_LANDMARKS = slice(0, 11)
"""BlazePose landmarks 0-10: nose, eyes, ears, mouth corners."""
SHOULDERS = (11, 12)

PERSON_DETECTORS = Registry("person detector")
"""Person detectors by name (``PersonsConfig.detector``); each factory takes a :class:`PersonsConfig`."""


class PersonDetector(Protocol):
    """Finds persons in an RGB image."""

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``image [H, W, 3]`` uint8 -> ``(boxes [N, 4] float32 xyxy px, scores [N] float32 in [0, 1])``."""
        ...


@dataclass
class PersonsConfig:
    """Options of the persons stage (``stages: - name: persons/mediapipe, options: {...}``)."""

    detector: str = "mediapipe_pose"
    """Detector used for images without label boxes (a name in :data:`PERSON_DETECTORS`)."""
    tile_fractions: tuple[float, ...] = (1.0, 0.6)
    """Search windows besides the whole image: square tiles whose side is each fraction of the image's
    shorter side (a tile as large as the whole image is skipped). Smaller fractions find smaller people,
    at the cost of more detector calls; ``()`` runs the whole image only."""
    tile_overlap: float = 0.4
    """Overlap of neighbouring tiles, as a fraction of the tile side (0 <= overlap < 1)."""
    tile_border: float = 0.02
    """A person whose box reaches within this fraction of the tile side of a tile edge that is not an image
    edge is dropped from that tile (it is cut by the tile; a larger window sees it whole)."""
    poses_per_window: int = 5
    """Most persons the detector returns per window."""
    search_confidence: float = 0.3
    """Detection and presence threshold of the search over windows (MediaPipe's defaults are 0.5)."""
    verify: bool = True
    """Re-run the landmark model on a crop around each candidate and keep it only if it finds the same
    person there (box IoU >= ``verify_iou``); the box is then taken from that re-run. Removes most
    false candidates (parts of one person seen as a whole person in a tile)."""
    verify_confidence: float = 0.5
    """Detection and presence threshold of the verification run."""
    verify_scales: tuple[float, ...] = (1.25, 1.6)
    """Verification crop sides as multiples of the candidate box's longer side, tried in order until one
    confirms the candidate (the pose detector's decision flips with small crop changes)."""
    verify_iou: float = 0.5
    """Least IoU between a candidate box and its verified box."""
    head_margin: float = 0.8
    """The box reaches past the head centre (mean of landmarks 0-10), away from the shoulders, by this many
    head sizes (largest distance between landmarks 0-10), to take in the top of the head."""
    box_margin: float = 0.05
    """Margin added to each side of the landmark box, as a fraction of its width/height."""
    nms_iou: float = 0.5
    """Two detections with a higher IoU are one person (the higher score wins)."""
    max_persons: int = 20
    """Most persons kept per image (largest boxes first); applies to detections and labels."""
    min_box_size: float = 16.0
    """Persons whose box's longer side is shorter than this (px) are dropped; applies to detections and
    labels."""

    def __post_init__(self) -> None:
        self.tile_fractions = tuple(float(f) for f in self.tile_fractions)
        self.verify_scales = tuple(float(s) for s in self.verify_scales)
        checks = {
            "tile_fractions": all(0 < f <= 1 for f in self.tile_fractions),
            "tile_overlap": 0 <= self.tile_overlap < 1,
            "tile_border": 0 <= self.tile_border < 0.5,
            "poses_per_window": self.poses_per_window >= 1,
            "search_confidence": 0 <= self.search_confidence <= 1,
            "verify_confidence": 0 <= self.verify_confidence <= 1,
            "verify_scales": len(self.verify_scales) > 0 and all(s > 0 for s in self.verify_scales),
            "verify_iou": 0 <= self.verify_iou <= 1,
            "head_margin": self.head_margin >= 0,
            "box_margin": self.box_margin >= 0,
            "nms_iou": 0 < self.nms_iou <= 1,
            "max_persons": self.max_persons >= 1,
            "min_box_size": self.min_box_size >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"PersonsConfig: out of range: {values} (see the field docs in docs/persons.md)")


# --------------------------------------------------------------------------------------------------
# Box geometry (pure functions)
# --------------------------------------------------------------------------------------------------


def person_order(boxes: np.ndarray) -> np.ndarray:
    """Indices that sort boxes ``[N, 4]`` by area (largest first), then top edge, then left edge."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.lexsort((boxes[:, 0], boxes[:, 1], -area)).astype(np.int64)


def landmarks_to_box(points_xy: np.ndarray, *, head_margin: float, box_margin: float) -> np.ndarray:
    """Person box ``[4]`` xyxy from BlazePose landmarks ``points_xy [33, 2]`` (px, any frame).

    The box holds every landmark (visible or not: the model places hidden and out-of-frame joints too)
    and a point ``head_margin`` head sizes past the head centre, away from the shoulders' midpoint
    (the top of the head, which no landmark marks); then ``box_margin`` of its size is added per side.
    """
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    head = points[HEAD_LANDMARKS]
    centre = head.mean(axis=0)
    head_size = float(np.max(np.linalg.norm(head[:, None] - head[None], axis=-1)))
    up = centre - points[list(SHOULDERS)].mean(axis=0)
    norm = float(np.linalg.norm(up))
    if norm > 0:
        points = np.vstack([points, centre + up / norm * head_margin * head_size])
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = (hi - lo) * box_margin
    return np.concatenate([lo - pad, hi + pad])


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box ``[4]`` xyxy clipped to the image ``[0, width] x [0, height]``."""
    return np.clip(np.asarray(box, dtype=np.float64), 0, [width, height, width, height])


def tile_windows(width: int, height: int, fractions: tuple[float, ...], overlap: float) -> list[tuple[int, int, int]]:
    """Square search windows ``(x0, y0, side)`` of an image, evenly spaced to cover it, for each fraction
    of its shorter side; windows as large as the image are left out (the whole-image pass covers them)."""
    out = []
    for fraction in fractions:
        side = int(round(fraction * min(width, height)))
        if side < 1 or side >= max(width, height):
            continue
        stride = max(1.0, side * (1 - overlap))
        xs = np.linspace(0, width - side, math.ceil((width - side) / stride) + 1) if width > side else [0]
        ys = np.linspace(0, height - side, math.ceil((height - side) / stride) + 1) if height > side else [0]
        out += [(int(round(x)), int(round(y)), side) for y in ys for x in xs]
    return out


# --------------------------------------------------------------------------------------------------
# MediaPipe detector
# --------------------------------------------------------------------------------------------------


def pose_landmarker_bundle() -> bytes:
    """A MediaPipe Tasks ``.task`` bundle (zip) for ``PoseLandmarker``, assembled in memory from the
    models inside the installed ``mediapipe`` wheel, with the input-normalisation metadata the Tasks
    graph requires (the wheel's legacy models have none). Nothing is downloaded or written to disk."""
    import mediapipe
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer, model_asset_bundle_utils

    modules = os.path.join(os.path.dirname(mediapipe.__file__), "modules")
    members = {}
    for member, (relpath, mean, std) in BUNDLE_MEMBERS.items():
        path = os.path.join(modules, relpath)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing from the mediapipe wheel; reinstall mediapipe==0.10.21")
        with open(path, "rb") as fh:
            writer = metadata_writer.MetadataWriter.create(bytearray(fh.read()))
        model, _ = writer.add_general_info(member).add_image_input([mean], [std]).populate()
        members[member] = bytes(model)
    out = io.BytesIO()
    with model_asset_bundle_utils.AlignZipFile(out, mode="w", alignment=4096) as zf:
        for member, model in members.items():
            zf.writestr(member, model)
    return out.getvalue()


@PERSON_DETECTORS.register("mediapipe_pose")
class MediaPipePoseDetector:
    """Multi-person detector from MediaPipe's BlazePose models (weights inside the wheel).

    1. **Search**: the Tasks ``PoseLandmarker`` (``num_poses = poses_per_window``) runs on the whole
       image and on overlapping square tiles (``tile_fractions``, ``tile_overlap``); each skeleton gives
       a box (:func:`landmarks_to_box`); skeletons cut by an inner tile edge are dropped; NMS merges.
    2. **Verify** (``verify``): each candidate is cropped (``verify_scales``, in turn) and the landmarker
       re-run on the crop with one pose; the candidate stays if the new box overlaps it (``verify_iou``),
       with the new box and score. Then NMS again.

    The score of a box is the mean visibility of its 33 landmarks (low for people partly out of frame).
    """

    def __init__(self, config: PersonsConfig) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        self.config = config
        bundle = pose_landmarker_bundle()

        def landmarker(num_poses: int, confidence: float) -> Any:
            options = vision.PoseLandmarkerOptions(
                base_options=BaseOptions(model_asset_buffer=bundle),
                running_mode=vision.RunningMode.IMAGE,
                num_poses=num_poses,
                min_pose_detection_confidence=confidence,
                min_pose_presence_confidence=confidence)
            return vision.PoseLandmarker.create_from_options(options)

        self._search = landmarker(config.poses_per_window, config.search_confidence)
        self._verify = landmarker(1, config.verify_confidence) if config.verify else None

    def _skeletons(self, landmarker: Any, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """``(points [33, 2] in px of image, mean visibility)`` per pose found in ``image``."""
        import mediapipe

        h, w = image.shape[:2]
        result = landmarker.detect(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB,
                                                   data=np.ascontiguousarray(image)))
        out = []
        for pose in result.pose_landmarks:
            points = np.array([[p.x * w, p.y * h] for p in pose], dtype=np.float64)
            out.append((points, float(np.mean([p.visibility or 0.0 for p in pose]))))
        return out

    def _box(self, points: np.ndarray) -> np.ndarray:
        return landmarks_to_box(points, head_margin=self.config.head_margin, box_margin=self.config.box_margin)

    def candidates(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search pass: boxes ``[N, 4]`` (clipped to the image) and scores ``[N]`` after NMS."""
        cfg = self.config
        h, w = image.shape[:2]
        boxes, scores = [], []
        for points, score in self._skeletons(self._search, image):
            boxes.append(clip_box(self._box(points), w, h))
            scores.append(score)
        for x0, y0, side in tile_windows(w, h, cfg.tile_fractions, cfg.tile_overlap):
            margin = cfg.tile_border * side
            for points, score in self._skeletons(self._search, image[y0:y0 + side, x0:x0 + side]):
                box = self._box(points + [x0, y0])
                cut = ((x0 > 0 and box[0] < x0 + margin) or (y0 > 0 and box[1] < y0 + margin)
                       or (x0 + side < w and box[2] > x0 + side - margin)
                       or (y0 + side < h and box[3] > y0 + side - margin))
                if not cut:
                    boxes.append(clip_box(box, w, h))
                    scores.append(score)
        return _nms_arrays(boxes, scores, cfg.nms_iou)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self.candidates(image)
        if self._verify is None:
            return boxes, scores
        kept, kept_scores = [], []
        for box in boxes:
            verified = self.verify(image, box)
            if verified is not None:
                kept.append(verified[0])
                kept_scores.append(verified[1])
        return _nms_arrays(kept, kept_scores, self.config.nms_iou)

    def verify(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float] | None:
        """``(verified box [4], score)`` of candidate ``box [4]``, or None when no crop confirms it."""
        h, w = image.shape[:2]
        for scale in self.config.verify_scales:
            crop, crop_to_image = crop_person(image, box, scale=scale)
            for points, score in self._skeletons(self._verify, crop):
                verified = clip_box(self._box(points @ crop_to_image[:, :2].T + crop_to_image[:, 2]), w, h)
                if box_iou(verified[None], box[None])[0, 0] >= self.config.verify_iou:
                    return verified, score
        return None


def _nms_arrays(boxes: list[np.ndarray], scores: list[float], iou: float) -> tuple[np.ndarray, np.ndarray]:
    boxes_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores_arr = np.asarray(scores, dtype=np.float32).reshape(-1)
    keep = nms(boxes_arr, scores_arr, iou)
    return boxes_arr[keep], scores_arr[keep]


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


class _NoPerson(Exception):
    """An image yields no person; the message is the reason."""


@STAGES.register("persons/mediapipe")
class PersonsStage(Stage):
    """Image rows -> person rows (see the module docstring). The detector is built on the first image
    that needs one, so label-only jobs never load it."""

    name = STAGE
    config_class = PersonsConfig
    resources = StageResources(num_cpus=0.25, batch_size=4)
    default_backend = True
    version = f"{metadata.version('mediapipe')}+pose_full.tiles1"
    """MediaPipe's version, the landmark model and this stage's detection algorithm (bump on changes)."""
    required = ("sample_key",)

    @resource
    def detector(self) -> PersonDetector:
        """The configured person detector (:data:`PERSON_DETECTORS`), built once."""
        return PERSON_DETECTORS.get(self.config.detector)(self.config)

    def persons(self, image: np.ndarray, label_boxes: np.ndarray | None, has_labels: bool | None) -> dict[str, np.ndarray]:
        """Boxes ``[P, 4]`` float32, scores ``[P]`` float32 and sources ``[P]`` (str) of one image, in person
        order; raises :class:`_NoPerson` when there is none and ``ValueError`` for malformed label boxes."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3], got {getattr(image, 'dtype', type(image))} "
                             f"{getattr(image, 'shape', '')}")
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise ValueError(f"image has no pixels: shape {image.shape}")
        labels = np.zeros((0, 4), np.float32) if label_boxes is None else np.asarray(label_boxes, dtype=np.float32)
        if labels.ndim != 2 or labels.shape[1] != 4:
            raise ValueError(f"label_boxes must be [N, 4] xyxy, got shape {labels.shape}")
        if has_labels is None:
            has_labels = len(labels) > 0
        if has_labels:
            _check_label_boxes(labels, w, h)
            boxes, scores, source = labels, np.ones(len(labels), np.float32), "label"
            what = f"the source labels {len(labels)} person box(es)"
        else:
            boxes, scores = self.detector(image)
            source = "detector"
            what = f"detector {self.config.detector!r} found {len(boxes)} candidate(s)"
        size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        big = size >= self.config.min_box_size
        if not big.any():
            detail = f" of at least min_box_size={self.config.min_box_size:g} px" if len(boxes) else ""
            raise _NoPerson(f"{NO_PERSON}{detail} ({what})")
        boxes, scores = boxes[big], scores[big]
        order = person_order(boxes)[: self.config.max_persons]
        return {"bbox_xyxy": boxes[order].astype(np.float32), "bbox_score": scores[order].astype(np.float32),
                "bbox_source": np.array([source] * len(order), dtype=object)}

    def __call__(self, batch: Batch) -> Batch:
        n = self.check_columns(batch)
        has_labels_col = batch.get("has_label_boxes")
        rows: list[int] = []
        fields: list[dict[str, Any]] = []
        for i in range(n):
            if batch[ERROR_STAGE][i]:
                rows.append(i)
                fields.append({})
                continue
            try:
                found = self.persons(batch["image"][i],
                                     batch["label_boxes"][i] if "label_boxes" in batch else None,
                                     None if has_labels_col is None else bool(has_labels_col[i]))
            except Exception as exc:  # noqa: BLE001 - the policy decides
                if self.policy is ErrorPolicy.RAISE and not isinstance(exc, _NoPerson):
                    raise
                reason = str(exc) if isinstance(exc, _NoPerson) else error_digest(exc)
                rows.append(i)
                fields.append({ERROR_STAGE: STAGE, ERROR_REASON: reason})
                continue
            for p in range(len(found["bbox_xyxy"])):
                rows.append(i)
                fields.append({"person_index": p, **{k: v[p] for k, v in found.items()}})
        return self._explode(batch, np.array(rows, dtype=np.int64), fields)

    @staticmethod
    def _explode(batch: Batch, rows: np.ndarray, fields: list[dict[str, Any]]) -> Batch:
        """Output batch: input columns taken at ``rows`` plus this stage's columns from ``fields`` (an
        empty dict, or one holding only error columns, makes a placeholder row with ``person_index = -1``)."""
        out = {key: col[rows] for key, col in batch.items()}
        m = len(rows)
        out[ERROR_STAGE] = out[ERROR_STAGE].copy()
        out[ERROR_REASON] = out[ERROR_REASON].copy()
        person_index = np.full(m, -1, dtype=np.int32)
        bbox = np.zeros((m, 4), dtype=np.float32)
        score = np.zeros(m, dtype=np.float32)
        source = np.array([""] * m, dtype=object)
        width = np.zeros(m, dtype=np.int32)
        height = np.zeros(m, dtype=np.int32)
        for j, f in enumerate(fields):
            if ERROR_STAGE in f:
                out[ERROR_STAGE][j], out[ERROR_REASON][j] = f[ERROR_STAGE], f[ERROR_REASON]
            if "person_index" in f:
                person_index[j] = f["person_index"]
                bbox[j], score[j], source[j] = f["bbox_xyxy"], f["bbox_score"], f["bbox_source"]
            image = out["image"][j] if "image" in out else None
            if isinstance(image, np.ndarray) and image.ndim >= 2:
                height[j], width[j] = image.shape[:2]
        keys = [person_key(str(s), int(p)) if p >= 0 else str(s) for s, p in zip(out["sample_key"], person_index)]
        out.update(key=np.array(keys, dtype=object), person_index=person_index, bbox_xyxy=bbox, bbox_score=score,
                   bbox_source=source, image_width=width, image_height=height)
        return out


def _check_label_boxes(boxes: np.ndarray, width: int, height: int) -> None:
    """Raise ``ValueError`` naming the first label box that is not finite, is empty or misses the image."""
    for k, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        if not np.all(np.isfinite(box)):
            problem = "is not finite"
        elif x2 <= x1 or y2 <= y1:
            problem = "is empty (needs x1 < x2 and y1 < y2)"
        elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            problem = f"lies outside the {width}x{height} image"
        else:
            continue
        raise ValueError(f"label box {k} {box.tolist()} {problem}; fix the source's labels")

