"""The synthetic body-model kit: licence-free stand-ins for SMPL, SMPL-X, FLAME and MANO in the
official file formats, layouts, vertex and joint counts, with every correspondence file.

``synthesize_kit(out_dir, seed)`` writes the kit; it loads with ``smplx.create(out_dir, model_type=...)``
unchanged and with :mod:`model.assets.loaders`. How it is built (see docs/assets.md):

- FLAME: a head-and-neck surface (3931 vertices: nose, eye sockets, brows, lips, chin, ears) plus two
  546-vertex eyeballs, skinned to global / neck / jaw / eyes; 300 shape + 100 expression components.
- MANO: a right hand (palm open at the wrist, five fingers) in MANO's frame; the left is its mirror.
- SMPL-X: a body (torso, legs, feet, arms: 3896 vertices) + the FLAME head moved onto the neck +
  the two MANO hands moved onto the wrists, so ``SMPL-X__FLAME_vertex_ids.npy`` and
  ``MANO_SMPLX_vertex_ids.pkl`` are exact correspondences at rest.
- SMPL: its own, coarser surface on a skeleton a few mm away from SMPL-X's, with 10 shape components
  that mix SMPL-X's first 10 (read on SMPL's surface) plus a small residual outside their span, so
  SMPL -> SMPL-X transfer is a real fitting problem; ``smpl2smplx_deftrafo_setup.pkl`` maps each SMPL-X
  vertex to its closest SMPL triangle.
- Vertex orders put smplx's extra-joint vertices (nose, eyes, ears, toes, heels, fingertips) and
  MANO's fingertip ids on the matching body parts.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from model.assets import humanoid as hm
from model.assets import layouts
from model.assets.catalog import MARKER_FILE
from model.assets.files import atomic_output, npy_bytes, write_bytes_atomic, write_npz
from model.assets.geometry import Part, closest_points, concat_parts, place_indices
from model.assets.legacy_pickle import ChumpyCh, dump_legacy

KIT_VERSION = 2


@dataclass
class ModelArrays:
    """One body model in plain arrays (official key meanings)."""

    v_template: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    weights: np.ndarray  # [V, J]
    posedirs: np.ndarray  # [V, 3, 9 * (J - 1)]
    shapedirs: np.ndarray  # [V, 3, S] (SMPL-X / FLAME: shape then expression components)
    j_regressor: np.ndarray  # [J, V]
    parents: np.ndarray  # [J]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def joints(self) -> np.ndarray:  # [J, 3] rest joints
        return self.j_regressor @ self.v_template

    def kintree_table(self) -> np.ndarray:
        parents = np.where(self.parents < 0, 4294967295, self.parents)
        return np.stack([parents, np.arange(len(parents))]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# skeletons (body frame), left side; right = mirror
# ----------------------------------------------------------------------------------------------

# heights above the floor and offsets, metres: (x, height, z)
_SMPLX_SKELETON = {
    "pelvis": (0.0, 0.93, 0.0), "left_hip": (0.085, 0.86, 0.0), "spine1": (0.0, 1.04, -0.012),
    "left_knee": (0.10, 0.49, 0.005), "spine2": (0.0, 1.17, -0.005), "left_ankle": (0.11, 0.085, -0.035),
    "spine3": (0.0, 1.23, 0.0), "left_foot": (0.11, 0.026, 0.085), "neck": (0.0, 1.41, -0.015),
    "left_collar": (0.075, 1.37, -0.01), "left_shoulder": (0.185, 1.40, -0.015),
    "left_elbow": (0.445, 1.395, -0.025), "left_wrist": (0.69, 1.39, -0.02),
}  # fmt: skip
_SMPL_SKELETON = {  # 2-8 mm from SMPL-X's joints
    "pelvis": (0.0, 0.9375, 0.0025), "left_hip": (0.0815, 0.865, 0.0), "spine1": (0.0, 1.0475, -0.0135),
    "left_knee": (0.1025, 0.495, 0.0075), "spine2": (0.0, 1.1775, -0.0035), "left_ankle": (0.1125, 0.0825, -0.0325),
    "spine3": (0.0, 1.2375, 0.005), "left_foot": (0.1125, 0.026, 0.0875), "neck": (0.0, 1.415, -0.0175),
    "left_collar": (0.0775, 1.375, -0.0075), "left_shoulder": (0.18, 1.3975, -0.0125),
    "left_elbow": (0.4375, 1.3925, -0.0225), "left_wrist": (0.6825, 1.3875, -0.0175),
}  # fmt: skip


def _skeleton(table: dict, size: np.ndarray) -> dict[str, np.ndarray]:
    """Joint positions (body frame, both sides) scaled by ``size`` (width, height)."""
    scale = np.array([size[0], size[1], 1.0])
    joints = {}
    for name, (x, h, z) in table.items():
        p = np.array([x, h, z]) * scale
        if name == "left_foot":  # the foot joint stays in the foot, whose sole is on the floor
            p[1] = h
        joints[name] = p + np.array([0.0, hm.FLOOR_Y, 0.0])
        if name.startswith("left_"):
            joints[hm.swap_side(name)] = joints[name] * np.array([-1.0, 1.0, 1.0])
    return joints


# ----------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------


def _body_pieces(j, counts, widths, girth, reach, model_joints) -> list[Part]:
    """Torso, then left leg, foot, arm, then their mirror images, in ``model_joints``."""
    def mapped(part, cols):
        return hm.to_model_joints(part, cols, {}, model_joints)

    torso = mapped(hm.build_torso(j, counts["torso"], widths), hm.TORSO_COLUMNS)
    left = [
        mapped(hm.build_leg(j, counts["leg"], girth), hm.LEG_COLUMNS),
        mapped(hm.build_foot(j, counts["foot"]), hm.FOOT_COLUMNS),
        mapped(hm.build_arm(j, counts["arm"], girth, reach), hm.ARM_COLUMNS),
    ]
    return [torso] + left + [hm.mirror(p, model_joints) for p in left]


def _prefixed(part: Part, prefix: str) -> Part:
    """Tags other than joint rings get ``prefix`` (to keep two hands' tags apart)."""
    tags = {(k if k.startswith("joint:") else prefix + k): v for k, v in part.tags.items()}
    return Part(part.verts, part.faces, part.radial, part.weights, tags)


def _translated(part: Part, offset: np.ndarray) -> Part:
    return Part(part.verts + offset, part.faces, part.radial, part.weights, part.tags)


def _hand_names(side: str) -> dict[str, str]:
    return {n: f"{side}_{n}" for n in layouts.MANO_JOINTS}


def _ring_centre(part: Part, tag: str) -> np.ndarray:
    return part.verts[part.tags[tag]].mean(0)


# ----------------------------------------------------------------------------------------------
# blend shapes
# ----------------------------------------------------------------------------------------------


def pose_correctives(verts: np.ndarray, weights: np.ndarray, joints: np.ndarray, parents: np.ndarray, gain: float = 0.25) -> np.ndarray:
    """Pose blend shapes [V, 3, 9 * (J - 1)] in the official layout. In the blend zone between a
    joint and its parent a vertex follows that joint's own rotation a little further:
    offset = gain * 4 w_j w_parent(j) * (R_j - I)(v - J_j), zero at rest and away from the joint."""
    num_v, num_j = weights.shape
    k = gain * 4.0 * weights[:, 1:] * weights[:, parents[1:]]  # [V, J-1]
    d = verts[:, None, :] - joints[None, 1:, :]  # [V, J-1, 3]
    out = np.zeros((num_v, 3, num_j - 1, 3, 3))
    for c in range(3):  # offset_c = sum_b (R - I)[c, b] * k * d_b
        out[:, c, :, c, :] = k[:, :, None] * d
    return out.reshape(num_v, 3, (num_j - 1) * 9)


def smooth_random_fields(points: np.ndarray, count: int, sigma: float, rng: np.random.Generator, centers: int = 48) -> np.ndarray:
    """``count`` smooth displacement fields [V, 3, count], each with a largest offset of 1."""
    if count == 0:
        return np.zeros((len(points), 3, 0))
    c = points[rng.choice(len(points), size=min(centers, len(points)), replace=False)]
    phi = np.exp(-(((points[:, None, :] - c[None]) ** 2).sum(-1)) / sigma**2)  # [V, K]
    fields = (phi @ rng.standard_normal((len(c), 3 * count))).reshape(len(points), 3, count)
    return fields / np.maximum(np.abs(fields).max(axis=(0, 1)), 1e-12)


def mix_fields(fields: np.ndarray, count: int, rng: np.random.Generator, decay: float) -> np.ndarray:
    """``count`` components as random orthogonal mixtures of ``fields`` [V, 3, F], scaled by a
    decreasing spectrum (the first components vary most, like a PCA basis)."""
    q, _ = np.linalg.qr(rng.standard_normal((fields.shape[2], fields.shape[2])))
    scale = decay ** np.arange(count)
    return fields @ (q[:, :count] * scale)


# SMPL's shape space against SMPL-X's (see smpl_shape_space)
SMPL_SHAPE_MIX = 0.6  # how far SMPL's basis is rotated away from SMPL-X's first 10 components
SMPL_SHAPE_RESIDUAL = 0.1  # weight of SMPL-X components 10..13 in SMPL's basis
SMPL_SHAPE_NOISE = 0.0005  # largest offset (m) of SMPL's own smooth random field per component


def transport_fields(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Fields [V, 3, F] on a mesh (``verts`` [V, 3], ``faces``) read at the closest surface point of each of
    ``points`` [P, 3]; returns [P, 3, F]."""
    face, bary, _ = closest_points(points, verts, faces, candidates=16)
    return np.einsum("pk,pkdf->pdf", bary, fields[faces[face]])


def smpl_shape_space(verts: np.ndarray, smplx: ModelArrays, rng: np.random.Generator) -> np.ndarray:
    """SMPL's 10 shape components [V, 3, 10] on its surface ``verts`` [V, 3]: SMPL-X's first 10 components,
    read at the closest SMPL-X surface point and mixed by a random rotation (``SMPL_SHAPE_MIX`` away from the
    identity), plus a small residual outside their span: SMPL-X components 10..13 and a smooth random field."""
    x = transport_fields(verts, smplx.v_template, smplx.faces.astype(np.int64), smplx.shapedirs[:, :, :14])
    u, _, vt = np.linalg.svd(np.eye(10) + SMPL_SHAPE_MIX * rng.standard_normal((10, 10)))
    rotation = u @ vt  # [10, 10] the orthogonal factor
    residual = x[:, :, 10:] @ rng.standard_normal((4, 10)) * SMPL_SHAPE_RESIDUAL
    noise = SMPL_SHAPE_NOISE * smooth_random_fields(verts, 10, 0.1, rng)
    return x[:, :, :10] @ rotation + residual + noise


def body_fields(part: Part, joints: dict[str, np.ndarray], model_joints: list[str]) -> np.ndarray:
    """Anthropometric displacement fields [V, 3, 14] of a body: height, leg length, arm length,
    shoulder and hip width, torso and neck length (moving joints, carried by skinning), girth,
    belly, chest, limb thickness (along the surface normal) and head / hand / foot size."""
    pos = np.stack([joints[n] for n in model_joints])  # [J, 3]
    side = np.array([1.0 if "left" in n else -1.0 if "right" in n else 0.0 for n in model_joints])
    is_leg = np.array([any(k in n for k in ("hip", "knee", "ankle", "foot")) for n in model_joints])
    is_arm = np.array([any(k in n for k in ("shoulder", "elbow", "wrist", "hand", "index", "middle", "ring", "pinky", "thumb")) for n in model_joints])
    is_collar = np.array(["collar" in n for n in model_joints])
    is_head = np.array([n in ("head", "jaw", "left_eye_smplhf", "right_eye_smplhf") for n in model_joints])
    y_floor, y_pelvis, y_hip = hm.FLOOR_Y, joints["pelvis"][1], joints["left_hip"][1]
    shoulder_x = abs(joints["left_shoulder"][0])
    zeros = np.zeros(len(pos))

    def moved(dx=zeros, dy=zeros) -> np.ndarray:  # joint offsets -> vertex offsets by skinning
        return part.weights @ np.stack([dx, dy, zeros], 1)

    above = (~is_leg) & (pos[:, 1] > y_pelvis - 0.01)
    fields = [
        moved(dy=0.06 * (pos[:, 1] - y_floor)),
        moved(dy=np.where(is_leg, 0.08 * (pos[:, 1] - y_floor), 0.08 * (y_hip - y_floor))),
        moved(dx=np.where(is_arm, side * 0.08 * np.maximum(np.abs(pos[:, 0]) - shoulder_x, 0), 0)),
        moved(dx=side * np.where(is_arm, 0.025, np.where(is_collar, 0.01, 0.0))),
        moved(dx=np.where(is_leg, side * 0.015, 0.0)),
        moved(dy=np.where(above, 0.05 * (pos[:, 1] - y_pelvis), 0.0)),
        moved(dy=np.where(is_head, 0.015, np.where(np.array([n == "neck" for n in model_joints]), 0.0075, 0.0))),
    ]
    group = _group_of(part)
    y = part.verts[:, 1]
    girth = np.select([group == "torso", group == "leg", group == "arm", group == "head"], [0.025, 0.014, 0.010, 0.002], 0.001)
    limbs = np.select([group == "leg", group == "arm"], [0.012, 0.010], 0.0)
    torso = (group == "torso").astype(float)
    belly = torso * 0.03 * np.maximum(part.radial[:, 2], 0) * np.exp(-(((y - y_pelvis - 0.15) / 0.1) ** 2))
    chest = torso * 0.02 * np.exp(-(((y - joints["spine3"][1]) / 0.08) ** 2))
    fields += [part.radial * girth[:, None], part.radial * belly[:, None], part.radial * chest[:, None], part.radial * limbs[:, None]]
    head_centre = joints["neck"] + np.array([0.0, 0.2, 0.02])
    fields.append(0.07 * (part.verts - head_centre) * (group == "head")[:, None])
    hand = np.zeros_like(part.verts)
    foot = np.zeros_like(part.verts)
    for s, name in ((1.0, "left"), (-1.0, "right")):
        on_side = (np.sign(part.verts[:, 0]) == s)[:, None]
        hand += 0.1 * (part.verts - joints[f"{name}_wrist"]) * ((group == "hand")[:, None] & on_side)
        foot += 0.1 * (part.verts - joints[f"{name}_ankle"]) * ((group == "foot")[:, None] & on_side)
    fields += [hand, foot]
    return np.stack(fields, -1)


def _group_of(part: Part) -> np.ndarray:
    group = np.full(part.num_verts, "", dtype=object)
    for tag, idx in part.tags.items():
        if "grp:" not in tag:
            continue
        name = tag.split("grp:")[1]
        for g in ("torso", "leg", "foot", "arm", "head", "eye"):
            if name.startswith(g):
                group[idx] = "head" if g == "eye" else g
                break
        else:
            group[idx] = "hand"  # palm, fingers
    return group


def head_eval_points(part: Part) -> np.ndarray:
    """Where to evaluate head fields: each skin vertex itself, each eyeball vertex its eye centre
    (eyeballs move rigidly with the face)."""
    pts = part.verts.copy()
    for tag, side in (("grp:eye_l", 1.0), ("grp:eye_r", -1.0)):
        if tag in part.tags:
            pts[part.tags[tag]] = hm.eye_centre(side)
    return pts


def head_fields(points: np.ndarray) -> np.ndarray:
    """Head shape fields [V, 3, 8] (FLAME frame): size, width, depth, face length, nose, jaw width,
    eye distance, neck thickness."""
    x, y, z = points.T
    cz, _, _ = hm.head_profile(y)
    radial = np.stack([x, np.zeros_like(x), z - cz], 1)
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    front = (z - cz > 0).astype(float)
    zero = np.zeros_like(x)
    nose = 0.006 * np.exp(-((x / 0.015) ** 2) - ((y - 0.01) / 0.025) ** 2) * front
    eyes = 0.004 * np.sign(x) * np.exp(-((np.abs(x) - hm.EYE_X) ** 2 + (y - hm.EYE_Y) ** 2) / 0.02**2)
    jaw = 0.08 * x * (1.0 - np.clip((y + 0.03) / 0.04 + 1.0, 0.0, 1.0))
    neck = 0.008 * np.clip((hm.HEAD_NECK_Y - y) / 0.03, 0.0, 1.0)
    fields = [
        0.06 * (points - np.array([0.0, 0.02, 0.0])),
        np.stack([0.08 * x, zero, zero], 1),
        np.stack([zero, zero, 0.08 * (z - cz)], 1),
        np.stack([zero, 0.1 * np.minimum(y - hm.EYE_Y, 0.0) * front, zero], 1),
        radial * nose[:, None],
        np.stack([jaw, zero, zero], 1),
        np.stack([eyes, zero, zero], 1),
        radial * neck[:, None],
    ]
    return np.stack(fields, -1)


def head_expressions(part: Part, count: int, rng: np.random.Generator) -> np.ndarray:
    """Expression blend shapes [V, 3, count]: pairs of smooth bumps on the face (none on the eyes)."""
    skin = part.tags["grp:head"]
    v = part.verts[skin]
    cz, _, _ = hm.head_profile(v[:, 1])
    face = np.flatnonzero((v[:, 2] - cz > 0.04) & (v[:, 1] > -0.09) & (v[:, 1] < 0.07))
    centres = v[rng.choice(face, size=(count, 2))]  # [count, 2, 3]
    directions = rng.standard_normal((count, 2, 3))
    phi = np.exp(-(((v[:, None, None, :] - centres[None]) ** 2).sum(-1)) / 0.02**2)  # [Vs, count, 2]
    bumps = np.einsum("vkb,kbd->vdk", phi, directions)
    bumps /= np.maximum(np.abs(bumps).max(axis=(0, 1)), 1e-12)
    out = np.zeros((part.num_verts, 3, count))
    out[skin] = bumps * (0.003 * 0.97 ** np.arange(count))
    return out


def hand_fields(part: Part, wrist: np.ndarray) -> np.ndarray:
    """Hand shape fields [V, 3, 4] (MANO frame): size, finger thickness, finger length, palm width."""
    beyond = np.maximum(wrist[0] - 0.085 - part.verts[:, 0], 0.0)
    return np.stack(
        [
            0.08 * (part.verts - wrist),
            0.0015 * part.radial,
            np.stack([-0.15 * beyond, 0 * beyond, 0 * beyond], 1),
            np.stack([0 * beyond, 0 * beyond, 0.08 * (part.verts[:, 2] - wrist[2])], 1),
        ],
        -1,
    )


def hand_pose_space(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Right-hand PCA pose space: (components [45, 45] orthonormal rows, mean [45]). The first
    components curl all fingers, spread them, and oppose the thumb; the rest complete the basis."""
    flex = np.tile([0.0, 0.0, 1.0], 15)  # rotation about +z curls a right hand's fingers to the palm
    spread = np.zeros((15, 3))
    spread[[0, 3, 6, 9], 1] = [0.6, 0.0, -0.9, -0.4]  # knuckles of index, middle, pinky, ring
    thumb = np.zeros((15, 3))
    thumb[12:] = [0.5, 0.3, 0.6]
    lead = np.stack([flex, spread.ravel(), thumb.ravel()])
    q, _ = np.linalg.qr(np.concatenate([lead, rng.standard_normal((42, 45))]).T)
    components = q.T.copy()
    components[:3] *= np.sign((components[:3] * lead).sum(1))[:, None]
    mean = 0.15 * flex
    return components, mean


def mirror_hand_pose(pose: np.ndarray) -> np.ndarray:
    """Axis-angle hand poses [..., 45] of a right hand as the left hand's (mirror through x = 0)."""
    return (pose.reshape(*pose.shape[:-1], 15, 3) * np.array([1.0, -1.0, -1.0])).reshape(pose.shape)


# ----------------------------------------------------------------------------------------------
# landmark embeddings (FLAME frame)
# ----------------------------------------------------------------------------------------------


def _arc(x0: float, x1: float, n: int) -> np.ndarray:
    return np.linspace(x0, x1, n)


def _eye_points(side: float) -> dict[str, np.ndarray]:
    inner, outer = side * 0.018, side * 0.046
    xs = np.linspace(min(inner, outer), max(inner, outer), 9)[1:-1]  # increasing x
    bump = np.sin(np.pi * (np.abs(xs) - 0.018) / 0.028)
    return {
        "inner": np.array([inner, hm.EYE_Y]),
        "outer": np.array([outer, hm.EYE_Y]),
        "upper": np.stack([xs, hm.EYE_Y + 0.006 * bump], 1),
        "lower": np.stack([xs, hm.EYE_Y - 0.005 * bump], 1),
    }


def _brow_points(side: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) brow edges, 5 points each, by increasing x."""
    xs = np.sort(side * np.array([0.014, 0.026, 0.038, 0.050, 0.058]))
    lift = np.interp(np.abs(xs), [0.014, 0.038, 0.058], [0.060, 0.065, 0.058])
    return np.stack([xs, lift], 1), np.stack([xs, lift - 0.007], 1)


def _lip_points() -> dict[str, np.ndarray]:
    xo, xi = np.linspace(-0.022, 0.022, 9), np.linspace(-0.017, 0.017, 9)
    ro, ri = np.sqrt(1 - (xo / 0.025) ** 2), np.sqrt(1 - (xi / 0.02) ** 2)
    m = hm.MOUTH_Y
    return {
        "upper_outer": np.stack([xo, m + 0.010 * ro], 1), "lower_outer": np.stack([xo, m - 0.012 * ro], 1),
        "upper_inner": np.stack([xi, m + 0.003 * ri], 1), "lower_inner": np.stack([xi, m - 0.003 * ri], 1),
        "corners": np.array([[-0.025, m], [0.025, m], [-0.020, m], [0.020, m]]),
    }  # fmt: skip


def ibug51_points() -> np.ndarray:
    """The 51 inner iBUG-68 landmarks (17..67) as (x, y) on the face, in iBUG order."""
    ub_r, _ = _brow_points(-1.0)
    ub_l, _ = _brow_points(1.0)
    er, el = _eye_points(-1.0), _eye_points(1.0)
    lips = _lip_points()
    uo, lo, ui, li = lips["upper_outer"], lips["lower_outer"], lips["upper_inner"], lips["lower_inner"]
    pts = [
        ub_r,  # 17-21 right brow, outer to inner
        ub_l,  # 22-26 left brow, inner to outer
        np.stack([np.zeros(4), [0.035, 0.022, 0.008, -0.004]], 1),  # 27-30 nose bridge to tip
        np.stack([[-0.014, -0.007, 0.0, 0.007, 0.014], [-0.014, -0.016, -0.017, -0.016, -0.014]], 1),  # 31-35
        # 36-41 right eye: outer corner, upper lid (outer to inner), inner corner, lower lid (inner to outer)
        np.stack([er["outer"], er["upper"][1], er["upper"][5], er["inner"], er["lower"][5], er["lower"][1]]),
        # 42-47 left eye: inner corner, upper lid (inner to outer), outer corner, lower lid (outer to inner)
        np.stack([el["inner"], el["upper"][1], el["upper"][5], el["outer"], el["lower"][5], el["lower"][1]]),
        # 48-59 outer lip from the right corner over the top and back under the bottom
        np.concatenate([lips["corners"][:1], uo[[1, 3, 4, 5, 7]], lips["corners"][1:2], lo[[7, 5, 4, 3, 1]]]),
        # 60-67 inner lip
        np.concatenate([lips["corners"][2:3], ui[[2, 4, 6]], lips["corners"][3:4], li[[6, 4, 2]]]),
    ]
    return np.concatenate(pts)


def mediapipe_points() -> np.ndarray:
    """(x, y) on the face of the 105 MediaPipe landmarks, in ``MEDIAPIPE_EMBEDDING_INDICES`` order."""
    p: dict[int, np.ndarray] = {}

    def put(indices, points):
        for i, q in zip(indices, points):
            p[i] = q

    ub_l, lb_l = _brow_points(1.0)
    ub_r, lb_r = _brow_points(-1.0)
    put([336, 296, 334, 293, 300], ub_l)  # inner to outer = increasing x
    put([285, 295, 282, 283, 276], lb_l)
    put([70, 63, 105, 66, 107], ub_r)  # outer to inner = increasing x
    put([46, 53, 52, 65, 55], lb_r)
    el, er = _eye_points(1.0), _eye_points(-1.0)
    put([263, 362, 133, 33], [el["outer"], el["inner"], er["inner"], er["outer"]])
    put([398, 384, 385, 386, 387, 388, 466], el["upper"])
    put([382, 381, 380, 374, 373, 390, 249], el["lower"])
    put([246, 161, 160, 159, 158, 157, 173], er["upper"])
    put([7, 163, 144, 145, 153, 154, 155], er["lower"])
    put([168, 6, 197, 195, 5, 4], np.stack([np.zeros(6), [0.038, 0.028, 0.018, 0.009, 0.003, -0.004]], 1))
    put([129, 98, 97, 2, 326, 327, 358], np.stack([_arc(-0.018, 0.018, 7), [-0.010, -0.014, -0.016, -0.017, -0.016, -0.014, -0.010]], 1))
    lips = _lip_points()
    put([61, 291, 78, 308], lips["corners"])
    put([185, 40, 39, 37, 0, 267, 269, 270, 409], lips["upper_outer"])
    put([146, 91, 181, 84, 17, 314, 405, 321, 375], lips["lower_outer"])
    put([191, 80, 81, 82, 13, 312, 311, 310, 415], lips["upper_inner"])
    put([95, 88, 178, 87, 14, 317, 402, 318, 324], lips["lower_inner"])
    return np.stack([p[int(i)] for i in layouts.MEDIAPIPE_EMBEDDING_INDICES])


def contour_points(yaw_deg: float) -> np.ndarray:
    """The 17 jaw-contour landmarks (iBUG 0..16, right ear to chin to left ear) as (theta, y) for a
    head turned by smplx's contour angle ``yaw_deg``: the sides slide with the silhouette."""
    base = np.radians(np.linspace(-80.0, 80.0, 17))
    theta = np.clip(base + np.radians(yaw_deg) * np.abs(base) / np.radians(80.0), -np.radians(88), np.radians(88))
    y = -0.083 + 0.063 * (np.abs(base) / np.radians(80.0)) ** 1.5
    return np.stack([theta, y], 1)


def _embed(points3d: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    face, bary, _ = closest_points(points3d, verts, faces, candidates=12)
    return face.astype(np.int64), bary


def flame_embeddings(verts: np.ndarray, skin_faces: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Static (51), dynamic (79 x 17) and MediaPipe (105) embeddings on FLAME's skin faces."""
    static_xy = ibug51_points()
    mp_xy = mediapipe_points()
    angles = layouts.contour_angle_deg(np.arange(layouts.NUM_CONTOUR_ANGLES))
    contour = np.concatenate([contour_points(a) for a in angles])
    out = {
        "static": _embed(hm.head_surface_point(static_xy[:, 0], static_xy[:, 1]), verts, skin_faces),
        "mediapipe": _embed(hm.head_surface_point(mp_xy[:, 0], mp_xy[:, 1]), verts, skin_faces),
    }
    face, bary = _embed(hm.head_surface_at(contour[:, 0], contour[:, 1]), verts, skin_faces)
    out["dynamic"] = (face.reshape(79, 17), bary.reshape(79, 17, 3))
    return out


# ----------------------------------------------------------------------------------------------
# the four models
# ----------------------------------------------------------------------------------------------


@dataclass
class Kit:
    smpl: dict[str, ModelArrays]  # gender -> model
    smplx: dict[str, ModelArrays]
    flame: dict[str, ModelArrays]  # "2020", "2023"
    mano: dict[str, ModelArrays]  # "RIGHT", "LEFT"
    flame_embeddings: dict[str, tuple[np.ndarray, np.ndarray]]
    smplx_flame_ids: np.ndarray  # [5023]
    mano_smplx_ids: dict[str, np.ndarray]  # left_hand / right_hand [778]
    deftrafo: sp.csr_matrix  # [10475, 2 * 6890]


def _build_flame(rng: np.random.Generator) -> tuple[Part, dict[str, ModelArrays], dict]:
    head = hm.build_head(skin_verts=3931, rings=62, eyes=True)
    if head.num_verts != layouts.FLAME.num_verts:
        raise AssertionError(f"FLAME head has {head.num_verts} vertices")
    reg = hm.ring_regressor(head.tags, hm.HEAD_JOINTS, head.num_verts)
    skin_faces = head.faces[: np.flatnonzero((head.faces >= 3931).any(1))[0]]
    emb = flame_embeddings(head.verts, skin_faces)
    points = head_eval_points(head)
    models = {}
    for version in ("2020", "2023"):
        sub = np.random.default_rng([rng.integers(2**32), int(version)])
        shape = np.concatenate(
            [mix_fields(head_fields(points), 8, sub, 0.85), 0.004 * smooth_random_fields(points, 292, 0.03, sub) * (0.99 ** np.arange(292))],
            -1,
        )
        expression = head_expressions(head, 100, sub)
        models[version] = ModelArrays(
            v_template=head.verts,
            faces=head.faces,
            weights=head.weights,
            posedirs=pose_correctives(head.verts, head.weights, reg @ head.verts, layouts.FLAME_PARENTS),
            shapedirs=np.concatenate([shape, expression], -1),
            j_regressor=reg,
            parents=layouts.FLAME_PARENTS,
        )
    return head, models, emb


def _mano_order(hand: Part) -> np.ndarray:
    fixed = {int(hand.tags[f"tip:{f}"][0]): i for f, i in layouts.MANO_TIPS_SMPLX.items()}
    fixed.update({int(hand.tags[f"tip2:{f}"][0]): i for f, i in layouts.MANO_TIPS_COMMON.items()})
    return place_indices(hand.num_verts, fixed)


def _scatter(parts: list[Part], finals: list[np.ndarray], num_verts: int) -> Part:
    """One part whose vertices come from ``parts``, vertex i of part k going to ``finals[k][i]``."""
    verts = np.zeros((num_verts, 3))
    radial = np.zeros((num_verts, 3))
    weights = np.zeros((num_verts, parts[0].weights.shape[1]))
    faces, tags = [], {}
    filled = np.zeros(num_verts, bool)
    for p, f in zip(parts, finals):
        verts[f], radial[f], weights[f] = p.verts, p.radial, p.weights
        filled[f] = True
        faces.append(f[p.faces])
        for k, v in p.tags.items():
            if k in tags:
                raise ValueError(f"tag {k!r} defined twice")
            tags[k] = f[v]
    if not filled.all():
        raise AssertionError("vertex slots left empty")
    return Part(verts, np.concatenate(faces), radial, weights, tags)


def _build_mano(rng: np.random.Generator) -> tuple[Part, dict[str, ModelArrays]]:
    hand = hm.build_hand(palm_verts=208, finger_verts=108, thumb_verts=138, spacing=0.0045)
    order = _mano_order(hand)
    hand = _scatter([hand], [order], hand.num_verts)
    reg = hm.ring_regressor(hand.tags, layouts.MANO_JOINTS, hand.num_verts)
    shape = mix_fields(np.concatenate([hand_fields(hand, hm.MANO_WRIST), smooth_random_fields(hand.verts, 6, 0.03, rng) * 0.002], -1), 10, rng, 0.8)
    components, mean = hand_pose_space(rng)
    right = ModelArrays(
        v_template=hand.verts,
        faces=hand.faces,
        weights=hand.weights,
        posedirs=pose_correctives(hand.verts, hand.weights, reg @ hand.verts, layouts.MANO_PARENTS),
        shapedirs=shape,
        j_regressor=reg,
        parents=layouts.MANO_PARENTS,
        extra={"hands_components": components, "hands_mean": mean},
    )
    flip = np.array([-1.0, 1.0, 1.0])
    left_verts = right.v_template * flip
    left = ModelArrays(
        v_template=left_verts,
        faces=right.faces[:, [0, 2, 1]],
        weights=right.weights,
        posedirs=pose_correctives(left_verts, right.weights, reg @ left_verts, layouts.MANO_PARENTS),
        shapedirs=right.shapedirs * flip[None, :, None],
        j_regressor=reg,
        parents=layouts.MANO_PARENTS,
        extra={"hands_components": mirror_hand_pose(components), "hands_mean": mirror_hand_pose(mean)},
    )
    return hand, {"RIGHT": right, "LEFT": left}


def _gendered(base: ModelArrays, fields: np.ndarray, coeffs: np.ndarray) -> ModelArrays:
    v = base.v_template + fields @ coeffs
    return ModelArrays(
        v_template=v,
        faces=base.faces,
        weights=base.weights,
        posedirs=pose_correctives(v, base.weights, base.j_regressor @ v, base.parents),
        shapedirs=base.shapedirs,
        j_regressor=base.j_regressor,
        parents=base.parents,
        extra=base.extra,
    )


# body-field coefficients of the male and female templates (height, legs, arms, shoulders, hips, ...)
_MALE = np.array([1.0, 0.3, 0.3, 0.8, -0.3, 0.2, 0.2, 0.3, 0.2, 0.3, 0.3, 0.2, 0.3, 0.3])
_FEMALE = np.array([-1.0, 0.0, -0.3, -0.8, 0.8, -0.1, -0.1, -0.2, 0.0, -0.3, -0.3, -0.1, -0.3, -0.3])


def _build_smplx(rng, size: np.ndarray, head: Part, flame: ModelArrays, hand: Part, mano: dict[str, ModelArrays]):
    names = layouts.SMPLX_JOINTS
    j = _skeleton(_SMPLX_SKELETON, size)
    counts = {"torso": 1300, "leg": 700, "foot": 140, "arm": 458}
    body, _ = concat_parts(_body_pieces(j, counts, np.ones(12), 1.0, 0.02, names))

    head_map = {"global": "neck", "neck": "head", "jaw": "jaw", "left_eye": "left_eye_smplhf", "right_eye": "right_eye_smplhf"}
    head_part = hm.to_model_joints(head, hm.HEAD_JOINTS, head_map, names)
    head_part = _translated(head_part, j["neck"] - _ring_centre(head, "joint:global"))
    left_hand = hm.mirror(hand, None)
    hands = {}
    for side, part in (("left", left_hand), ("right", hand)):
        part = hm.to_model_joints(part, layouts.MANO_JOINTS, _hand_names(side), names)
        part = _translated(part, j[f"{side}_wrist"] - _ring_centre(part, f"joint:{side}_wrist"))
        hands[side] = _prefixed(part, "L:" if side == "left" else "R:")

    ids = SMPLX_VERTEX_IDS["smplx"]
    hand_slots = {"left": np.arange(4610, 5388), "right": np.arange(7320, 8098)}
    hand_final = {}
    for side, key in (("left", "l"), ("right", "r")):
        fixed = {layouts.MANO_TIPS_SMPLX[f]: ids[f"{key}{f}"] for f in layouts.MANO_TIPS_SMPLX}
        hand_final[side] = place_indices(778, fixed, hand_slots[side])
    head_fixed = {
        int(head.tags["nose"][0]): ids["nose"],
        int(head.tags["pupil_l"][0]): ids["leye"],
        int(head.tags["pupil_r"][0]): ids["reye"],
        int(head.tags["ear_l"][0]): ids["lear"],
        int(head.tags["ear_r"][0]): ids["rear"],
    }
    body_fixed = {
        int(body.tags[tag][0]): ids[name]
        for tag, name in (("L:bigtoe", "LBigToe"), ("L:smalltoe", "LSmallToe"), ("L:heel", "LHeel"),
                          ("R:bigtoe", "RBigToe"), ("R:smalltoe", "RSmallToe"), ("R:heel", "RHeel"))
    }  # fmt: skip
    rest = np.setdiff1d(np.arange(layouts.SMPLX.num_verts), np.concatenate(list(hand_slots.values())))
    free = np.setdiff1d(rest, list(head_fixed.values()) + list(body_fixed.values()))
    head_slots = np.sort(np.concatenate([list(head_fixed.values()), free[: head.num_verts - len(head_fixed)]]))
    body_slots = np.sort(np.concatenate([list(body_fixed.values()), free[head.num_verts - len(head_fixed) :]]))
    head_final = place_indices(head.num_verts, head_fixed, head_slots)
    body_final = place_indices(body.num_verts, body_fixed, body_slots)
    full = _scatter(
        [body, head_part, hands["left"], hands["right"]],
        [body_final, head_final, hand_final["left"], hand_final["right"]],
        layouts.SMPLX.num_verts,
    )
    reg = hm.ring_regressor(full.tags, names, full.num_verts)
    joints = dict(zip(names, reg @ full.verts))
    fields = body_fields(full, joints, names)
    shape = np.concatenate(
        [mix_fields(fields, fields.shape[2], rng, 0.85), 0.005 * smooth_random_fields(full.verts, 300 - fields.shape[2], 0.08, rng) * 0.99 ** np.arange(300 - fields.shape[2])],
        -1,
    )
    expression = np.zeros((full.num_verts, 3, 100))
    expression[head_final] = flame.shapedirs[:, :, 300:]
    head_face_start = len(body.faces)
    comps_r, mean_r = mano["RIGHT"].extra["hands_components"], mano["RIGHT"].extra["hands_mean"]
    extra = {
        "hands_componentsl": mano["LEFT"].extra["hands_components"],
        "hands_componentsr": comps_r,
        "hands_meanl": mano["LEFT"].extra["hands_mean"],
        "hands_meanr": mean_r,
        "joint2num": {n: i for i, n in enumerate(names)},
    }
    base = ModelArrays(
        v_template=full.verts,
        faces=full.faces,
        weights=full.weights,
        posedirs=pose_correctives(full.verts, full.weights, reg @ full.verts, layouts.SMPLX_PARENTS),
        shapedirs=np.concatenate([shape, expression], -1),
        j_regressor=reg,
        parents=layouts.SMPLX_PARENTS,
        extra=extra,
    )
    models = {"NEUTRAL": base, "MALE": _gendered(base, fields, _MALE), "FEMALE": _gendered(base, fields, _FEMALE)}
    return full, models, head_final, hand_final, head_face_start


def _build_smpl(rng, size: np.ndarray, smplx: ModelArrays) -> tuple[Part, dict[str, ModelArrays]]:
    names = layouts.SMPL_JOINTS
    j = _skeleton(_SMPL_SKELETON, size)
    counts = {"torso": 1850, "leg": 850, "foot": 160, "arm": 560}
    widths = np.array([1.0, 1.02, 1.0, 0.98, 0.97, 0.98, 1.0, 1.02, 1.0, 1.0, 1.0, 1.0])
    pieces = _body_pieces(j, counts, widths, 1.03, 0.02, names)
    head = hm.build_head(skin_verts=1000, rings=34, eyes=False)
    head_map = {"global": "neck", "neck": "head", "jaw": "head", "left_eye": "head", "right_eye": "head"}
    head = hm.to_model_joints(head, hm.HEAD_JOINTS, head_map, names)
    head = _translated(head, j["neck"] - _ring_centre(head, "joint:neck"))
    hand = hm.build_hand(palm_verts=90, finger_verts=72, thumb_verts=72, spacing=0.016)
    hand_map = {n: "left_hand" for n in layouts.MANO_FINGER_JOINTS} | {"wrist": "left_wrist"}
    left_hand = hm.mirror(hand, None)
    knuckles = left_hand.tags["knuckles"]
    left_hand = hm.to_model_joints(left_hand, layouts.MANO_JOINTS, hand_map, names)
    left_hand.tags = {k: v for k, v in left_hand.tags.items() if k != "joint:left_hand"}
    left_hand.tags["joint:left_hand"] = knuckles
    left_hand = _translated(left_hand, j["left_wrist"] - _ring_centre(left_hand, "joint:left_wrist"))
    left_hand = _prefixed(left_hand, "L:")
    right_hand = hm.mirror(left_hand, names)
    natural, _ = concat_parts([head] + pieces + [left_hand, right_hand])
    ids = SMPLX_VERTEX_IDS["smplh"]
    tag_of = {
        "nose": "nose", "reye": "eye_r", "leye": "eye_l", "rear": "ear_r", "lear": "ear_l",
        "LBigToe": "L:bigtoe", "LSmallToe": "L:smalltoe", "LHeel": "L:heel",
        "RBigToe": "R:bigtoe", "RSmallToe": "R:smalltoe", "RHeel": "R:heel",
    }  # fmt: skip
    for f in layouts.MANO_TIPS_SMPLX:
        tag_of[f"l{f}"] = f"L:tip:{f}"
        tag_of[f"r{f}"] = f"R:tip:{f}"
    order = place_indices(natural.num_verts, {int(natural.tags[t][0]): ids[k] for k, t in tag_of.items()})
    full = _scatter([natural], [order], natural.num_verts)
    if full.num_verts != layouts.SMPL.num_verts:
        raise AssertionError(f"SMPL has {full.num_verts} vertices")
    reg = hm.ring_regressor(full.tags, names, full.num_verts)
    joints = dict(zip(names, reg @ full.verts))
    fields = body_fields(full, joints, names)
    base = ModelArrays(
        v_template=full.verts,
        faces=full.faces,
        weights=full.weights,
        posedirs=pose_correctives(full.verts, full.weights, reg @ full.verts, layouts.SMPL_PARENTS),
        shapedirs=smpl_shape_space(full.verts, smplx, rng),
        j_regressor=reg,
        parents=layouts.SMPL_PARENTS,
    )
    models = {"NEUTRAL": base, "MALE": _gendered(base, fields, _MALE), "FEMALE": _gendered(base, fields, _FEMALE)}
    return full, models


def deformation_transfer(smpl: ModelArrays, smplx: ModelArrays) -> sp.csr_matrix:
    """SMPL -> SMPL-X deformation-transfer matrix [10475, 2 * 6890]: row i holds the barycentric
    weights of SMPL-X vertex i's closest SMPL point (first half) and those weights times the signed
    distance along that triangle's normal (second half, for vertex normals)."""
    v, f = smpl.v_template, smpl.faces.astype(np.int64)
    face, bary, closest = closest_points(smplx.v_template, v, f, candidates=16)
    tri = v[f[face]]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    dist = ((smplx.v_template - closest) * normal).sum(1)
    n_smpl = len(v)
    rows = np.repeat(np.arange(len(face)), 3)
    cols = f[face].ravel()
    data = bary.ravel()
    mtx = sp.coo_matrix(
        (np.concatenate([data, (bary * dist[:, None]).ravel()]), (np.concatenate([rows, rows]), np.concatenate([cols, cols + n_smpl]))),
        shape=(len(face), 2 * n_smpl),
    )
    return mtx.tocsr()


def build_kit(seed: int = 0) -> Kit:
    """All models and correspondence data of the synthetic kit for ``seed`` (nothing written)."""
    rng = np.random.default_rng(seed)
    streams = rng.spawn(5)
    size = 1.0 + 0.01 * streams[4].standard_normal(2)  # body width, height: shared by SMPL and SMPL-X
    head, flame, emb = _build_flame(streams[0])
    hand, mano = _build_mano(streams[1])
    _, smplx, head_final, hand_final, head_face_start = _build_smplx(streams[2], size, head, flame["2020"], hand, mano)
    _, smpl = _build_smpl(streams[3], size, smplx["NEUTRAL"])
    lmk = {
        "lmk_faces_idx": emb["static"][0] + head_face_start,
        "lmk_bary_coords": emb["static"][1],
        "dynamic_lmk_faces_idx": emb["dynamic"][0] + head_face_start,
        "dynamic_lmk_bary_coords": emb["dynamic"][1],
    }
    for m in smplx.values():
        m.extra = {**m.extra, **lmk}
    return Kit(
        smpl=smpl,
        smplx=smplx,
        flame=flame,
        mano=mano,
        flame_embeddings=emb,
        smplx_flame_ids=head_final.astype(np.int64),
        mano_smplx_ids={"left_hand": hand_final["left"].astype(np.int64), "right_hand": hand_final["right"].astype(np.int64)},
        deftrafo=deformation_transfer(smpl["NEUTRAL"], smplx["NEUTRAL"]),
    )


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def _model_dict(m: ModelArrays, chumpy: bool) -> dict:
    """The official pickle dict of a SMPL / FLAME / MANO model; ``chumpy`` wraps the dense arrays in
    chumpy objects the way the downloads do, otherwise they are plain arrays (as smplx's
    ``clean_ch.py`` leaves them)."""
    wrap = ChumpyCh if chumpy else (lambda a: np.asarray(a, np.float64))
    d = {
        "f": m.faces.astype(np.uint32),
        "J_regressor": sp.csc_matrix(m.j_regressor),
        "kintree_table": m.kintree_table(),
        "J": m.joints,
        "weights": wrap(m.weights),
        "posedirs": wrap(m.posedirs),
        "v_template": wrap(m.v_template),
        "shapedirs": wrap(m.shapedirs),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    d.update({k: np.asarray(v, np.float64) for k, v in m.extra.items()})
    return d


def _smplx_arrays(m: ModelArrays) -> dict[str, np.ndarray]:
    """SMPL-X v1.1 ``.npz`` members (float32 arrays, dense regressor, ``joint2num`` as an object)."""
    out = {
        "v_template": m.v_template.astype(np.float32),
        "f": m.faces.astype(np.uint32),
        "weights": m.weights.astype(np.float32),
        "posedirs": m.posedirs.astype(np.float32),
        "shapedirs": m.shapedirs.astype(np.float32),
        "J_regressor": m.j_regressor.astype(np.float32),
        "kintree_table": m.kintree_table(),
    }
    for k, v in m.extra.items():
        if k == "joint2num":
            out[k] = np.array(v, dtype=object)
        elif "idx" in k:
            out[k] = np.asarray(v, np.int64)
        else:
            out[k] = np.asarray(v, np.float32)
    return out


def write_kit(kit: Kit, out_dir: Path, seed: int) -> None:
    """Write ``kit`` in the layout of docs/assets.md."""
    out = Path(out_dir)

    def clean(rel: str, obj) -> None:  # what a Python 3 script such as smplx's clean_ch.py writes
        with atomic_output(out / rel) as f:
            pickle.dump(obj, f, protocol=4)

    def legacy(rel: str, obj) -> None:  # what the official Python 2 files are
        with atomic_output(out / rel) as f:
            dump_legacy(obj, f)

    for g, m in kit.smpl.items():
        clean(f"smpl/SMPL_{g}.pkl", _model_dict(m, chumpy=False))
    legacy("smpl/basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl", _model_dict(kit.smpl["NEUTRAL"], chumpy=True))
    for side, m in kit.mano.items():
        clean(f"mano/MANO_{side}.pkl", _model_dict(m, chumpy=False))
    clean("flame/FLAME_NEUTRAL.pkl", _model_dict(kit.flame["2020"], chumpy=False))
    legacy("flame/generic_model.pkl", _model_dict(kit.flame["2020"], chumpy=True))
    legacy("flame/flame2023.pkl", _model_dict(kit.flame["2023"], chumpy=True))
    face, bary = kit.flame_embeddings["static"]
    legacy("flame/flame_static_embedding.pkl", {"lmk_face_idx": face.astype(np.uint32), "lmk_b_coords": bary})
    face, bary = kit.flame_embeddings["dynamic"]
    dynamic = np.array({"lmk_face_idx": face.astype(np.int64), "lmk_b_coords": bary}, dtype=object)
    write_bytes_atomic(out / "flame/flame_dynamic_embedding.npy", npy_bytes(dynamic, allow_pickle=True))
    face, bary = kit.flame_embeddings["mediapipe"]
    mediapipe = {"lmk_face_idx": face.astype(np.int64), "lmk_b_coords": bary, "landmark_indices": layouts.MEDIAPIPE_EMBEDDING_INDICES.astype(np.int64)}
    write_npz(out / "flame/mediapipe_landmark_embedding.npz", mediapipe)
    write_bytes_atomic(out / "smplx/SMPL-X__FLAME_vertex_ids.npy", npy_bytes(kit.smplx_flame_ids))
    legacy("smplx/MANO_SMPLX_vertex_ids.pkl", kit.mano_smplx_ids)
    legacy("transfer/smpl2smplx_deftrafo_setup.pkl", {"mtx": kit.deftrafo})
    for g, m in kit.smplx.items():
        arrays = _smplx_arrays(m)
        write_npz(out / f"smplx/SMPLX_{g}.npz", arrays, allow_pickle=True)
        if g == "NEUTRAL":
            legacy("smplx/SMPLX_NEUTRAL.pkl", {k: (v.item() if v.dtype == object else v) for k, v in arrays.items()})
    marker = {"kit": "pearl-synthetic", "kit_version": KIT_VERSION, "seed": int(seed)}
    write_bytes_atomic(out / MARKER_FILE, (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode())


def synthesize_kit(out_dir: Path | str, seed: int = 0) -> Path:
    """Write a complete synthetic body-model kit to ``out_dir`` (created if needed) and return it.

    Same seed, same bytes. The kit holds every file ``pearl assets check`` expects, in the official
    formats, plus ``PEARL_SYNTHETIC_KIT.json`` (seed, kit version) that marks it as synthetic.
    """
    out = Path(out_dir)
    write_kit(build_kit(seed), out, seed)
    return out
