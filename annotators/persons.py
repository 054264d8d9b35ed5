"""The persons stage: image rows in, one row per person out (boxes from labels, else a detector).

Input rows are images: ``sample_key`` (str), ``image`` (object column of ``[H, W, 3]`` uint8 RGB),
``label_boxes`` (object column of ``[N, 4]`` float32 xyxy image px; ``[0, 4]`` when the source has
none), optionally ``has_label_boxes`` (bool: the source labels boxes for this image, even if none),
and any other columns. The batch is exploded: every person becomes a row that carries all input
columns (object columns such as ``image`` share their objects, nothing is copied) plus ``key``,
``person_index``, ``bbox_xyxy``, ``bbox_score``, ``bbox_source``, ``image_width`` and ``image_height``.

- Labelled images keep their label boxes (``bbox_source = "label"``, score 1), in the stage's order.
- Other images go to the detector (``bbox_source = "detector"``): :class:`MediaPipeCrowdDetector` by default,
  or :class:`MediaPipePoseDetector` (``detector: mediapipe_pose``).
- Persons are ordered by box area (largest first), then top, then left edge; ``person_index`` counts
  from 0 in that order and ``key = "{sample_key}/p{person_index:02d}"``.
- An image with no person (none detected, none labelled, or all below ``min_box_size``) yields one row
  with ``error_stage = "persons"``, ``error_reason`` starting ``"no person found"``, ``person_index = -1``
  and ``key = sample_key``; so do images whose label boxes are malformed. Rows that arrive failed pass
  through as one row each, unchanged apart from those placeholder columns.
"""

from __future__ import annotations

import importlib
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
from annotators.images import Roi, angle_up_along, box_iou, crop_person, nms
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
LIMBS = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27),
         (24, 26), (26, 28), (27, 31), (28, 32), (0, 11), (0, 12))
