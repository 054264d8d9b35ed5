"""EHM: SMPL-X with a FLAME head and MANO hands, as GUAVA's EHM defines it.

Assembly, in the SMPL-X rest pose of the given ``betas``:

- **body**: SMPL-X vertices that are neither head nor hand keep SMPL-X's shape and pose blend shapes
  (pose blend shapes of the body joints 1..21 only: the SMPL-X jaw, eye and finger joints stay at
  zero in EHM, FLAME and MANO own those motions).
- **head**: every FLAME vertex replaces the SMPL-X vertex ``SMPL-X__FLAME_vertex_ids.npy`` names.
  FLAME is shaped (``flame_shape``, ``flame_expression``, ``flame_eyelids``) and posed in its own frame
  with only the parts it owns (jaw, eyes; its root and neck stay still), with FLAME's pose blend shapes
  of the jaw, the eyes and the neck (the neck one driven by the SMPL-X head joint's rotation), then
  scaled per axis by ``head_scale`` about the midpoint of its eye joints and moved so that this midpoint
  lands on the midpoint of the SMPL-X eye joints.
- **hands**: MANO (left model for the left hand) shaped by ``mano_betas`` and posed by
  ``mano_hand_pose`` with its root still, scaled by ``hand_scale`` about its wrist joint and moved onto
  the SMPL-X wrist joint; its vertices replace the ones ``MANO_SMPLX_vertex_ids.pkl`` names.

The assembled rest mesh is then skinned with SMPL-X's weights, with the jaw, eye and finger columns
folded into the head and wrist joints (their SMPL-X rotations are zero, so this is exact). The SMPL-X
chain therefore drives the head and hand rotations while FLAME drives the face and MANO the fingers.

Joints: 0..21 from the SMPL-X chain, 22..24 (jaw, eyes) the placed FLAME joints, 25..54 the placed
MANO finger joints, all posed with the mesh. Landmarks come from the head vertices through FLAME's
embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from model.assets.catalog import asset_file
from model.assets.loaders import load_mano_smplx_ids, load_smplx_flame_ids
from model.body_models import (
    FLAME,
    MANO,
    SMPLX,
    BodyModelOutput,
    ParamSpec,
    apply_affine,
    blend_skinning,
    flatten_params,
    linear_blend,
    pose_feature,
    KinematicTree,
    skinning_transforms,
    unflatten,
)
from model.rotations import rotvec_to_rotmat

HAND_SIDES = ("left", "right")
"""Order of the hand axis of ``mano_hand_pose``, ``mano_betas`` and ``hand_scale`` (as in the record)."""


def _fold_columns(weights: np.ndarray, parents: tuple[int, ...], keep: int) -> np.ndarray:
    """Skinning weights ``[V, J]`` with every joint ``>= keep`` folded into its nearest ancestor ``< keep``."""
    folded = weights[:, :keep].copy()
    for j in range(keep, weights.shape[1]):
        ancestor = parents[j]
        while ancestor >= keep:
            ancestor = parents[ancestor]
        folded[:, ancestor] += weights[:, j]
    return folded


def _vertex_columns(ids: np.ndarray) -> np.ndarray:
    """Columns of a flattened ``[V * 3]`` axis for the vertices ``ids``."""
    return (ids[:, None] * 3 + np.arange(3)).reshape(-1)


class EHM(nn.Module):
    """SMPL-X body + FLAME head + MANO hands (see the module docstring for the assembly)."""

    def __init__(
        self,
        smplx: SMPLX,
        flame: FLAME,
        mano_left: MANO,
        mano_right: MANO,
        flame_vertex_ids: np.ndarray,  # [5023] SMPL-X vertex of each FLAME vertex
        hand_vertex_ids: Mapping[str, np.ndarray],  # {"left_hand": [778], "right_hand": [778]}
    ) -> None:
        super().__init__()
        n_verts = smplx.num_vertices
        keep = SMPLX.NUM_BODY_JOINTS
        head_ids = np.asarray(flame_vertex_ids, dtype=np.int64).reshape(-1)
        parts = {"SMPL-X__FLAME_vertex_ids.npy": (head_ids, flame.num_vertices)}
        for side, mano in zip(HAND_SIDES, (mano_left, mano_right)):
            key = f"{side}_hand"
            if key not in hand_vertex_ids:
                raise ValueError(f"MANO_SMPLX_vertex_ids.pkl: no '{key}' entry (keys: {sorted(hand_vertex_ids)})")
            parts[f"MANO_SMPLX_vertex_ids.pkl['{key}']"] = (np.asarray(hand_vertex_ids[key], np.int64), mano.num_vertices)
        seen = np.zeros(n_verts, dtype=bool)
        for name, (ids, expected) in parts.items():
            if ids.shape != (expected,):
                raise ValueError(f"{name}: expected {expected} vertex ids, got shape {list(ids.shape)}")
            if ids.min() < 0 or ids.max() >= n_verts:
                raise ValueError(f"{name}: vertex ids must lie in [0, {n_verts}), got [{ids.min()}, {ids.max()}]")
            if len(np.unique(ids)) != len(ids) or seen[ids].any():
                raise ValueError(f"{name}: vertex ids repeat or overlap another part")
            seen[ids] = True
        self._check_tree(smplx.parents)
        body_ids = np.flatnonzero(~seen)
        order = np.concatenate([body_ids] + [ids for ids, _ in parts.values()])
        cols = _vertex_columns(body_ids)
        n_betas = smplx.shape_sizes["betas"]
        self.tree = KinematicTree(smplx.parents[:keep])
        self.num_betas = n_betas
        self.flame = flame
        self.mano_left = mano_left
        self.mano_right = mano_right
        # SMPL-X, restricted to what EHM uses: body vertices, betas, body joints
        self.register_buffer("body_template", smplx.v_template[body_ids])  # [Vb, 3]
        self.register_buffer("body_shapedirs", smplx.shapedirs[:n_betas, cols])  # [B, Vb*3]
        self.register_buffer("body_posedirs", smplx.posedirs[: 9 * (keep - 1), cols])  # [189, Vb*3]
        n_j = SMPLX.RIGHT_EYE + 1  # body joints, jaw and eyes
        self.register_buffer("j_template", smplx.j_template[:n_j].clone())  # [25, 3]
        j_dirs = smplx.j_shapedirs[:n_betas].reshape(n_betas, -1, 3)[:, :n_j].reshape(n_betas, -1)
        self.register_buffer("j_shapedirs", j_dirs)  # [B, 25*3]
        weights = _fold_columns(smplx.lbs_weights.double().numpy(), smplx.parents, keep)
        self.register_buffer("lbs_weights", torch.as_tensor(weights, dtype=smplx.lbs_weights.dtype))  # [V, 22]
        self.register_buffer("faces", smplx.faces)
        self.register_buffer("keypoint_ids", smplx.keypoint_ids)
        self.register_buffer("assembly", torch.as_tensor(np.argsort(order)))  # [V] into cat(body, head, hands)
        head, left, right = (torch.as_tensor(ids) for ids, _ in parts.values())
        self.register_buffer("head_vertex_ids", head)  # [5023] SMPL-X vertex of each FLAME vertex
        self.register_buffer("head_faces", head[flame.faces])  # [F, 3] FLAME's triangles in SMPL-X vertex ids
        self.register_buffer("left_hand_vertex_ids", left)  # [778] SMPL-X vertex of each left MANO vertex
        self.register_buffer("right_hand_vertex_ids", right)

    @staticmethod
    def _check_tree(parents: tuple[int, ...]) -> None:
        """The SMPL-X joints EHM hands over to FLAME / MANO must hang off the head and the wrists."""
        expected = {SMPLX.HEAD: range(22, 25), SMPLX.LEFT_WRIST: range(25, 40), SMPLX.RIGHT_WRIST: range(40, 55)}
        for anchor, joints in expected.items():
            for j in joints:
                a = parents[j]
                while a >= SMPLX.NUM_BODY_JOINTS:
                    a = parents[a]
                if a != anchor:
                    raise ValueError(f"SMPL-X kinematic tree: joint {j} should hang off joint {anchor}, not {a}")

    @classmethod
    def from_dir(
        cls,
        body_models: str | Path,
        gender: str = "neutral",
        num_betas: int = 10,
        num_flame_shape: int = 300,
        num_flame_expression: int = 100,
        num_mano_betas: int = 10,
        camera_frame: str = "opencv",
    ) -> EHM:
        """EHM from a body-model directory: SMPL-X (``gender``), FLAME, MANO left and right, and the
        correspondence files. ``camera_frame`` ("opencv" or "opengl") is the frame the parameters
        live in; it only decides which way the dynamic face contour looks."""
        smplx = SMPLX.from_dir(body_models, gender=gender, num_betas=num_betas, num_expression=0)
        flame = FLAME.from_dir(body_models, num_betas=num_flame_shape, num_expression=num_flame_expression,
                               camera_frame=camera_frame)
        manos = [MANO.from_dir(body_models, side=side, num_betas=num_mano_betas) for side in HAND_SIDES]
        flame_ids = load_smplx_flame_ids(asset_file(body_models, "smplx_flame_ids"))
        hand_ids = load_mano_smplx_ids(asset_file(body_models, "mano_smplx_ids"))
        return cls(smplx, flame, *manos, flame_ids, hand_ids)

    # -- parameters -------------------------------------------------------------------------------

    def param_specs(self) -> dict[str, ParamSpec]:
        """Keyword parameters of :meth:`forward`, with their trailing shapes."""
        return {
            "betas": ParamSpec((self.num_betas,), "SMPL-X shape coefficients", fewer_ok=True),
            "global_orient": ParamSpec((3,), "axis-angle, radians"),
            "body_pose": ParamSpec((21, 3), "axis-angle of SMPL-X joints 1..21, radians"),
            "transl": ParamSpec((3,), "translation, metres"),
            "mano_hand_pose": ParamSpec((2, 15, 3), "MANO finger axis-angle, [0] left, [1] right"),
            "mano_betas": ParamSpec((2, self.mano_left.shape_sizes["betas"]), "MANO shape coefficients per hand",
                                    fewer_ok=True),
            "hand_scale": ParamSpec((2,), "scale of each MANO hand, [0] left, [1] right", fill=1.0),
            "flame_shape": ParamSpec((self.flame.shape_sizes["betas"],), "FLAME shape coefficients", fewer_ok=True),
            "flame_expression": ParamSpec((self.flame.shape_sizes["expression"],), "FLAME expression coefficients",
                                          fewer_ok=True),
            "flame_jaw_pose": ParamSpec((3,), "FLAME jaw axis-angle, radians"),
            "flame_eye_pose": ParamSpec((6,), "FLAME left and right eye axis-angle, radians"),
            "flame_eyelids": ParamSpec((2,), "FLAME eyelid blend-shape weights, left and right"),
            "head_scale": ParamSpec((3,), "per-axis scale of the FLAME head", fill=1.0),
        }

    # -- parts ------------------------------------------------------------------------------------

    def _head(self, flat: Mapping[str, Tensor], rotmats: Tensor, eyelids_given: bool,
              smplx_eye_mid: Tensor) -> tuple[Tensor, Tensor]:
        """FLAME posed in its own frame, scaled and placed on the SMPL-X eyes (rest pose).

        rotmats         # [N, 55, 3, 3] local rotations in SMPL-X joint order (head 15, jaw 22, eyes 23-24)
        smplx_eye_mid   # [N, 1, 3] midpoint of the SMPL-X rest eye joints
        Returns head vertices ``[N, 5023, 3]`` and the jaw / eye joints ``[N, 3, 3]``.
        """
        flame = self.flame
        coeffs = torch.cat([flat["flame_shape"], flat["flame_expression"]], dim=-1)
        rest = flame.rest_joints(coeffs)  # [N, 5, 3]
        still = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device).expand(rotmats.shape[0], 1, 3, 3)
        own = rotmats[:, SMPLX.JAW : SMPLX.RIGHT_EYE + 1]  # jaw, left eye, right eye
        # pose blend shapes: FLAME's neck ones follow the SMPL-X head joint, which plays FLAME's neck
        blend = torch.cat([still, rotmats[:, SMPLX.HEAD, None], own], 1)
        eyelids = flat["flame_eyelids"] if eyelids_given else None
        points = flame.rest_points(coeffs, blend, *flame.eyelid_terms(eyelids, "flame_eyelids"))
        # FLAME's root and neck stay still: jaw and eyes turn about their own rest joints
        local = torch.cat([still, still, own], 1)
        vertices = blend_skinning(points, flame.lbs_weights, skinning_transforms(local, rest, rest))
        scale = flat["head_scale"][:, None]  # [N, 1, 3]
        offset = smplx_eye_mid - scale * rest[:, [FLAME.LEFT_EYE, FLAME.RIGHT_EYE]].mean(1, keepdim=True)
        return torch.addcmul(offset, scale, vertices), torch.addcmul(offset, scale, rest[:, FLAME.JAW :])

    def _hand(self, side: int, flat: Mapping[str, Tensor], rotmats: Tensor, wrist: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """MANO posed with its root still, scaled about its wrist and placed on the SMPL-X wrist.

        rotmats  # [N, 15, 3, 3] finger rotations
        wrist    # [N, 3] SMPL-X rest wrist joint
        Returns hand vertices ``[N, 778, 3]``, finger joints ``[N, 15, 3]`` and the finger rotations
        relative to the wrist ``[N, 15, 3, 3]``.
        """
        mano = (self.mano_left, self.mano_right)[side]
        still = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device).expand(rotmats.shape[0], 1, 3, 3)
        vertices, joints, world = mano.pose(flat["mano_betas"][:, side], torch.cat([still, rotmats], 1))
        scale = flat["hand_scale"][:, side, None, None]  # [N, 1, 1]
        offset = wrist[:, None] - scale * joints[:, :1]
        return torch.addcmul(offset, scale, vertices), torch.addcmul(offset, scale, joints[:, 1:]), world[:, 1:]

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        betas: Tensor | None = None,  # [..., <=num_betas] SMPL-X shape
        global_orient: Tensor | None = None,  # [..., 3]
        body_pose: Tensor | None = None,  # [..., 21, 3]
        transl: Tensor | None = None,  # [..., 3]
        mano_hand_pose: Tensor | None = None,  # [..., 2, 15, 3] [0] left, [1] right
        mano_betas: Tensor | None = None,  # [..., 2, <=10]
        hand_scale: Tensor | None = None,  # [..., 2] (default 1)
        flame_shape: Tensor | None = None,  # [..., <=300]
        flame_expression: Tensor | None = None,  # [..., <=100]
        flame_jaw_pose: Tensor | None = None,  # [..., 3]
        flame_eye_pose: Tensor | None = None,  # [..., 6] left eye, right eye
        flame_eyelids: Tensor | None = None,  # [..., 2] (needs the eyelid blend shapes in the kit)
        head_scale: Tensor | None = None,  # [..., 3] (default 1)
    ) -> BodyModelOutput:
        """Posed EHM meshes; parameters broadcast over their leading dims, missing ones are zero
        (scales one)."""
        given = dict(
            betas=betas, global_orient=global_orient, body_pose=body_pose, transl=transl,
            mano_hand_pose=mano_hand_pose, mano_betas=mano_betas, hand_scale=hand_scale, flame_shape=flame_shape,
            flame_expression=flame_expression, flame_jaw_pose=flame_jaw_pose, flame_eye_pose=flame_eye_pose,
            flame_eyelids=flame_eyelids, head_scale=head_scale,
        )
        batch, flat = flatten_params(self.param_specs(), given, self.body_template.dtype, self.body_template.device)
        n = flat["transl"].shape[0]
        keep = SMPLX.NUM_BODY_JOINTS
        # SMPL-X skeleton: rest joints of the shape, chain of the 22 body joints
        rest = self.j_template + (flat["betas"] @ self.j_shapedirs).reshape(n, -1, 3)  # [N, 25, 3]
        # every local rotation at once, in SMPL-X joint order: body 0-21, jaw 22, eyes 23-24, fingers 25-54
        rotvecs = [flat["global_orient"][:, None], flat["body_pose"], flat["flame_jaw_pose"][:, None],
                   flat["flame_eye_pose"].reshape(n, 2, 3), flat["mano_hand_pose"].reshape(n, 30, 3)]
        rotmats = rotvec_to_rotmat(torch.cat(rotvecs, 1))  # [N, 55, 3, 3]
        local = rotmats[:, :keep]
        world_rot, joints = self.tree.chain(local, rest[:, :keep])
        transforms = skinning_transforms(world_rot, joints, rest[:, :keep])  # [N, 22, 4, 3]
        terms = [(flat["betas"], self.body_shapedirs), (pose_feature(local), self.body_posedirs)]
        body = linear_blend(self.body_template.reshape(-1), terms).reshape(n, -1, 3)
        eye_mid = rest[:, [SMPLX.LEFT_EYE, SMPLX.RIGHT_EYE]].mean(1, keepdim=True)
        head, head_joints = self._head(flat, rotmats, flame_eyelids is not None, eye_mid)
        hands = [self._hand(side, flat, rotmats[:, 25 + 15 * side : 40 + 15 * side], rest[:, wrist])
                 for side, wrist in enumerate((SMPLX.LEFT_WRIST, SMPLX.RIGHT_WRIST))]
        rest_mesh = torch.cat([body, head, hands[0][0], hands[1][0]], dim=1).index_select(1, self.assembly)
        shift = flat["transl"][:, None]
        vertices = blend_skinning(rest_mesh, self.lbs_weights, transforms) + shift
        # joints and rotations of the parts FLAME and MANO own ride on the head and wrist transforms
        anchors = (SMPLX.HEAD, SMPLX.LEFT_WRIST, SMPLX.RIGHT_WRIST)
        part_joints = [head_joints, hands[0][1], hands[1][1]]
        part_rots = [rotmats[:, SMPLX.JAW : SMPLX.RIGHT_EYE + 1], hands[0][2], hands[1][2]]
        all_joints = torch.cat(
            [joints] + [apply_affine(transforms[:, a, None], p) for a, p in zip(anchors, part_joints)], dim=1
        ) + shift
        all_rots = torch.cat([world_rot] + [world_rot[:, a, None] @ r for a, r in zip(anchors, part_rots)], dim=1)
        lmk68, lmk_mp = self.flame.face_landmarks(vertices, world_rot[:, SMPLX.HEAD], self.head_faces)
        return BodyModelOutput(
            vertices=unflatten(vertices, batch),
            joints=unflatten(all_joints, batch),
            joint_rotations=unflatten(all_rots, batch),
            keypoints=unflatten(vertices.index_select(1, self.keypoint_ids), batch),
            faces=self.faces,
            landmarks68=unflatten(lmk68, batch),
            landmarks_mediapipe=unflatten(lmk_mp, batch),
        )
