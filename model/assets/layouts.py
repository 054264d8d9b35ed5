"""Official body-model layouts: vertex and joint counts, kinematic trees, joint names, and the
files a body-model folder holds (where each lives, where it officially comes from).

Kinematic trees are the parent arrays of the official models (``kintree_table[0]``, root = -1),
as smplx reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMPL_PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21])
_HAND = [0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]  # 15 finger joints, parents relative to a hand
MANO_PARENTS = np.array([-1] + _HAND)
SMPLX_PARENTS = np.array(
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15]
    + [20 if p == 0 else 24 + p for p in _HAND]
    + [21 if p == 0 else 39 + p for p in _HAND]
)
FLAME_PARENTS = np.array([-1, 0, 1, 1, 1])

SMPL_BODY_JOINTS = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
]  # fmt: skip
SMPL_JOINTS = SMPL_BODY_JOINTS + ["left_hand", "right_hand"]
MANO_FINGER_JOINTS = [f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)]
MANO_JOINTS = ["wrist"] + MANO_FINGER_JOINTS
SMPLX_JOINTS = (
    SMPL_BODY_JOINTS
    + ["jaw", "left_eye_smplhf", "right_eye_smplhf"]
    + [f"left_{j}" for j in MANO_FINGER_JOINTS]
    + [f"right_{j}" for j in MANO_FINGER_JOINTS]
)
FLAME_JOINTS = ["global", "neck", "jaw", "left_eye", "right_eye"]


@dataclass(frozen=True)
class ModelLayout:
    """Counts and tree of one official model."""

    name: str
    num_verts: int
    parents: np.ndarray
    num_shape: int  # shape components in the official file (SMPL-X / FLAME: without expressions)
    num_expression: int = 0

    @property
    def num_joints(self) -> int:
        return len(self.parents)


SMPL = ModelLayout("SMPL", 6890, SMPL_PARENTS, num_shape=10)
SMPLX = ModelLayout("SMPL-X", 10475, SMPLX_PARENTS, num_shape=300, num_expression=100)
FLAME = ModelLayout("FLAME", 5023, FLAME_PARENTS, num_shape=300, num_expression=100)
MANO = ModelLayout("MANO", 778, MANO_PARENTS, num_shape=10)

#: Fingertip vertex ids of MANO as smplx uses them (thumb, index, middle, ring, pinky) ...
MANO_TIPS_SMPLX = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "pinky": 671}
#: ... and as most hand regressors (HaMeR, 4D-Humans, FrankMocap) use them.
MANO_TIPS_COMMON = {"thumb": 745, "index": 317, "middle": 444, "ring": 556, "pinky": 673}

#: FLAME vertex ranges of the two eyeballs (the official topology keeps them last).
FLAME_LEFT_EYEBALL = range(3931, 4477)
FLAME_RIGHT_EYEBALL = range(4477, 5023)

#: MediaPipe face-mesh indices of the 105 landmarks in ``mediapipe_landmark_embedding.npz``, in the
#: file's order: brows (left, right), eyes (left, right), nose, mouth.
MEDIAPIPE_EMBEDDING_INDICES = np.array([
    276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53, 55, 63, 65, 66, 70, 105, 107,
    249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466,
    7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
    168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358,
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185, 191,
    267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
])  # fmt: skip

NUM_STATIC_LANDMARKS = 51  # iBUG-68 without the 17 jaw-contour points
NUM_CONTOUR_LANDMARKS = 17
NUM_CONTOUR_ANGLES = 79  # yaw -39..39 degrees, in smplx's look-up order


def contour_angle_deg(index: np.ndarray) -> np.ndarray:
    """Yaw (degrees) of each row of a dynamic-contour table, as smplx indexes it: rows 0..39 hold
    0..39 degrees, rows 40..78 hold -1..-39 degrees (smplx's angle is minus the neck's y rotation)."""
    index = np.asarray(index)
    return np.where(index <= 39, index, 39 - index)
