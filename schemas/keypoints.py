"""Keypoint layouts of the record: COCO-WholeBody-133 (``kp2d_wholebody``), MediaPipe's landmark layouts
(``mp_pose_landmarks``, ``mp_face_landmarks``, ``mp_hand_landmarks_3d``) and the tables that map one onto the
other, with the left/right flip permutation.

COCO-WholeBody-133 (index ranges are half-open)::

    body        0:17    COCO-17 order (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
    feet       17:23    left big toe, left small toe, left heel, right big toe, right small toe, right heel
    face       23:91    68 points in the 300-W / iBUG order (jaw 0-16, brows 17-26, nose 27-35,
                        eyes 36-47, mouth 48-67)
    left hand  91:112   wrist, then thumb, index, middle, ring, pinky (4 each, base to tip)
    right hand 112:133  same order

"left"/"right" are always the person's sides. Everything here is plain tables and numpy (this package
imports nothing of the project). The tables are documented in ``docs/keypoints.md``.
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 133
BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
HANDS = (LEFT_HAND, RIGHT_HAND)
"""Hand slices indexed like the ``[2, ...]`` hand fields: ``[0]`` left, ``[1]`` right."""
PARTS: dict[str, slice] = {"body": BODY, "feet": FEET, "face": FACE, "left_hand": LEFT_HAND, "right_hand": RIGHT_HAND}
"""The five parts of the layout, in index order."""
SCORED_PARTS: dict[str, slice] = {"body": slice(BODY.start, FEET.stop), "face": FACE, "left_hand": LEFT_HAND,
                                  "right_hand": RIGHT_HAND}
"""The parts that refinement and quality score separately: the body includes the feet."""

_BODY_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
_FEET_NAMES = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def _hand_names(side: str) -> tuple[str, ...]:
    return (f"{side}_hand_root",) + tuple(f"{side}_{f}{k}" for f in _FINGERS for k in range(1, 5))


KEYPOINT_NAMES: tuple[str, ...] = (
    _BODY_NAMES + _FEET_NAMES + tuple(f"face-{i}" for i in range(68)) + _hand_names("left") + _hand_names("right")
)
"""The 133 names, as mmpose's ``coco_wholebody`` dataset spells them."""

# --------------------------------------------------------------------------------------------------
# Skeleton (for drawing and for limb-length checks) and left/right flip pairs
# --------------------------------------------------------------------------------------------------


def _chain(ids: list[int], closed: bool = False) -> list[tuple[int, int]]:
    links = list(zip(ids[:-1], ids[1:]))
    return links + [(ids[-1], ids[0])] if closed else links


def _face_links() -> list[tuple[int, int]]:
    f = FACE.start
    groups = [(range(0, 17), False), (range(17, 22), False), (range(22, 27), False), (range(27, 31), False),
              (range(31, 36), False), (range(36, 42), True), (range(42, 48), True), (range(48, 60), True),
              (range(60, 68), True)]  # fmt: skip
    return [link for ids, closed in groups for link in _chain([f + i for i in ids], closed)]


def _hand_links(start: int) -> list[tuple[int, int]]:
    return [link for finger in range(5) for link in _chain([start] + [start + 1 + 4 * finger + k for k in range(4)])]


