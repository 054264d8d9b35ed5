"""EHM with rigid parts: a cheap stand-in for :class:`model.ehm.EHM` in objectives that read a few points.

EHM skins its head and hand vertices with SMPL-X weights that put them (all hand vertices; the head's
face, i.e. the FLAME vertices whose head-joint weight is about 1) on the head / wrist joint alone, and
adds FLAME's neck pose blend shape driven by the head joint. :class:`RigidPartsEHM` poses the SMPL-X
skeleton and the body's vertex keypoints with :class:`model.partial.PartialModel` and carries the FLAME
head and the MANO hands, each posed in its own frame, rigidly with the head and wrist joints; it leaves
the neck blend shape out. Joints 0..21 are EHM's exactly; the parts agree to about a millimetre (tested
in ``tests/model/test_ehm_rigid.py``). A full EHM pass skins all 10,475 vertices and repeats FLAME's
whole blend-shape product every iteration; this one moves a few hundred points per part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from model.body_models import FLAME, SMPLX
from model.ehm import EHM
from model.partial import PartialModel, vertex_subset

_WRISTS = (SMPLX.LEFT_WRIST, SMPLX.RIGHT_WRIST)


@dataclass(frozen=True)
class RigidPartsOutput:
    """What :class:`RigidPartsEHM` poses (in the frame of ``transl`` and the root rotation)."""

    joints: Tensor
    """[B, 55, 3] EHM joints: SMPL-X body 0..21, FLAME jaw / eyes 22..24, MANO fingers 25..54."""
    keypoints: Tensor
    """[B, 21, 3] smplx's vertex keypoints."""
    landmarks68: Tensor
    """[B, 68, 3] FLAME's 68 landmarks."""
    head: Tensor
    """[B, K, 3] the FLAME vertices ``head_ids`` given to :class:`RigidPartsEHM`."""
    hands: tuple[Tensor, Tensor]
    """Left and right MANO vertices ``hand_ids``, each [B, H, 3]."""