"""BlazePose landmark pairs whose segments draw a body: arms, torso, legs, feet, nose to shoulders."""
ALIGNMENT_LANDMARKS = (33, 34)
"""The landmark model's two auxiliary points: hip centre and a point on the circle around the body."""
ROI_SCALE = 1.25
"""Side of BlazePose's person region, in body diameters (MediaPipe's pose graphs)."""
FACE_TO_HIPS = 3.4
"""Hip centre below the face centre, in face box heights (full-range face detector)."""
FACE_TO_RADIUS = 4.9
"""Body radius (hips to the scale point), in face box heights."""

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

    detector: str = "mediapipe_crowd"
    """Detector used for images without label boxes (a name in :data:`PERSON_DETECTORS`):
    ``mediapipe_crowd`` (:class:`MediaPipeCrowdDetector`), ``mediapipe_pose`` (:class:`MediaPipePoseDetector`)
    or ``yolox_onnx`` (:class:`YoloxOnnxDetector`, weights you supply in ``detector_model``)."""
    detector_model: str = ""
    """``yolox_onnx``: path of the YOLOX person detector ONNX file (DWPose's ``yolox_l.onnx``); required by it."""
    detector_device: str = "auto"
    """``yolox_onnx``: onnxruntime device, ``auto`` (CUDA when onnxruntime-gpu has it), ``cpu`` or ``cuda``."""
    detector_score: float = 0.3
    """``yolox_onnx``: least person score (objectness x person probability) of a kept detection."""
    tile_fractions: tuple[float, ...] = (1.0, 0.6)
    """Search windows besides the whole image: square tiles whose side is each fraction of the image's
    shorter side (a tile as large as the whole image is skipped). Smaller fractions find smaller people,
    at the cost of more detector calls; ``()`` runs the whole image only."""
    tile_overlap: float = 0.4
    """Overlap of neighbouring tiles, as a fraction of the tile side (0 <= overlap < 1)."""
    head_margin: float = 0.8
    """The box reaches past the head centre (mean of landmarks 0-10), away from the shoulders, by this many
    head sizes (largest distance between landmarks 0-10), to take in the top of the head."""
    box_margin: float = 0.05
    """Margin added to each side of the landmark box, as a fraction of its width/height."""
    max_persons: int = 20
    """Most persons kept per image (largest boxes first); applies to detections and labels."""
    min_box_size: float = 16.0
    """Persons whose box's longer side is shorter than this (px) are dropped; applies to detections and
    labels."""
    # ``mediapipe_crowd`` only
    seed_confidence: float = 0.2
    """``mediapipe_crowd``: least pose detector score in the search over windows (MediaPipe's default is
    0.5; the landmark passes and the suppression remove most of what a low threshold lets in)."""
    landmark_passes: int = 2
    """``mediapipe_crowd``: landmark model runs per candidate: the first on the region the pose detector
    aligned, each next one on the region the previous landmarks give (MediaPipe's tracking rule)."""
    presence_confidence: float = 0.5
    """``mediapipe_crowd``: least person presence score of the landmark model; a candidate below it is
    dropped (MediaPipe's own threshold)."""
    seed_distance: float = 0.3
    """``mediapipe_crowd``: two pose detections (from any windows) are one candidate when their hip centres
    are closer than this fraction of the stronger one's body radius and ..."""
    seed_scale: float = 1.4
    """``mediapipe_crowd``: ... their body radii differ by less than this factor (> 1)."""
    single_window_confidence: float = 0.5
    """``mediapipe_crowd``: least pose detector score of a person found in one window only (people found in
    several windows need ``seed_confidence``); parts of people seen in one tile score low."""
    same_head: float = 1.0
    """``mediapipe_crowd``: two skeletons whose head centres are closer than this many head sizes are one
    person (the one found in more windows, then with the higher detector score, stays). Heads, unlike
    boxes, stay apart when people overlap."""
    part_fraction: float = 0.5
    """``mediapipe_crowd``: a skeleton with at least this fraction of its 33 landmarks on the limbs of a
    larger one (within ``limb_distance``) is a part of that person read as a whole one, and is dropped."""
    limb_distance: float = 0.08
    """``mediapipe_crowd``: distance to a limb, as a fraction of the larger person's box size (square root
    of its area), within which a landmark lies on that limb."""
    face_seeds: bool = True
    """``mediapipe_crowd``: also search with MediaPipe's full-range face detector (whole image and
    ``face_tile_fractions`` tiles), and run the landmark model below each face no skeleton has yet."""
    face_tile_fractions: tuple[float, ...] = (0.5,)
    """``mediapipe_crowd``: tiles of the face search (as ``tile_fractions``), with ``face_seeds``."""
    face_confidence: float = 0.5
    """``mediapipe_crowd``: least face detection score, with ``face_seeds``."""
    # ``mediapipe_pose`` only
    tile_border: float = 0.02
    """``mediapipe_pose``: a person whose box reaches within this fraction of the tile side of a tile edge
    that is not an image edge is dropped from that tile (it is cut by the tile; a larger window sees it
    whole)."""
    poses_per_window: int = 5
    """``mediapipe_pose``: most persons the detector returns per window."""
    search_confidence: float = 0.3
    """``mediapipe_pose``: detection and presence threshold of the search over windows (MediaPipe's defaults
    are 0.5)."""
    verify: bool = True
    """``mediapipe_pose``: re-run the landmark model on a crop around each candidate and keep it only if it
    finds the same person there (box IoU >= ``verify_iou``); the box is then taken from that re-run.
    Removes most false candidates (parts of one person seen as a whole person in a tile)."""
    verify_confidence: float = 0.5
    """``mediapipe_pose``: detection and presence threshold of the verification run."""
    verify_scales: tuple[float, ...] = (1.25, 1.6)
    """``mediapipe_pose``: verification crop sides as multiples of the candidate box's longer side, tried in
    order until one confirms the candidate (the pose detector's decision flips with small crop changes)."""
    verify_iou: float = 0.5
    """``mediapipe_pose``: least IoU between a candidate box and its verified box."""
    nms_iou: float = 0.5
    """``mediapipe_pose``: two detections with a higher IoU are one person (the higher score wins)."""

    def __post_init__(self) -> None:
        self.tile_fractions = tuple(float(f) for f in self.tile_fractions)
        self.face_tile_fractions = tuple(float(f) for f in self.face_tile_fractions)
        self.verify_scales = tuple(float(s) for s in self.verify_scales)
        checks = {
            "tile_fractions": all(0 < f <= 1 for f in self.tile_fractions),
            "face_tile_fractions": all(0 < f <= 1 for f in self.face_tile_fractions),
            "landmark_passes": self.landmark_passes >= 1,
            "presence_confidence": 0 <= self.presence_confidence <= 1,
            "seed_distance": self.seed_distance > 0,
            "seed_scale": self.seed_scale > 1,
            "single_window_confidence": 0 <= self.single_window_confidence <= 1,
            "same_head": self.same_head >= 0,
            "part_fraction": 0 < self.part_fraction <= 1,
            "limb_distance": self.limb_distance >= 0,
            "face_confidence": 0 <= self.face_confidence <= 1,
            "tile_overlap": 0 <= self.tile_overlap < 1,
            "tile_border": 0 <= self.tile_border < 0.5,
            "poses_per_window": self.poses_per_window >= 1,
            "search_confidence": 0 <= self.search_confidence <= 1,
            "seed_confidence": 0 <= self.seed_confidence <= 1,
            "verify_confidence": 0 <= self.verify_confidence <= 1,
            "verify_scales": len(self.verify_scales) > 0 and all(s > 0 for s in self.verify_scales),
            "verify_iou": 0 <= self.verify_iou <= 1,
            "head_margin": self.head_margin >= 0,
            "box_margin": self.box_margin >= 0,
            "nms_iou": 0 < self.nms_iou <= 1,
            "max_persons": self.max_persons >= 1,
            "min_box_size": self.min_box_size >= 0,
        }
        checks["detector_score"] = 0 <= self.detector_score <= 1
        if self.detector == "yolox_onnx" and not self.detector_model:
            raise ValueError("PersonsConfig: detector 'yolox_onnx' needs detector_model, the path of your YOLOX "
                             "ONNX file (e.g. DWPose's yolox_l.onnx; see docs/reference_backends.md)")
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


