"""Keypoints stage, embedded MediaPipe backend (``keypoints/mediapipe``): whole-body 2D keypoints per person.

Per person row (``image`` + ``bbox_xyxy``):

1. **Body**: MediaPipe Pose (BlazePose, ``model_complexity=1``, the only pose model inside the wheel) on
   the person crop. MediaPipe's own person detector runs inside the crop and can lock onto a neighbour,
   so with ``isolate="auto"`` the crop is run twice, as is and with everything outside the person's box
   blanked, and the result that agrees best with the box wins (:func:`pose_box_score`).
2. **Face**: MediaPipe's face landmark model (478 landmarks, attention variant) on a rotated square region
   placed from the pose's face points, then re-placed from its own landmarks (``face_passes``), the way
   MediaPipe tracks a face between video frames. No face detector runs, so small faces are found.
3. **Hands**: MediaPipe's hand landmark model on a rotated square region placed from the pose's wrist,
   hand and elbow points, upsampled to the model's 224 px input whatever the hand's size, then
   re-placed from its own landmarks (``hand_passes``). No palm detector runs (it misses small hands).
   Left/right come from the pose (the person's sides), never from MediaPipe's handedness label.
   **Pose-only hands** (``pose_hands``): the hand landmark model is trained on bare hands and finds no
   gloved hand (all the visible hands of ``examples/`` are gloved). When it finds none but BlazePose sees
   the hand's wrist, index and pinky points (mean visibility at least ``min_pose_hand_visibility``, all
   three inside the image), the hand is kept with ``has_hands`` set and ``has_hand_landmarks`` not, and
   confidence ``pose_hand_confidence`` times that visibility; the hands stage then orients MANO from
   those three points (``mp_pose_landmarks``) and leaves the fingers at the mean pose.

Outputs are mapped to the COCO-WholeBody-133 layout (:mod:`annotators.wholebody`) in full-image pixels;
the BlazePose landmarks (33), the raw face mesh (478) and the 3D hand landmarks are kept for the body,
FLAME and MANO fitting stages.
See ``docs/keypoints.md``.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import schemas
from schemas import keypoints as wb
from annotators.base import STAGES, Stage, StageResources, resource
from annotators.batches import Batch
from annotators.images import (
    HAND_ROI_FOREARM_SCALE,
    HAND_ROI_SCALE,
    Roi,
    affine_points,
    angle_up_along,
    angle_x_along,
    check_person_box,
    check_rgb_image,
    crop_person,
    face_roi_from_pose,
    hand_roi_from_pose,
    roi_around,
)

log = logging.getLogger(__name__)

MEDIAPIPE_VERSION = importlib.metadata.version("mediapipe")
FACE_INPUT_SIZE = 192
"""Side of the face landmark model's input in px."""
HAND_INPUT_SIZE = 224
"""Side of the hand landmark model's input in px."""
PIXEL_CONVENTION = "continuous"
"""Pixel coordinates everywhere (outputs, boxes, affines) are continuous, as in the schema's image frame
and :mod:`annotators.images`: the origin is the top-left image corner, pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)``. MediaPipe's normalised outputs
use the same convention (0 and 1 are the image edges)."""


# --------------------------------------------------------------------------------------------------
# MediaPipe's coordinates
# --------------------------------------------------------------------------------------------------