class RigidPartsEHM:
    """EHM's skeleton, vertex keypoints, face landmarks and chosen head / hand vertices with the head and
    hands carried rigidly (see the module docstring), evaluated on the vertices it reports only."""

    def __init__(self, ehm: EHM, smplx: SMPLX, head_ids: Tensor, hand_ids: Tensor) -> None:
        """``smplx``: the SMPL-X ``ehm`` was assembled from (same dtype and device); ``head_ids``: FLAME
        vertices to report in :attr:`RigidPartsOutput.head`; ``hand_ids``: MANO vertices to report in
        :attr:`RigidPartsOutput.hands` (both hands)."""
        if smplx.num_vertices != ehm.lbs_weights.shape[0] or smplx.shape_sizes["betas"] != ehm.num_betas:
            raise ValueError("smplx: must be the SMPL-X model EHM was assembled from (same mesh and betas)")
        self.ehm, self.smplx = ehm, smplx
        flame, manos = ehm.flame, (ehm.mano_left, ehm.mano_right)
        lookups = {"head": ehm.head_vertex_ids, "left": ehm.left_hand_vertex_ids, "right": ehm.right_hand_vertex_ids}
        kp_owner: list[tuple[str, int]] = []  # (part, vertex of the part) of every SMPL-X vertex keypoint
        for vid in ehm.keypoint_ids.tolist():
            part = next((p for p, ids in lookups.items() if bool((ids == vid).any())), "body")
            index = vid if part == "body" else int(torch.nonzero(lookups[part] == vid)[0, 0])
            kp_owner.append((part, index))
        body_ids = [i for p, i in kp_owner if p == "body"]
        head_kp = torch.tensor([i for p, i in kp_owner if p == "head"], dtype=torch.long)
        lmk = torch.cat([flame.faces[flame.static_lmk_faces].reshape(-1), flame.faces[flame.dynamic_lmk_faces].reshape(-1)])
        head_used, head_remap = vertex_subset(torch.cat([head_ids.cpu(), lmk.cpu(), head_kp]), flame.num_vertices)
        hand_kp = {side: torch.tensor([i for p, i in kp_owner if p == side], dtype=torch.long) for side in ("left", "right")}
        ref = ehm.body_template
        self.head_used = head_used.to(ref.device)
        self.head_out = head_remap[head_ids.cpu()].to(ref.device)
        self.head_faces = head_remap[flame.faces.cpu()].to(ref.device)
        self.hand_models, self.hand_out, remaps = [], [], {}
        for side, mano in zip(("left", "right"), manos):
            used, remap = vertex_subset(torch.cat([hand_ids.cpu(), hand_kp[side]]), mano.num_vertices)
            self.hand_models.append(PartialModel(mano, used).to(ref))
            self.hand_out.append(remap[hand_ids.cpu()].to(ref.device))
            remaps[side] = remap
        remaps["head"] = head_remap
        self.kp_source = [(p, body_ids.index(i)) if p == "body" else (p, int(remaps[p][i])) for p, i in kp_owner]
        """(part, row of the part's output) of every vertex keypoint."""
        self.skeleton = PartialModel(smplx, body_ids).to(ref)

    def head_frame(self, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """FLAME posed in its own frame, relative to the midpoint of its eyes: the vertices this model uses
        ``[B, K, 3]`` and the jaw / eye joints ``[B, 3, 3]`` (constant while the FLAME parameters are).
        ``params``: EHM parameters by :meth:`model.ehm.EHM.forward` name (the ``flame_*`` ones are read)."""
        flame = self.ehm.flame
        eyelids = params.get("flame_eyelids") if flame.has_eyelids else None
        out = flame(betas=params["flame_shape"], expression=params["flame_expression"],
                    jaw_pose=params["flame_jaw_pose"], eye_pose=params["flame_eye_pose"], eyelids=eyelids)
        eyes = out.joints[:, [FLAME.LEFT_EYE, FLAME.RIGHT_EYE]].mean(1, keepdim=True)
        return out.vertices[:, self.head_used] - eyes, out.joints[:, FLAME.JAW:] - eyes

    def hand_frame(self, mano_betas: Tensor, hand_pose: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each MANO hand posed with its root still, relative to its wrist: the vertices this model uses
        ``[B, H, 3]`` and the finger joints ``[B, 15, 3]`` (``mano_betas  # [B, 2, <=10]``,
        ``hand_pose  # [B, 2, 15, 3]``)."""
        out = []
        n = mano_betas.shape[0]
        for side, model in enumerate(self.hand_models):
            mano = model.model
            coeffs = mano.shape_coefficients({"betas": mano_betas[:, side]}, n)
            rotmats = mano.local_rotmats({"hand_pose": hand_pose[:, side]}, n)
            verts, joints, _ = model(coeffs, rotmats, torch.zeros_like(coeffs[:, :3]))
            out.append((verts - joints[:, :1], joints[:, 1:] - joints[:, :1]))
        return out

    def __call__(
        self,
        betas: Tensor,  # [B, 10]
        global_rotmat: Tensor,  # [B, 3, 3]
        body_pose: Tensor,  # [B, 21, 3]
        transl: Tensor,  # [B, 3]
        head_scale: Tensor,  # [B, 3]
        hand_scale: Tensor,  # [B, 2]
        head: tuple[Tensor, Tensor],  # from head_frame()
        hands: list[tuple[Tensor, Tensor]],  # from hand_frame()
    ) -> RigidPartsOutput:
        n = betas.shape[0]
        coeffs = self.smplx.shape_coefficients({"betas": betas}, n)
        local = self.smplx.local_rotmats({"body_pose": body_pose}, n)
        local = torch.cat([global_rotmat[:, None], local[:, 1:]], 1)
        body_kp, joints, world = self.skeleton(coeffs, local, transl)
        rest = self.smplx.rest_joints(coeffs)

        def place(anchor: int, points: Tensor) -> Tensor:
            """Rest-frame ``points  # [B, K, 3]`` posed rigidly with joint ``anchor``."""
            return (points - rest[:, anchor, None]) @ world[:, anchor].transpose(-1, -2) + joints[:, anchor, None]

        eye_mid = rest[:, [SMPLX.LEFT_EYE, SMPLX.RIGHT_EYE]].mean(1, keepdim=True)
        head_verts = place(SMPLX.HEAD, head[0] * head_scale[:, None] + eye_mid)
        head_joints = place(SMPLX.HEAD, head[1] * head_scale[:, None] + eye_mid)
        placed = []
        for side, wrist in enumerate(_WRISTS):
            s = hand_scale[:, side, None, None]
            placed.append([place(wrist, part * s + rest[:, wrist, None]) for part in hands[side]])
        parts = {"body": body_kp, "head": head_verts, "left": placed[0][0], "right": placed[1][0]}
        keypoints = torch.stack([parts[part][:, i] for part, i in self.kp_source], 1)
        landmarks68, _ = self.ehm.flame.face_landmarks(head_verts, world[:, SMPLX.HEAD], self.head_faces)
        all_joints = torch.cat([joints[:, : SMPLX.NUM_BODY_JOINTS], head_joints, placed[0][1], placed[1][1]], 1)
        hands_out = tuple(placed[side][0][:, self.hand_out[side]] for side in (0, 1))
        return RigidPartsOutput(all_joints, keypoints, landmarks68, head_verts[:, self.head_out], hands_out)