def alignment_roi(centre_xy: np.ndarray, scale_xy: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """BlazePose's region of a person from its two alignment points (px): the hip centre ``centre_xy [2]``
    and the point ``scale_xy [2]`` on the circle around the whole body (pose detector keypoints 0 and 1,
    landmarks 33 and 34). The region is a square centred on the hips, of side ``2 * scale`` radii, turned
    so that hips -> scale point is its up direction (MediaPipe's ``AlignmentPointsRectsCalculator`` with
    a 90 degree target and ``RectTransformationCalculator``)."""
    centre = np.asarray(centre_xy, np.float64).reshape(2)
    up = np.asarray(scale_xy, np.float64).reshape(2) - centre
    radius = float(np.hypot(up[0], up[1]))
    return Roi(float(centre[0]), float(centre[1]), 2.0 * scale * max(radius, 1e-3), angle_up_along(up))


def head_centres_sizes(points_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head centres ``[..., 2]`` (mean of landmarks 0-10) and head sizes ``[...]`` (largest distance
    between two of them) of BlazePose skeletons ``points_xy [..., 33, 2]``."""
    head = np.asarray(points_xy, np.float64)[..., HEAD_LANDMARKS, :]
    size = np.linalg.norm(head[..., :, None, :] - head[..., None, :, :], axis=-1).max(axis=(-1, -2))
    return head.mean(axis=-2), size


def distance_to_segments(points_xy: np.ndarray, starts_xy: np.ndarray, ends_xy: np.ndarray) -> np.ndarray:
    """Distance ``[N]`` from each of ``points_xy [N, 2]`` to the nearest of the segments ``starts_xy [S, 2]``
    -> ``ends_xy [S, 2]``."""
    p = np.asarray(points_xy, np.float64)[:, None]  # [N, 1, 2]
    a = np.asarray(starts_xy, np.float64)[None]  # [1, S, 2]
    ab = np.asarray(ends_xy, np.float64)[None] - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=1)


def limb_fraction(points_xy: np.ndarray, other_xy: np.ndarray, distance: float) -> float:
    """Share of the landmarks ``points_xy [33, 2]`` lying within ``distance`` (px) of the limbs
    (:data:`LIMBS`) of another skeleton ``other_xy [33, 2]``."""
    other = np.asarray(other_xy, np.float64)
    starts, ends = other[[i for i, _ in LIMBS]], other[[j for _, j in LIMBS]]
    return float(np.mean(distance_to_segments(points_xy, starts, ends) <= distance))


def suppress_skeletons(points_xy: np.ndarray, boxes: np.ndarray, *, same_head: float, part_fraction: float,
                       limb_distance: float) -> np.ndarray:
    """Indices of the skeletons ``points_xy [N, 33, 2]`` (boxes ``[N, 4]`` xyxy; best first) that are
    distinct persons, in the given order.

    Suppression by skeleton, not by box overlap (boxes of people who stand behind one another overlap):

    1. a skeleton whose head centre lies within ``same_head`` head sizes (the larger of the two) of the
       head of a better skeleton kept before it is that person again;
    2. then a skeleton with at least ``part_fraction`` of its landmarks within ``limb_distance`` times the
       box size (square root of the area) of a kept skeleton with a larger box, on that skeleton's limbs, is
       a part of that person (an arm or the legs read as a small whole person).
    """
    points = np.asarray(points_xy, np.float64).reshape(-1, 33, 2)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centres, sizes = head_centres_sizes(points)
    distinct: list[int] = []
    for i in range(len(points)):
        gaps = [np.linalg.norm(centres[i] - centres[j]) / max(sizes[i], sizes[j], 1e-6) for j in distinct]
        if all(gap >= same_head for gap in gaps):
            distinct.append(i)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.array([i for i in distinct if not any(
        area[j] > area[i] and limb_fraction(points[i], points[j], limb_distance * math.sqrt(area[j])) >= part_fraction
        for j in distinct if j != i)], dtype=np.int64)


def cluster_seeds(centres_xy: np.ndarray, radii: np.ndarray, scores: np.ndarray, windows: np.ndarray, *,
                  distance: float, scale: float) -> list[tuple[int, int]]:
    """Pose detections from several windows grouped into candidates: ``(index of the best detection,
    number of windows that found it)`` per candidate, best score first.

    Detections ``[N]`` (hip centres ``centres_xy [N, 2]`` px, body radii ``radii [N]`` px, ``scores [N]``,
    window ids ``windows [N]``) are taken by decreasing score; one joins the first candidate whose hip
    centre is closer than ``distance`` of that candidate's radius and whose radius differs by less than
    the factor ``scale``, else it starts a new candidate.
    """
    centres = np.asarray(centres_xy, np.float64).reshape(-1, 2)
    radii = np.asarray(radii, np.float64).reshape(-1)
    order = sorted(range(len(centres)), key=lambda i: (-float(scores[i]), i))
    groups: list[tuple[int, set[int]]] = []
    for i in order:
        for best, found_in in groups:
            ratio = radii[i] / max(radii[best], 1e-6)
            if np.linalg.norm(centres[i] - centres[best]) < distance * radii[best] and 1 / scale < ratio < scale:
                found_in.add(int(windows[i]))
                break
        else:
            groups.append((i, {int(windows[i])}))
    return [(best, len(found_in)) for best, found_in in groups]


def face_seed_roi(face_centre_xy: np.ndarray, face_height: float) -> Roi:
    """Upright BlazePose region of the person below a face (centre ``[2]`` px, box height px): hips
    :data:`FACE_TO_HIPS` face heights below the face centre, body radius :data:`FACE_TO_RADIUS` face
    heights (medians measured on skeletons whose face the full-range face detector found)."""
    centre = np.asarray(face_centre_xy, np.float64).reshape(2)
    hips = centre + [0.0, FACE_TO_HIPS * face_height]
    return alignment_roi(hips, hips - [0.0, FACE_TO_RADIUS * face_height])


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


_POSE_DETECTION_GRAPH = """
input_stream: "image"
output_stream: "detections"
node {
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  output_stream: "TENSORS:input_tensors"
  output_stream: "LETTERBOX_PADDING:letterbox_padding"
  options { [mediapipe.ImageToTensorCalculatorOptions.ext] {
    output_tensor_width: 224 output_tensor_height: 224 keep_aspect_ratio: true
    output_tensor_float_range { min: -1.0 max: 1.0 } border_mode: BORDER_ZERO } }
}
node {
  calculator: "SsdAnchorsCalculator"
  output_side_packet: "anchors"
  options { [mediapipe.SsdAnchorsCalculatorOptions.ext] {
    input_size_width: 224 input_size_height: 224 min_scale: 0.1484375 max_scale: 0.75
    anchor_offset_x: 0.5 anchor_offset_y: 0.5 num_layers: 5
    strides: 8 strides: 16 strides: 32 strides: 32 strides: 32 aspect_ratios: 1.0 fixed_anchor_size: true } }
}
node {
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input_tensors"
  output_stream: "TENSORS:detection_tensors"
  options { [mediapipe.InferenceCalculatorOptions.ext] { model_path: "{model}" delegate { xnnpack {} } } }
}
node {
  calculator: "TensorsToDetectionsCalculator"
  input_stream: "TENSORS:detection_tensors"
  input_side_packet: "ANCHORS:anchors"
  output_stream: "DETECTIONS:unfiltered_detections"
  options { [mediapipe.TensorsToDetectionsCalculatorOptions.ext] {
    num_classes: 1 num_boxes: 2254 num_coords: 12 box_coord_offset: 0 keypoint_coord_offset: 4
    num_keypoints: 4 num_values_per_keypoint: 2 x_scale: 224.0 y_scale: 224.0 w_scale: 224.0 h_scale: 224.0
    reverse_output_order: true sigmoid_score: true score_clipping_thresh: 100.0 min_score_thresh: {threshold} } }
}
node {
  calculator: "NonMaxSuppressionCalculator"
  input_stream: "unfiltered_detections"
  output_stream: "filtered_detections"
  options { [mediapipe.NonMaxSuppressionCalculatorOptions.ext] {
    min_suppression_threshold: 0.3 overlap_type: INTERSECTION_OVER_UNION algorithm: WEIGHTED } }
}
node {
  calculator: "DetectionLetterboxRemovalCalculator"
  input_stream: "DETECTIONS:filtered_detections"
  input_stream: "LETTERBOX_PADDING:letterbox_padding"
  output_stream: "DETECTIONS:detections"
}
"""
"""BlazePose's person detector as MediaPipe's ``PoseDetectionCpu`` subgraph runs it (224 px letterboxed
input, SSD anchors, weighted NMS), with the score threshold as a parameter."""

_POSE_LANDMARKS_GRAPH = """
input_stream: "image"
input_stream: "roi"
output_stream: "landmarks"
output_stream: "presence"
node {
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  input_stream: "NORM_RECT:roi"
  output_stream: "TENSORS:input_tensors"
  output_stream: "LETTERBOX_PADDING:letterbox_padding"
  options { [mediapipe.ImageToTensorCalculatorOptions.ext] {
    output_tensor_width: 256 output_tensor_height: 256 keep_aspect_ratio: true
    output_tensor_float_range { min: 0.0 max: 1.0 } } }
}
node {
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input_tensors"
  output_stream: "TENSORS:output_tensors"
  options { [mediapipe.InferenceCalculatorOptions.ext] { model_path: "{model}" delegate { xnnpack {} } } }
}
node {
  calculator: "SplitTensorVectorCalculator"
  input_stream: "output_tensors"
  output_stream: "landmark_tensor"
  output_stream: "presence_tensor"
  output_stream: "heatmap_tensor"
  options { [mediapipe.SplitVectorCalculatorOptions.ext] {
    ranges { begin: 0 end: 1 } ranges { begin: 1 end: 2 } ranges { begin: 3 end: 4 } } }
}
node { calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:presence_tensor" output_stream: "FLOAT:presence" }
node {
  calculator: "TensorsToLandmarksCalculator"
  input_stream: "TENSORS:landmark_tensor"
  output_stream: "NORM_LANDMARKS:raw_landmarks"
  options { [mediapipe.TensorsToLandmarksCalculatorOptions.ext] {
    num_landmarks: 39 input_image_width: 256 input_image_height: 256
    visibility_activation: SIGMOID presence_activation: SIGMOID } }
}
node {
  calculator: "RefineLandmarksFromHeatmapCalculator"
  input_stream: "NORM_LANDMARKS:raw_landmarks"
  input_stream: "TENSORS:heatmap_tensor"
  output_stream: "NORM_LANDMARKS:refined_landmarks"
}
node {
  calculator: "LandmarkLetterboxRemovalCalculator"
  input_stream: "LANDMARKS:refined_landmarks"
  input_stream: "LETTERBOX_PADDING:letterbox_padding"
  output_stream: "LANDMARKS:roi_landmarks"
}
node {
  calculator: "LandmarkProjectionCalculator"
  input_stream: "NORM_LANDMARKS:roi_landmarks"
  input_stream: "NORM_RECT:roi"
  output_stream: "NORM_LANDMARKS:landmarks"
}
"""
"""BlazePose's full landmark model on a given region, as MediaPipe's ``PoseLandmarkByRoiCpu`` subgraph runs
it (rotated 256 px crop, heatmap refinement, landmarks projected back to the image), but without its
presence gate: the presence score is an output."""


_OPTION_PROTOS = (
    "mediapipe.calculators.core.split_vector_calculator_pb2",
    "mediapipe.calculators.tensor.image_to_tensor_calculator_pb2",
    "mediapipe.calculators.tensor.inference_calculator_pb2",
    "mediapipe.calculators.tensor.tensors_to_detections_calculator_pb2",
    "mediapipe.calculators.tensor.tensors_to_landmarks_calculator_pb2",
    "mediapipe.calculators.tflite.ssd_anchors_calculator_pb2",
    "mediapipe.calculators.util.non_max_suppression_calculator_pb2",
)
"""Modules defining the calculator options the two graphs set."""


class _Graph:
    """A MediaPipe calculator graph from text, fed one timestamp per call; outputs are the last packets."""

    def __init__(self, text: str, outputs: tuple[str, ...]) -> None:
        for module in _OPTION_PROTOS:  # the options' protobuf extensions, registered before the text is parsed
            importlib.import_module(module)
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.python._framework_bindings import calculator_graph

        config = text_format.Parse(text, calculator_pb2.CalculatorGraphConfig())
        self._graph = calculator_graph.CalculatorGraph(graph_config=config)
        self._outputs: dict[str, Any] = {}
        for name in outputs:
            self._graph.observe_output_stream(name, lambda stream, packet: self._outputs.__setitem__(stream, packet))
        self._graph.start_run()
        self._timestamp = 0

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Packets by input stream name in, the packets each output stream produced out (missing: none)."""
        self._outputs.clear()
        self._timestamp += 1
        for name, packet in inputs.items():
            self._graph.add_packet_to_input_stream(name, packet.at(self._timestamp))
        self._graph.wait_until_idle()
        return dict(self._outputs)

    def __del__(self) -> None:
        graph = getattr(self, "_graph", None)
        if graph is not None:
            try:
                graph.close()  # close the input streams, finish the run
            except Exception:  # noqa: BLE001, S110 - nothing to do about it while being collected
                pass


def _wheel_model(relpath: str) -> str:
    import mediapipe

    path = os.path.join(os.path.dirname(mediapipe.__file__), "modules", relpath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the mediapipe wheel; reinstall mediapipe==0.10.21")
    return path


class BlazePoseGraphs:
    """The wheel's BlazePose detector and full landmark model, each in a small MediaPipe graph: detection
    on any window, landmarks on any rotated region of an image. Nothing is downloaded or written."""

    def __init__(self, detection_confidence: float) -> None:
        detection = _POSE_DETECTION_GRAPH.replace("{model}", _wheel_model(POSE_DETECTOR_TFLITE))
        self._detect = _Graph(detection.replace("{threshold}", repr(float(detection_confidence))), ("detections",))
        landmarks = _POSE_LANDMARKS_GRAPH.replace("{model}", _wheel_model(POSE_LANDMARKS_TFLITE))
        self._landmarks = _Graph(landmarks, ("landmarks", "presence"))

    @staticmethod
    def image_packet(image: np.ndarray) -> Any:
        """``image [H, W, 3]`` uint8 RGB as a MediaPipe packet (made once per image, fed to many calls)."""
        import mediapipe
        from mediapipe.python import packet_creator

        return packet_creator.create_image_frame(image_format=mediapipe.ImageFormat.SRGB,
                                                 data=np.ascontiguousarray(image))

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pose detections in ``image [H, W, 3]``: alignment keypoints ``[N, 2, 2]`` px (hip centre, point on
        the body's circle) and scores ``[N]``."""
        from mediapipe.python import packet_getter

        h, w = image.shape[:2]
        out = self._detect(image=self.image_packet(image))
        keypoints, scores = [], []
        for detection in packet_getter.get_proto_list(out["detections"]) if "detections" in out else []:
            points = detection.location_data.relative_keypoints
            keypoints.append([[points[k].x * w, points[k].y * h] for k in (0, 1)])
            scores.append(detection.score[0] if detection.score else 0.0)
        return np.asarray(keypoints, np.float64).reshape(-1, 2, 2), np.asarray(scores, np.float64)

    def landmarks(self, image_packet: Any, width: int, height: int, roi: Roi) -> tuple[np.ndarray, float]:
        """Landmarks of the person in region ``roi`` of an image (its packet and size): ``[39, 3]`` (x, y px,
        visibility; 0-32 the body, 33-34 the alignment points) and the person presence score."""
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python import packet_creator, packet_getter

        rect = rect_pb2.NormalizedRect(x_center=roi.cx / width, y_center=roi.cy / height, width=roi.size / width,
                                       height=roi.size / height, rotation=roi.angle)
        out = self._landmarks(image=image_packet, roi=packet_creator.create_proto(rect))
        points = packet_getter.get_proto(out["landmarks"]).landmark
        landmarks = np.array([[p.x * width, p.y * height, p.visibility] for p in points], np.float64)
        return landmarks, float(packet_getter.get_float(out["presence"]))


@PERSON_DETECTORS.register("mediapipe_crowd")
class MediaPipeCrowdDetector:
    """Multi-person detector for crowds from MediaPipe's BlazePose models (weights inside the wheel).

    1. **Search**: the pose detector alone (no landmarks) runs on the whole image and on overlapping
       square tiles (``tile_fractions``, ``tile_overlap``), scores >= ``seed_confidence``. Each detection
       is a hip centre and a body radius; detections of one person from several windows are grouped
       (:func:`cluster_seeds`: ``seed_distance``, ``seed_scale``); a group found in one window only needs
       a score >= ``single_window_confidence``.
    2. **Landmarks**: per group, the landmark model runs on the region its best detection aligns
       (:func:`alignment_roi`), then ``landmark_passes - 1`` times on the region its own landmarks give;
       a group is dropped when a pass scores presence < ``presence_confidence``.
    3. **Faces** (``face_seeds``): MediaPipe's full-range face detector runs on the whole image and on
       ``face_tile_fractions`` tiles; below each face no skeleton's head is near, the landmark model runs
       on an upright region (:func:`face_seed_roi`) and keeps a skeleton whose head lands on that face.
    4. **Suppression by skeleton** (:func:`suppress_skeletons`), best first (found in more windows, then
       higher detector score): one person per head (``same_head``), and no skeleton lying on the limbs of
       a larger one (``part_fraction``, ``limb_distance``).

    Boxes come from the landmarks (:func:`landmarks_to_box`); the score of a box is the mean visibility of
    its 33 landmarks. Cost: one detector call per window (about 8 ms) and ``landmark_passes`` landmark
    calls per group (about 15 ms each), plus about 3.5 ms per face window.
    """

    def __init__(self, config: PersonsConfig) -> None:
        self.config = config
        self.graphs = BlazePoseGraphs(config.seed_confidence)
        self._faces: Any = None
        if config.face_seeds:
            import mediapipe

            self._faces = mediapipe.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=config.face_confidence)

    def _box(self, points: np.ndarray, width: int, height: int) -> np.ndarray:
        box = landmarks_to_box(points[:33, :2], head_margin=self.config.head_margin, box_margin=self.config.box_margin)
        return clip_box(box, width, height)

    def seeds(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Search pass: alignment keypoints ``[N, 2, 2]`` px, scores ``[N]`` and window ids ``[N]`` of every
        pose detection in every window (0: the whole image)."""
        cfg = self.config
        h, w = image.shape[:2]
        windows = [(0, 0, max(w, h))] + tile_windows(w, h, cfg.tile_fractions, cfg.tile_overlap)
        keypoints, scores, ids = [], [], []
        for k, (x0, y0, side) in enumerate(windows):
            found, found_scores = self.graphs.detect(image[y0:y0 + side, x0:x0 + side])
            keypoints.append(found + [x0, y0])
            scores.append(found_scores)
            ids.append(np.full(len(found), k))
        return np.concatenate(keypoints), np.concatenate(scores), np.concatenate(ids)

    def skeleton(self, packet: Any, width: int, height: int, roi: Roi) -> tuple[np.ndarray, float] | None:
        """Landmark passes from ``roi``: ``(landmarks [39, 3], presence)`` of the last pass, or None when a
        pass falls below ``presence_confidence``."""
        found = None
        for _ in range(self.config.landmark_passes):
            landmarks, presence = self.graphs.landmarks(packet, width, height, roi)
            if presence < self.config.presence_confidence:
                return None
            found = (landmarks, presence)
            roi = alignment_roi(*landmarks[list(ALIGNMENT_LANDMARKS), :2])
        return found

    def faces(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """``(face centre [2] px, face box height px)`` of the faces in the whole image and the face tiles,
        one per face (the best-scoring of those closer than half a face height)."""
        h, w = image.shape[:2]
        windows = [(0, 0, max(w, h))] + tile_windows(w, h, self.config.face_tile_fractions, self.config.tile_overlap)
        found = []
        for x0, y0, side in windows:
            crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
            ch, cw = crop.shape[:2]
            for detection in self._faces.process(crop).detections or []:
                box = detection.location_data.relative_bounding_box
                centre = np.array([(box.xmin + box.width / 2) * cw + x0, (box.ymin + box.height / 2) * ch + y0])
                found.append((float(detection.score[0]), centre, float(box.height * ch)))
        kept: list[tuple[np.ndarray, float]] = []
        for _, centre, size in sorted(found, key=lambda f: -f[0]):
            if all(np.linalg.norm(centre - c) > 0.5 * max(size, s) for c, s in kept):
                kept.append((centre, size))
        return kept

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        h, w = image.shape[:2]
        keypoints, scores, windows = self.seeds(image)
        radii = np.linalg.norm(keypoints[:, 1] - keypoints[:, 0], axis=-1)
        groups = cluster_seeds(keypoints[:, 0], radii, scores, windows, distance=cfg.seed_distance,
                               scale=cfg.seed_scale)
        packet = self.graphs.image_packet(image)
        found: list[tuple[np.ndarray, int, float]] = []  # (landmarks [39, 3], windows, detector score)
        for best, support in groups:
            if support == 1 and scores[best] < cfg.single_window_confidence:
                continue
            result = self.skeleton(packet, w, h, alignment_roi(*keypoints[best]))
            if result is not None:
                found.append((result[0], support, float(scores[best])))
        if self._faces is not None:
            heads = [head_centres_sizes(landmarks[:33, :2]) for landmarks, _, _ in found]
            for centre, size in self.faces(image):
                if any(np.linalg.norm(centre - c) < s for c, s in heads):
                    continue
                result = self.skeleton(packet, w, h, face_seed_roi(centre, size))
                if result is not None and np.linalg.norm(head_centres_sizes(result[0][:33, :2])[0] - centre) < size:
                    found.append((result[0], 1, 0.0))
        found.sort(key=lambda f: (-f[1], -f[2]))
        points = np.array([f[0][:33, :2] for f in found]).reshape(-1, 33, 2)
        boxes = np.array([self._box(f[0], w, h) for f in found]).reshape(-1, 4)
        keep = suppress_skeletons(points, boxes, same_head=cfg.same_head, part_fraction=cfg.part_fraction,
                                  limb_distance=cfg.limb_distance)
        visibility = np.array([np.mean(f[0][:33, 2]) for f in found]).reshape(-1)
        return boxes[keep].astype(np.float32), visibility[keep].astype(np.float32)


@PERSON_DETECTORS.register("yolox_onnx")
class YoloxOnnxDetector:
    """YOLOX person boxes from the ONNX file you supply (``detector_model``; :mod:`annotators.yolox`): the
    detector DWPose and RTMW crop their persons with, so the accurate keypoint path
    (``keypoints/wholebody-onnx``) gets the boxes its pose model was trained on. Scores are YOLOX's person
    scores (>= ``detector_score``); boxes are clipped to the image."""

    def __init__(self, config: PersonsConfig) -> None:
        from annotators.yolox import YoloxPersonDetector

        self.net = YoloxPersonDetector(config.detector_model, config.detector_device,
                                       score_threshold=config.detector_score)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        boxes, scores = self.net(image)
        boxes = np.stack([clip_box(b, w, h) for b in boxes]).reshape(-1, 4) if len(boxes) else boxes.reshape(0, 4)
        return boxes.astype(np.float32), scores.astype(np.float32)


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
    resources = StageResources(num_cpus=0.25)
    default_backend = True
    version = f"{metadata.version('mediapipe')}+pose_full.crowd1"
    """MediaPipe's version, the landmark model and this stage's detection algorithm (bump on changes)."""
    required = ("sample_key",)
    weight_options = ("detector_model",)

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


@dataclass
class YoloxPersonsConfig(PersonsConfig):
    """Options of the ``persons/yolox-onnx`` stage: :class:`PersonsConfig` with ``detector: yolox_onnx``
    (``detector_model`` required)."""

    detector: str = "yolox_onnx"
    """Detector used for images without label boxes (see :class:`PersonsConfig`)."""


@STAGES.register("persons/yolox-onnx")
class YoloxPersonsStage(PersonsStage):
    """The persons stage with the YOLOX detector you supply (``detector_model``): the accurate path, with
    ``keypoints/wholebody-onnx``. Labels still come first."""

    config_class = YoloxPersonsConfig
    default_backend = False
    version = "yolox-onnx1"


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