def normalized_to_px(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """MediaPipe's normalised coordinates (``points  # [..., 2]``; 0 and 1 are the image edges) -> px."""
    return points * np.array([width, height], dtype=np.float32)



# --------------------------------------------------------------------------------------------------
# MediaPipe landmark models run on a crop that is their whole region of interest
# --------------------------------------------------------------------------------------------------


class MediaPipeGraph:
    """A MediaPipe calculator graph (text config) run on square crops through MediaPipe's SolutionBase."""

    def __init__(self, config_text: str, side_inputs: dict[str, Any] | None = None, outputs: list[str] | None = None):
        from google.protobuf import text_format
        from mediapipe.calculators.core import split_vector_calculator_pb2  # noqa: F401 - option protos for
        from mediapipe.calculators.tensor import image_to_tensor_calculator_pb2  # noqa: F401 - the text
        from mediapipe.calculators.tensor import inference_calculator_pb2  # noqa: F401 - configs below
        from mediapipe.framework import calculator_pb2
        from mediapipe.python.solution_base import SolutionBase

        config = text_format.Parse(config_text, calculator_pb2.CalculatorGraphConfig())
        self._graph = SolutionBase(graph_config=config, side_inputs=side_inputs, outputs=outputs)

    def __call__(self, inputs: dict[str, Any]) -> Any:
        """Run once; returns MediaPipe's named tuple of outputs (``None`` for streams with no packet)."""
        return self._graph.process(inputs)


def landmarks_array(landmark_list: Any, fields: tuple[str, ...] = ("x", "y", "z")) -> np.ndarray:
    """``[N, len(fields)]`` float32 from a MediaPipe (Normalized)LandmarkList."""
    return np.array([[getattr(lm, f) for f in fields] for lm in landmark_list.landmark], dtype=np.float32)


class FaceLandmarkModel:
    """MediaPipe's attention face landmark model (``FaceLandmarkCpu`` subgraph) on a 192 px face crop.

    The crop is the model's whole region of interest (the caller crops with :class:`Roi`). Returns
    478 landmarks (468 mesh + 10 iris, refined around lips, eyes and irises) normalised to the crop, and
    the face presence score read from the subgraph's internal stream; no output below the subgraph's
    own presence threshold.
    """

    _PRESENCE = "facelandmarkcpu__face_presence_score"

    def __init__(self) -> None:
        from mediapipe.framework.formats import rect_pb2

        node = (
            'node { calculator: "FaceLandmarkCpu" input_stream: "IMAGE:image" input_stream: "ROI:roi" '
            'input_side_packet: "WITH_ATTENTION:with_attention" output_stream: "LANDMARKS:landmarks" }'
        )
        text = 'input_stream: "IMAGE:image"\ninput_stream: "ROI:roi"\noutput_stream: "LANDMARKS:landmarks"\n' + node
        self._graph = MediaPipeGraph(text, {"with_attention": True}, ["landmarks", self._PRESENCE])
        self._whole = rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, width=1.0, height=1.0, rotation=0.0)

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, float] | None:
        """``crop  # [192, 192, 3]`` RGB uint8 -> (``[478, 3]`` x, y, z in crop px, presence) or ``None``."""
        out = self._graph({"image": np.ascontiguousarray(crop), "roi": self._whole})
        if out.landmarks is None:
            return None
        lm = landmarks_array(out.landmarks)
        xy = normalized_to_px(lm[:, :2], FACE_INPUT_SIZE, FACE_INPUT_SIZE)
        return np.concatenate([xy, lm[:, 2:] * FACE_INPUT_SIZE], axis=1), float(getattr(out, self._PRESENCE))