SKELETON: tuple[tuple[int, int], ...] = tuple(
    [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
     (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
     (15, 17), (15, 18), (15, 19), (16, 20), (16, 21), (16, 22),
     (9, LEFT_HAND.start), (10, RIGHT_HAND.start)]
    + _face_links() + _hand_links(LEFT_HAND.start) + _hand_links(RIGHT_HAND.start)
)  # fmt: skip
"""Keypoint index pairs to connect: body, feet, wrists to hand roots, face contours, fingers."""

_FACE68_FLIP = (
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)  # fmt: skip


def _flip_index() -> np.ndarray:
    idx = np.arange(NUM_KEYPOINTS)
    for i, name in enumerate(KEYPOINT_NAMES):
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(a):
                idx[i] = KEYPOINT_NAMES.index(b + name[len(a) :])
    idx[FACE] = FACE.start + np.array(_FACE68_FLIP)
    return idx


FLIP_INDEX: np.ndarray = _flip_index()
"""``[133]`` permutation: keypoint ``i`` of a mirrored image is keypoint ``FLIP_INDEX[i]`` of the original."""
FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple((i, int(j)) for i, j in enumerate(FLIP_INDEX) if i < j)
"""Left/right pairs ``(i, j)``, ``i < j``, swapped by a horizontal flip."""


def flip_keypoints(kp: np.ndarray, image_width: float) -> np.ndarray:
    """Keypoints of the horizontally mirrored image: ``kp  # [..., 133, C]`` (x px, y px, ...).

    Pixel coordinates are continuous (the image spans ``[0, image_width]``), so ``x -> image_width - x``;
    left/right keypoints swap through :data:`FLIP_INDEX`.
    """
    kp = np.asarray(kp)
    if kp.shape[-2] != NUM_KEYPOINTS or kp.shape[-1] < 2:
        raise ValueError(f"kp must have shape [..., {NUM_KEYPOINTS}, >=2], got {kp.shape}")
    out = kp[..., FLIP_INDEX, :].copy()
    out[..., 0] = image_width - out[..., 0]
    return out


# --------------------------------------------------------------------------------------------------
# MediaPipe layouts and MediaPipe -> COCO-WholeBody mapping tables: (wholebody index, MediaPipe index)
# --------------------------------------------------------------------------------------------------

NUM_POSE_LANDMARKS = 33
"""BlazePose landmarks (``mp_pose_landmarks [33, 4]``: x px, y px, z, visibility)."""
NUM_FACE_LANDMARKS = 478
"""MediaPipe face-mesh landmarks with irises (``mp_face_landmarks [478, 3]``: 468 mesh + 10 iris)."""
NUM_HAND_LANDMARKS = 21
"""MediaPipe hand landmarks per hand (``mp_hand_landmarks_3d [2, 21, 3]``)."""

POSE_EYES = (2, 5)
"""BlazePose left and right eye centres."""
POSE_MOUTH = (9, 10)
"""BlazePose mouth corners (left, right)."""
POSE_FACE_POINTS = (0, 2, 5, 9, 10)
"""BlazePose nose, eyes and mouth corners: the points whose visibility says how much of the face is seen."""
POSE_ELBOWS = (13, 14)
"""BlazePose elbows ([0] left, [1] right)."""
POSE_WRISTS = (15, 16)
"""BlazePose wrists ([0] left, [1] right)."""
POSE_KNUCKLES = ((17, 19), (18, 20))
"""BlazePose pinky and index knuckles of each hand ([0] left, [1] right)."""
POSE_HAND_POINTS = ((15, 19, 17), (16, 20, 18))
"""BlazePose wrist, index and pinky points of each hand ([0] left, [1] right): what a pose-only hand is
placed from (they stand for the hand landmarks 0, 5 and 17: wrist, index and pinky knuckles)."""

POSE_TO_WHOLEBODY: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 2), (2, 5), (3, 7), (4, 8), (5, 11), (6, 12), (7, 13), (8, 14), (9, 15), (10, 16),
    (11, 23), (12, 24), (13, 25), (14, 26), (15, 27), (16, 28),
    (17, 31), (19, 29), (20, 32), (22, 30),
)  # fmt: skip
"""MediaPipe Pose (BlazePose 33) -> WholeBody. Body: the eyes are BlazePose's eye centres (2, 5), not
the inner/outer corners. Feet: big toe <- ``foot_index`` (31/32, the tip of the foot: an
approximation), heel <- heel (29/30). The small toes (18, 21) have no BlazePose counterpart and are
filled with the big-toe position at confidence 0."""
POSE_APPROXIMATE: tuple[int, ...] = (17, 20)
"""WholeBody indices filled from a nearby, not identical, BlazePose landmark (big toe <- foot tip)."""
SMALL_TOES: tuple[tuple[int, int], ...] = ((18, 17), (21, 20))
"""``(small toe, big toe)``: the small toes have no MediaPipe counterpart; they get the big toe's
position at confidence 0."""

FACE_MESH_TO_IBUG68: tuple[int, ...] = (
    162, 234, 137, 132, 138, 136, 149, 148, 152, 377, 378, 365, 367, 361, 366, 454, 389,  # jaw 0-16
    70, 105, 52, 65, 107, 336, 295, 282, 334, 300,  # brows 17-26
    168, 197, 5, 4, 240, 97, 2, 326, 460,  # nose bridge 27-30, nostrils 31-35
    33, 160, 158, 133, 153, 163, 362, 385, 387, 263, 390, 380,  # eyes 36-47
    61, 40, 37, 0, 267, 270, 291, 321, 405, 17, 181, 91,  # outer lip 48-59
    61, 41, 13, 271, 291, 403, 14, 179,  # inner lip 60-67
)  # fmt: skip
"""Face mesh vertex (of MediaPipe's 468/478) for each iBUG-68 point, in order. Chosen on real faces
(300-W, WFLW, COCO-WholeBody; ``docs/keypoints.md``) as the left/right-symmetric choice with the lowest
median error; the jaw (0-16) is the weakest part: the mesh has no vertex that follows the visible
face outline as the 68-point annotation does, so these are the nearest fixed vertices."""

HAND_TO_WHOLEBODY: tuple[int, ...] = tuple(range(21))
"""MediaPipe hand landmark ``i`` -> hand keypoint ``HAND_TO_WHOLEBODY[i]`` within a hand's 21 (same order)."""
