"""Synthetic people with known answers: random EHM parameters from a pose distribution, a texture for
the mesh and a backdrop to render it over. Used by ``pearl corpus synthesize`` (the trainer's known-answer
corpus, :mod:`pipelines.train.corpus`) and by the review's sample run (:mod:`pipelines.review.sample_run`).

Frames: parameters live in the OpenCV camera frame (x right, y down, z forward), as the record's; the
models' rest frame is y up, the person facing +z, x to the person's left (``docs/body_models.md``).

Pose distributions (:class:`PoseDistribution`):

- ``standing``: a person standing with lowered arms, small random joint rotations, yaw within +-0.6 rad
  (the review's sample run);
- ``varied``: every body joint about a standing pose (arms lowered, knees nearly straight) with a normal
  spread of ``spread`` half-ranges, clipped to human joint limits (:data:`JOINT_RANGES`, left side given, the
  right side its mirror image; ``spread`` 1 is close to uniform within the limits), yaw over ``yaw_range``,
  some pitch and roll, fingers from open to fist, random FLAME expression, jaw and eyes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.flip import BODY_POSE_FLIP

# Per-axis limits (rad, axis-angle components in the joint's parent frame) of the SMPL-X body joints 1..21 and
# the neutral (standing) value they vary about: joint name -> ((x lo, x neutral, x hi), (y ...), (z ...)).
# Rest frame: y up, facing +z, x to the person's left. Right-side joints are the mirror images of the left ones.
JOINT_RANGES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "left_hip": ((-1.6, 0.0, 0.4), (-0.4, 0.0, 0.4), (-0.15, 0.05, 0.7)),  # flexion (leg forward: -x), twist, abduction
    "spine1": ((-0.25, 0.0, 0.55), (-0.35, 0.0, 0.35), (-0.25, 0.0, 0.25)),  # bending forward: +x
    "left_knee": ((0.0, 0.1, 2.1), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),  # the shin swings back: +x
    "spine2": ((-0.15, 0.0, 0.35), (-0.3, 0.0, 0.3), (-0.2, 0.0, 0.2)),
    "left_ankle": ((-0.4, 0.0, 0.5), (-0.2, 0.0, 0.2), (-0.2, 0.0, 0.2)),
    "spine3": ((-0.15, 0.0, 0.3), (-0.3, 0.0, 0.3), (-0.2, 0.0, 0.2)),
    "left_foot": ((-0.2, 0.0, 0.2), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "neck": ((-0.3, 0.0, 0.45), (-0.5, 0.0, 0.5), (-0.25, 0.0, 0.25)),
    "left_collar": ((-0.15, 0.0, 0.15), (-0.2, 0.0, 0.2), (-0.1, 0.0, 0.3)),
    "head": ((-0.3, 0.0, 0.4), (-0.6, 0.0, 0.6), (-0.3, 0.0, 0.3)),
    "left_shoulder": ((-0.8, 0.0, 0.8), (-1.4, 0.0, 0.5), (-1.45, -1.15, 1.0)),  # twist, forward (-y), lowered (-z)
    "left_elbow": ((-0.3, 0.0, 0.3), (-2.3, -0.3, 0.0), (0.0, 0.0, 0.0)),  # flexion brings the forearm forward: -y
    "left_wrist": ((-0.7, 0.0, 0.7), (-0.3, 0.0, 0.3), (-0.6, 0.0, 0.6)),
}


def _joint_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lo, neutral, hi  # [21, 3]`` for ``body_pose`` from :data:`JOINT_RANGES` (right side mirrored)."""
    from model.assets.layouts import SMPLX_JOINTS

    table = np.zeros((3, 21, 3))
    names = SMPLX_JOINTS[1:22]
    for j, name in enumerate(names):
        if name in JOINT_RANGES:
            table[:, j] = np.asarray(JOINT_RANGES[name], np.float64).T
    for j, name in enumerate(names):
        if name.startswith("right_"):
            lo, mid, hi = table[:, int(BODY_POSE_FLIP[j])]
            # mirror: (x, y, z) -> (x, -y, -z); a negated axis' range [a, b] becomes [-b, -a]
            sign = np.array([1.0, -1.0, -1.0])
            table[0, j] = np.where(sign > 0, lo, -hi)
            table[1, j] = mid * sign
            table[2, j] = np.where(sign > 0, hi, -lo)
    return table[0], table[1], table[2]