class HandLandmarkModel:
    """MediaPipe's full hand landmark model on a 224 px hand crop, with no presence gate.

    Runs the model file inside the wheel through MediaPipe's inference calculator and decodes its four
    outputs here: 21 landmarks (crop px, z relative), presence score, handedness score and 21 world
    landmarks (metres, in the crop's axes). MediaPipe's own hand graph hides landmarks below a
    presence of 0.5 and reports handedness for mirrored images; this keeps both raw.
    """

    MODEL_PATH = "mediapipe/modules/hand_landmark/hand_landmark_full.tflite"
    _Z_SCALE = 0.4  # MediaPipe's normalize_z for this model (z in crop px = raw / 0.4)

    def __init__(self) -> None:
        outs = ("landmarks", "presence", "mirrored_left", "world")
        size = HAND_INPUT_SIZE
        text = (
            'input_stream: "image"\n'
            + "".join(f'output_stream: "{o}"\n' for o in outs)
            + 'node { calculator: "ImageToTensorCalculator" input_stream: "IMAGE:image" '
            'output_stream: "TENSORS:input_tensor" options { [mediapipe.ImageToTensorCalculatorOptions.ext] { '
            f"output_tensor_width: {size} output_tensor_height: {size} keep_aspect_ratio: true "
            "output_tensor_float_range { min: 0.0 max: 1.0 } } } }\n"
            'node { calculator: "InferenceCalculator" input_stream: "TENSORS:input_tensor" '
            'output_stream: "TENSORS:output_tensors" options { [mediapipe.InferenceCalculatorOptions.ext] { '
            f'model_path: "{self.MODEL_PATH}" delegate {{ xnnpack {{}} }} }} }} }}\n'
            'node { calculator: "SplitTensorVectorCalculator" input_stream: "output_tensors" '
            + "".join(f'output_stream: "{o}_tensor" ' for o in outs)
            + "options { [mediapipe.SplitVectorCalculatorOptions.ext] { "
            + "".join(f"ranges {{ begin: {i} end: {i + 1} }} " for i in range(len(outs)))
            + "} } }\n"
            + "".join(
                f'node {{ calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:{o}_tensor" '
                f'output_stream: "FLOATS:{o}" }}\n'
                for o in outs
            )
        )
        self._graph = MediaPipeGraph(text)

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``crop  # [224, 224, 3]`` RGB uint8 -> (landmarks ``[21, 3]`` crop px, world ``[21, 3]`` m,
        presence, probability of a right hand (the person's right, for an unmirrored crop))."""
        out = self._graph({"image": np.ascontiguousarray(crop)})
        points = np.asarray(out.landmarks, np.float32).reshape(21, 3)
        points[:, 2] /= self._Z_SCALE
        world = np.asarray(out.world, np.float32).reshape(21, 3)
        # The model scores "left" for a mirrored image, which is a right hand in an unmirrored one.
        return points, world, float(out.presence[0]), float(out.mirrored_left[0])


# --------------------------------------------------------------------------------------------------
# Placing the face and hand regions
# --------------------------------------------------------------------------------------------------

_FACE_ROI_SCALE = 1.5  # MediaPipe's face landmarks-to-ROI enlargement
_FACE_EYE_CORNERS = (33, 263)  # mesh: right eye outer corner, left eye outer corner
_HAND_ROI_SCALE, _HAND_ROI_SHIFT = 2.0, -0.1  # MediaPipe's hand landmarks-to-ROI rule
_HAND_PALM_POINTS = (0, 1, 2, 3, 5, 6, 9, 10, 13, 14, 17, 18)  # wrist, thumb base, finger bases
_HAND_MIDDLE_BASE = 9


def face_roi_from_mesh(mesh_xy: np.ndarray) -> Roi:
    """Face region from face mesh landmarks (``mesh_xy  # [>=468, 2]``), as MediaPipe tracks a face."""
    angle = angle_x_along(mesh_xy[_FACE_EYE_CORNERS[1]] - mesh_xy[_FACE_EYE_CORNERS[0]])
    return roi_around(mesh_xy[:468], angle, _FACE_ROI_SCALE)


def hand_roi_from_landmarks(hand_xy: np.ndarray) -> Roi:
    """Hand region from hand landmarks (``hand_xy  # [21, 2]``), as MediaPipe tracks a hand."""
    angle = angle_up_along(hand_xy[_HAND_MIDDLE_BASE] - hand_xy[0])
    return roi_around(hand_xy[list(_HAND_PALM_POINTS)], angle, _HAND_ROI_SCALE, _HAND_ROI_SHIFT)


# --------------------------------------------------------------------------------------------------
# Face and hand landmarks in a region
# --------------------------------------------------------------------------------------------------


@dataclass
class FaceLandmarks:
    """Face mesh of one face in image px."""

    mesh: np.ndarray
    """``[478, 3]`` x px, y px, z (relative depth, px units)."""
    presence: float
    """Face presence score of the landmark model in [0, 1]."""
    roi: Roi
    """Region the last pass ran on."""


@dataclass
class HandLandmarks:
    """One hand in image px and in MediaPipe's metric hand frame."""

    points: np.ndarray
    """``[21, 3]`` x px, y px, z (relative depth, px units)."""
    world: np.ndarray
    """``[21, 3]`` metres, origin near the hand centre, axes aligned with the image (x right, y down)."""
    presence: float
    """Hand presence score of the landmark model in [0, 1]."""
    right_score: float
    """Probability that this is a right hand (the person's right), from the model's handedness output."""
    roi: Roi
    """Region the last pass ran on."""


def face_landmarks_in(model: FaceLandmarkModel, image: np.ndarray, roi: Roi, passes: int) -> FaceLandmarks | None:
    """Face mesh in ``roi`` of ``image  # [H, W, 3]``; each further pass re-places the region from the
    previous pass's landmarks. ``None`` when the first pass finds no face."""
    found: FaceLandmarks | None = None
    for _ in range(passes):
        crop, c2i = roi.warp(image, FACE_INPUT_SIZE)
        res = model(crop)
        if res is None:
            break
        lm, presence = res
        mesh = np.concatenate([affine_points(c2i, lm[:, :2]), lm[:, 2:] * (roi.size / FACE_INPUT_SIZE)], axis=1)
        found = FaceLandmarks(mesh.astype(np.float32), presence, roi)
        roi = face_roi_from_mesh(mesh[:, :2])
    return found


def hand_landmarks_in(model: HandLandmarkModel, image: np.ndarray, roi: Roi, passes: int) -> HandLandmarks:
    """Hand landmarks in ``roi`` of ``image  # [H, W, 3]``; each further pass re-places the region from
    the previous pass's landmarks, and the pass with the highest presence score is kept. The model
    always answers: judge the result by its ``presence``."""
    best: HandLandmarks | None = None
    for _ in range(passes):
        crop, c2i = roi.warp(image, HAND_INPUT_SIZE)
        lm, world, presence, right = model(crop)
        points = np.concatenate([affine_points(c2i, lm[:, :2]), lm[:, 2:] * (roi.size / HAND_INPUT_SIZE)], axis=1)
        world[:, :2] = world[:, :2] @ roi.rotation().T.astype(np.float32)
        hand = HandLandmarks(points.astype(np.float32), world, presence, right, roi)
        if best is None or hand.presence > best.presence:
            best = hand
        roi = hand_roi_from_landmarks(hand.points[:, :2])
    if best is None:
        raise ValueError(f"hand_landmarks_in needs passes >= 1, got {passes}")
    return best


# --------------------------------------------------------------------------------------------------
# Body
# --------------------------------------------------------------------------------------------------


def pose_box_score(pose_xy: np.ndarray, visibility: np.ndarray, box_xyxy: np.ndarray, margin: float = 0.1) -> float:
    """How well a skeleton belongs to a person box: mean over landmarks of visibility times
    "inside the box grown by ``margin`` of its size" (``pose_xy  # [K, 2]``, ``visibility  # [K]``,
    ``box_xyxy  # [4]``). A neighbour's skeleton (half outside the box) or a doubtful one scores low."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    inside = (
        (pose_xy[:, 0] >= x0 - mx) & (pose_xy[:, 0] <= x1 + mx) & (pose_xy[:, 1] >= y0 - my) & (pose_xy[:, 1] <= y1 + my)
    )
    return float(np.mean(visibility * inside))


ISOLATE_MODES: dict[str, tuple[bool, ...]] = {"off": (False,), "on": (True,), "auto": (False, True)}
"""``KeypointsConfig.isolate`` -> the crops the pose model runs on (``True``: outside the box blanked)."""


@dataclass
class PoseLandmarks:
    """BlazePose's 33 landmarks of one person in image px."""

    points: np.ndarray
    """``[33, 3]`` x px, y px, z (relative depth, px units)."""
    visibility: np.ndarray
    """``[33]`` probability that the landmark is visible (not occluded, inside the image)."""
    score: float
    """:func:`pose_box_score` against the person box."""
    isolated: bool
    """Whether the winning crop had the outside of the box blanked."""


def select_skeleton(candidates: list[PoseLandmarks], box_xyxy: np.ndarray) -> PoseLandmarks | None:
    """One skeleton from the runs on different crops of the same person.

    With three or more, the medoid: the skeleton with the smallest median distance (mean over landmarks,
    over the box size) to the others, so a single run that locked onto a neighbour's head or limbs is
    outvoted. With one or two, the best :func:`pose_box_score`. ``None`` when there are none.
    """
    if len(candidates) < 3:
        return max(candidates, key=lambda c: c.score, default=None)
    size = float(max(box_xyxy[2] - box_xyxy[0], box_xyxy[3] - box_xyxy[1]))
    pts = np.stack([c.points[:, :2] for c in candidates])  # [C, 33, 2]
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1).mean(axis=-1) / size  # [C, C]
    np.fill_diagonal(dist, np.nan)
    return candidates[int(np.argmin(np.nanmedian(dist, axis=1)))]


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@dataclass
class KeypointsConfig:
    """Settings of the ``keypoints/mediapipe`` stage."""

    crop_scales: tuple[float, ...] = (1.25, 1.5)
    """Person crop sides to try, as multiples of ``max(box width, box height)``. Pose runs on every
    crop (times the ``isolate`` variants) and :func:`select_skeleton` keeps one skeleton: BlazePose's
    inner detector places its region differently on each crop, and one of them often misfires."""
    pose_crop_size: int = 256
    """Person crop side in px fed to MediaPipe Pose (its landmark model works at 256 px)."""
    isolate: str = "auto"
    """Blank the image outside the person's box before running Pose: "on", "off", or "auto" (both)."""
    min_pose_detection_confidence: float = 0.3
    """MediaPipe Pose's person-detector threshold inside the crop."""
    min_pose_score: float = 0.2
    """Skeletons whose :func:`pose_box_score` is below this are discarded (none left: ``has_kp_body`` False)."""
    face: bool = True
    """Run the face landmark model."""
    face_roi_scale: float = 1.5
    """First face region = ``face_roi_scale`` times the face size expected from the pose's eyes and mouth."""
    face_passes: int = 2
    """Face landmark passes; each later pass re-places the region from the previous landmarks."""
    min_face_visibility: float = 0.5
    """Run the face model only when the pose's nose, eyes and mouth are this visible on average."""
    min_face_presence: float = 0.5
    """Face presence score needed for ``has_face``."""
    hands: bool = True
    """Run the hand landmark model."""
    hand_roi_scale: float = HAND_ROI_SCALE
    """First hand region side, in BlazePose wrist-to-knuckle lengths."""
    hand_roi_forearm_scale: float = HAND_ROI_FOREARM_SCALE
    """Lower bound of the first hand region side, in forearm (elbow-to-wrist) lengths."""
    hand_passes: int = 2
    """Hand landmark passes; each later pass re-places the region from the previous landmarks."""
    min_hand_visibility: float = 0.1
    """Run the hand model only when the pose's wrist is at least this visible."""
    min_hand_presence: float = 0.5
    """Hand presence score needed for ``has_hands``."""
    pose_hands: bool = True
    """Keep a hand the hand landmark model did not find (gloved, blurred) when the pose sees its wrist,
    index and pinky points: ``has_hands`` True, ``has_hand_landmarks`` False (see the module docstring)."""
    min_pose_hand_visibility: float = 0.75
    """Mean BlazePose visibility of the wrist, index and pinky points a pose-only hand needs. BlazePose
    also places hands it does not see (0.66 for Grace Hopper's hand below the frame's jacket, 0.9+ for
    the skier's gloves in ``examples/``)."""
    pose_hand_confidence: float = 0.7
    """``conf_hands`` of a pose-only hand = this times the three points' mean visibility (so at the
    default settings it passes the refinement's hand gate of 0.5)."""
    min_hand_separation: float = 0.5
    """Two hands whose wrists are closer than this fraction of the smaller hand's region are the same
    hand found twice: the side whose pose wrist is farther from it loses it."""

    def __post_init__(self) -> None:
        if self.isolate not in ISOLATE_MODES:
            raise ValueError(f"KeypointsConfig.isolate must be one of {sorted(ISOLATE_MODES)}, got {self.isolate!r}")
        self.crop_scales = tuple(float(v) for v in self.crop_scales)
        if not self.crop_scales or not all(v > 0 for v in self.crop_scales):
            raise ValueError(f"KeypointsConfig.crop_scales must be positive numbers, got {self.crop_scales!r}")
        for name in ("min_pose_hand_visibility", "pose_hand_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"KeypointsConfig.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("face_roi_scale", "hand_roi_scale", "hand_roi_forearm_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"KeypointsConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("pose_crop_size", "face_passes", "hand_passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"KeypointsConfig.{name} must be at least 1, got {getattr(self, name)!r}")


OUTPUT_FIELDS = ("kp2d_wholebody", "mp_pose_landmarks", "mp_face_landmarks", "mp_hand_landmarks_3d", "has_kp_body",
                 "has_face", "has_hands", "has_hand_landmarks", "conf_body", "conf_face", "conf_hands")
"""Record fields the stage writes (rows it did not annotate keep the schema's fill values)."""


@dataclass
class _Models:
    pose: Any
    face: FaceLandmarkModel
    hand: HandLandmarkModel


@STAGES.register("keypoints/mediapipe")
class KeypointsStage(Stage):
    """Whole-body keypoints per person row with MediaPipe (see the module docstring).

    Reads ``image`` (object column of RGB uint8 ``[H, W, 3]``) and ``bbox_xyxy`` (float ``[4]``, image px);
    adds :data:`OUTPUT_FIELDS`. The MediaPipe graphs are built on first use, so the stage pickles (for Ray)
    before it has run; the instance is not thread-safe.
    """

    name = "keypoints"
    version = f"mediapipe@{MEDIAPIPE_VERSION}"
    config_class = KeypointsConfig
    default_backend = True
    """``--stages keypoints`` means this backend (the embedded one)."""
    resources = StageResources()
    """Default actor resources. The MediaPipe graphs keep about one core busy while they run; the CPU share
    stays fractional so that Ray Data's read tasks are not starved on small machines."""
    required = ("image", "bbox_xyxy")
    outputs = OUTPUT_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._time_ms: dict[str, float] = {"pose": 0.0, "face": 0.0, "hands": 0.0}
        self._rows = 0
        self.last_latency_ms: dict[str, float] = {}
        """Milliseconds per part (``pose``, ``face``, ``hands``) of the last annotated person."""

    @resource
    def models(self) -> _Models:
        """The MediaPipe graphs, built once."""
        import mediapipe as mp

        pose = mp.solutions.pose.Pose(
            static_image_mode=True,
            model_complexity=1,  # the only pose model inside the wheel; 0 and 2 download at run time
            enable_segmentation=False,
            min_detection_confidence=self.config.min_pose_detection_confidence,
        )
        return _Models(pose=pose, face=FaceLandmarkModel(), hand=HandLandmarkModel())

    def latency_ms(self) -> dict[str, float]:
        """Mean milliseconds per annotated row, per part (``pose``, ``face``, ``hands``) and ``total``."""
        n = max(self._rows, 1)
        out = {k: v / n for k, v in self._time_ms.items()}
        out["total"] = sum(out.values())
        return out

    def __call__(self, batch: Batch) -> Batch:
        return self.map_rows(batch, self._row, schemas.fill_values(self.outputs))

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        out = self.annotate(row["image"], row["bbox_xyxy"])
        latency = " ".join(f"{k} {v:.1f} ms" for k, v in self.last_latency_ms.items())
        log.debug("keypoints %s: %s", row.get("key", "?"), latency)
        return out

    def annotate(self, image: np.ndarray, box_xyxy: np.ndarray) -> dict[str, Any]:
        """Keypoint columns for one person: ``image  # [H, W, 3]`` RGB uint8, ``box_xyxy  # [4]`` px.

        Raises ``ValueError`` naming the column (``image`` / ``bbox_xyxy``) for unusable input.
        """
        cfg = self.config
        image = check_rgb_image(image, min_side=2)
        box_xyxy = check_person_box(box_xyxy, image_shape=image.shape)
        self.models  # built outside the timed part  # noqa: B018
        out = {k: np.array(v) for k, v in schemas.fill_values(self.outputs).items()}
        t0 = time.perf_counter()
        pose = self.pose(image, box_xyxy)
        t1 = time.perf_counter()
        face = self.face(image, pose) if pose is not None and cfg.face else None
        t2 = time.perf_counter()
        hands = self.hands(image, pose) if pose is not None and cfg.hands else (None, None)
        t3 = time.perf_counter()
        kp = out["kp2d_wholebody"]
        if pose is not None:
            for dst, src in wb.POSE_TO_WHOLEBODY:
                kp[dst] = (*pose.points[src, :2], pose.visibility[src])
            for toe, big_toe in wb.SMALL_TOES:
                kp[toe] = (*kp[big_toe, :2], 0.0)
            out["mp_pose_landmarks"] = np.concatenate([pose.points, pose.visibility[:, None]], axis=1)
            out["has_kp_body"] = np.bool_(True)
            out["conf_body"] = np.float32(kp[wb.BODY, 2].mean())
        if face is not None:
            # The face model's presence score saturates near 1 on anything face-like; the pose's
            # visibility of the face points says how much of the face is actually seen.
            conf = face.presence * float(pose.visibility[list(wb.POSE_FACE_POINTS)].mean())
            kp[wb.FACE] = np.concatenate(
                [face.mesh[list(wb.FACE_MESH_TO_IBUG68), :2], np.full((68, 1), conf, np.float32)], axis=1
            )
            out["mp_face_landmarks"] = face.mesh
            out["has_face"] = np.bool_(True)
            out["conf_face"] = np.float32(conf)
        for side, hand in enumerate(hands):
            if hand is None:
                conf = self.pose_hand(pose, side, image.shape) if pose is not None and cfg.pose_hands else 0.0
                if conf > 0:
                    out["has_hands"][side] = True
                    out["conf_hands"][side] = conf
                continue
            part = wb.HANDS[side]
            kp[part][list(wb.HAND_TO_WHOLEBODY)] = np.concatenate(
                [hand.points[:, :2], np.full((21, 1), hand.presence, np.float32)], axis=1
            )
            out["mp_hand_landmarks_3d"][side] = hand.world
            out["has_hands"][side] = True
            out["has_hand_landmarks"][side] = True
            out["conf_hands"][side] = hand.presence
        self.last_latency_ms = {"pose": 1e3 * (t1 - t0), "face": 1e3 * (t2 - t1), "hands": 1e3 * (t3 - t2)}
        for k, v in self.last_latency_ms.items():
            self._time_ms[k] += v
        self._rows += 1
        return out

    def pose(self, image: np.ndarray, box_xyxy: np.ndarray) -> PoseLandmarks | None:
        """BlazePose on each person crop (``crop_scales`` x :data:`ISOLATE_MODES`), reduced to one
        skeleton by :func:`select_skeleton`; ``None`` when no crop gives a skeleton that fits the box."""
        cfg = self.config
        found: list[PoseLandmarks] = []
        for scale, isolate in itertools.product(cfg.crop_scales, ISOLATE_MODES[cfg.isolate]):
            crop, c2i = crop_person(image, box_xyxy, scale=scale, out_size=cfg.pose_crop_size, isolate=isolate)
            res = self.models.pose.process(np.ascontiguousarray(crop))
            if res.pose_landmarks is None:
                continue
            lm = landmarks_array(res.pose_landmarks, ("x", "y", "z", "visibility"))
            h, w = crop.shape[:2]
            c2i = np.asarray(c2i, np.float64)
            xy = affine_points(c2i, normalized_to_px(lm[:, :2], w, h))
            z = lm[:, 2] * w * float(np.linalg.norm(c2i[:, 0]))
            vis = np.clip(lm[:, 3], 0.0, 1.0)
            points = np.concatenate([xy, z[:, None]], axis=1).astype(np.float32)
            found.append(PoseLandmarks(points, vis, pose_box_score(xy, vis, box_xyxy), isolate))
        return select_skeleton([p for p in found if p.score >= cfg.min_pose_score], box_xyxy)

    def face(self, image: np.ndarray, pose: PoseLandmarks) -> FaceLandmarks | None:
        """Face mesh placed from the pose's face points, or ``None`` (face not visible / not found)."""
        cfg = self.config
        if pose.visibility[list(wb.POSE_FACE_POINTS)].mean() < cfg.min_face_visibility:
            return None
        roi = face_roi_from_pose(pose.points[:, :2], cfg.face_roi_scale)
        face = face_landmarks_in(self.models.face, image, roi, cfg.face_passes)
        if face is None or face.presence < cfg.min_face_presence:
            return None
        return face

    def pose_hand(self, pose: PoseLandmarks, side: int, shape: tuple[int, ...]) -> float:
        """Confidence of a pose-only hand on ``side`` (0 left, 1 right), or 0 when the pose does not see
        its wrist, index and pinky points well enough or places one outside the image."""
        cfg = self.config
        idx = list(wb.POSE_HAND_POINTS[side])
        vis = float(pose.visibility[idx].mean())
        xy = pose.points[idx, :2]
        inside = bool(np.all((xy >= 0) & (xy < np.array([shape[1], shape[0]]))))
        if vis < cfg.min_pose_hand_visibility or not inside:
            return 0.0
        return float(np.float32(cfg.pose_hand_confidence * vis))

    def hands(self, image: np.ndarray, pose: PoseLandmarks) -> tuple[HandLandmarks | None, HandLandmarks | None]:
        """Left and right hands placed from the pose's wrists; ``None`` where not visible / not found."""
        cfg = self.config
        found: list[HandLandmarks | None] = []
        for side in (0, 1):
            hand = None
            if pose.visibility[wb.POSE_WRISTS[side]] >= cfg.min_hand_visibility:
                roi = hand_roi_from_pose(pose.points[:, :2], side, cfg.hand_roi_scale, cfg.hand_roi_forearm_scale)
                hand = hand_landmarks_in(self.models.hand, image, roi, cfg.hand_passes)
                if hand.presence < cfg.min_hand_presence:
                    hand = None
            found.append(hand)
        left, right = found
        if left is not None and right is not None:
            gap = float(np.linalg.norm(left.points[0, :2] - right.points[0, :2]))
            if gap < cfg.min_hand_separation * min(left.roi.size, right.roi.size):
                # One hand found from both wrists: keep it on the side whose pose wrist is nearer.
                d = [float(np.linalg.norm(h.points[0, :2] - pose.points[wb.POSE_WRISTS[s], :2])) for s, h in enumerate(found)]
                return (left, None) if d[0] <= d[1] else (None, right)
        return left, right