@dataclass(frozen=True)
class PoseDistribution:
    """Where random EHM parameters come from (see the module docstring)."""

    kind: str = "varied"
    """``varied`` (joint ranges) or ``standing`` (arms lowered, small rotations)."""
    yaw_range: float = 1.6
    """Largest yaw (rad) either way about the vertical axis; 0 faces the camera."""
    pitch_range: float = 0.25
    """Largest forward / backward lean (rad) of the whole body."""
    roll_range: float = 0.2
    """Largest sideways lean (rad) of the whole body."""
    spread: float = 0.5
    """Standard deviation of each joint angle about the standing pose, in half-ranges of its limits
    (``varied``; clipped to the limits)."""
    depth: tuple[float, float] = (2.2, 4.5)
    """Range of the person's distance from the camera (m)."""
    shape_std: float = 0.8
    """Standard deviation of the 10 SMPL-X betas."""
    face_std: float = 0.6
    """Standard deviation of the leading 10 FLAME shape and expression coefficients."""

    def __post_init__(self) -> None:
        if self.kind not in ("varied", "standing"):
            raise ValueError(f"PoseDistribution.kind must be 'varied' or 'standing', got {self.kind!r}")
        if not self.spread >= 0.0:
            raise ValueError(f"PoseDistribution.spread must be >= 0, got {self.spread}")
        if not 0 < self.depth[0] <= self.depth[1]:
            raise ValueError(f"PoseDistribution.depth must be a range 0 < near <= far, got {self.depth}")


STANDING = PoseDistribution(kind="standing", yaw_range=0.6, pitch_range=0.0, roll_range=0.0, depth=(2.6, 3.6))
"""The review sample run's people."""


def sample_ehm_params(ehm: Any, count: int, rng: np.random.Generator,
                      distribution: PoseDistribution = PoseDistribution()) -> dict[str, np.ndarray]:
    """Random EHM parameters ``{name: [count, ...]}`` (:meth:`model.ehm.EHM.forward` names, float32) of
    people in front of the camera, in the OpenCV camera frame; ``transl`` puts the pelvis near the optical
    axis at a depth within ``distribution.depth`` (the caller moves them in the image)."""
    from scipy.spatial.transform import Rotation

    specs = ehm.param_specs()
    d = distribution
    if d.kind == "standing":
        body_pose = rng.normal(0, 0.1, (count, 21, 3))
        shoulders = rng.uniform(1.0, 1.3, count)
        body_pose[:, 15, 2] -= shoulders  # left shoulder: arm down
        body_pose[:, 16, 2] += shoulders
    else:
        lo, neutral, hi = _joint_table()
        body_pose = np.clip(neutral + rng.normal(0.0, 1.0, (count, 21, 3)) * (hi - lo) / 2 * d.spread, lo, hi)
    yaw = rng.uniform(-d.yaw_range, d.yaw_range, count)
    pitch = rng.uniform(-d.pitch_range, d.pitch_range, count)
    roll = rng.uniform(-d.roll_range, d.roll_range, count)
    flip = Rotation.from_euler("x", np.pi)  # model y up -> camera y down, the person facing the camera
    orient = (flip * Rotation.from_euler("zxy", np.stack([roll, pitch, yaw], -1))).as_rotvec().astype(np.float32)
    n_shape, n_expr = specs["flame_shape"].shape[-1], specs["flame_expression"].shape[-1]
    flame_shape = np.zeros((count, n_shape), np.float32)
    flame_shape[:, :10] = rng.normal(0, d.face_std, (count, 10))
    expression = np.zeros((count, n_expr), np.float32)
    expression[:, :10] = rng.normal(0, d.face_std, (count, 10))
    jaw = np.zeros((count, 3), np.float32)
    jaw[:, 0] = rng.uniform(0, 0.25, count)
    hands = rng.normal(0, 0.15, (count, 2, 15, 3))
    eyes = np.zeros((count, 6), np.float32)
    if d.kind == "varied":
        # fingers from open to fist: index, middle, pinky and ring joints (MANO joints 0..11) curl about z
        # (the right hand's +z, the left hand's -z, its mirror image); the thumb keeps its small rotations
        curl = rng.uniform(0.0, 1.2, (count, 2, 1))
        hands[:, 0, :12, 2] -= curl[:, 0]
        hands[:, 1, :12, 2] += curl[:, 1]
        eyes = rng.uniform(-0.25, 0.25, (count, 6)).astype(np.float32)
        eyes[:, 3:] = eyes[:, :3]  # both eyes look the same way
    depth = rng.uniform(*d.depth, count)
    transl = np.stack([rng.uniform(-0.15, 0.15, count), rng.uniform(-0.05, 0.15, count), depth], -1)
    return {
        "betas": rng.normal(0, d.shape_std, (count, 10)).astype(np.float32),
        "global_orient": orient,
        "body_pose": body_pose.astype(np.float32),
        "transl": transl.astype(np.float32),
        "mano_hand_pose": hands.astype(np.float32),
        "mano_betas": np.zeros((count, 2, 10), np.float32),
        "hand_scale": np.ones((count, 2), np.float32),
        "flame_shape": flame_shape,
        "flame_expression": expression,
        "flame_jaw_pose": jaw,
        "flame_eye_pose": eyes,
        "head_scale": np.ones((count, 3), np.float32),
    }


# Body parts for the texture: SMPL-X body joint -> part (the dominant skinning joint of each vertex).
_PARTS = {
    "torso": (0, 3, 6, 9, 13, 14), "neck": (12,), "head": (15,), "upper_arms": (16, 17), "forearms": (18, 19),
    "hands": (20, 21), "thighs": (1, 2), "shins": (4, 5), "feet": (7, 8, 10, 11),
}


def texture_regions(ehm: Any) -> dict[str, np.ndarray]:
    """Boolean vertex masks ``[V]`` of the regions :func:`body_texture` colours (from the dominant skinning
    joint of each vertex and the T-pose: the face is the front of the head, the chest band the front of the
    upper torso)."""
    weights = ehm.lbs_weights.detach().cpu().numpy()
    rest = ehm().vertices.detach().cpu().numpy()  # [V, 3] model frame, T-pose
    owner = weights.argmax(1)
    part = {name: np.isin(owner, joints) for name, joints in _PARTS.items()}
    head = part["head"]
    centre = rest[head].mean(0)
    torso_y = rest[part["torso"], 1].mean()
    part["face"] = head & (rest[:, 2] > centre[2] + 0.02) & (rest[:, 1] < centre[1] + 0.07)
    part["chest"] = part["torso"] & (rest[:, 2] > 0.05) & (np.abs(rest[:, 1] - torso_y - 0.1) < 0.06)
    return part


def body_texture(regions: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Per-vertex RGB colours ``[V, 3]`` in [0, 1] of one dressed person (``regions``: :func:`texture_regions`):
    skin (face, neck, hands and, with short sleeves, forearms), hair over the back and top of the head, a
    shirt with a lighter band across the chest front (front and back look different), trousers and shoes,
    each colour drawn at random."""
    skin = np.array([0.87, 0.68, 0.55]) * rng.uniform(0.45, 1.1) + rng.normal(0, 0.03, 3)
    hair = rng.uniform(0.05, 0.5, 3) * rng.uniform(0.3, 1.0)
    shirt, trousers, shoes = rng.uniform(0.1, 0.95, 3), rng.uniform(0.05, 0.8, 3), rng.uniform(0.02, 0.4, 3)
    colours = np.tile(shirt, (len(regions["head"]), 1))
    colours[regions["thighs"] | regions["shins"]] = trousers
    colours[regions["feet"]] = shoes
    colours[regions["hands"] | regions["neck"]] = skin
    if rng.random() < 0.5:  # short sleeves
        colours[regions["forearms"]] = skin
    colours[regions["head"]] = hair
    colours[regions["face"]] = skin
    colours[regions["chest"]] = np.clip(shirt * 0.4 + 0.6, 0, 1)
    return np.clip(colours, 0.0, 1.0).astype(np.float32)


def backdrop(rng: np.random.Generator, height: int, width: int, *, clutter: int = 0) -> np.ndarray:
    """``[height, width, 3]`` float backdrop in [0, 1]: a vertical gradient between two random colours, a
    darker floor, and ``clutter`` random rectangles and discs (objects behind the person)."""
    top, bottom = rng.uniform(0.2, 0.9, 3), rng.uniform(0.1, 0.6, 3)
    t = np.linspace(0, 1, height)[:, None, None]
    image = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).copy()
    image[int(height * rng.uniform(0.7, 0.9)):] *= 0.8
    xx, yy = np.arange(width)[None, :] + 0.5, np.arange(height)[:, None] + 0.5
    for _ in range(clutter):
        colour = rng.uniform(0.0, 1.0, 3)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.03, 0.25) * width, rng.uniform(0.03, 0.25) * height
        if rng.random() < 0.5:
            inside = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
        else:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        image[inside] = colour
    if clutter:
        image += rng.normal(0, 0.02, image.shape)
    return np.clip(image, 0.0, 1.0)
