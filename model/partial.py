"""Forward passes of a body model restricted to chosen vertices, for objectives that need only some.

Fitting rarely needs every vertex: mesh alignment is well determined by a spread subset, and 2D keypoint
fits need only the joints and a few vertex keypoints. :class:`PartialModel` runs
:class:`model.body_models.SkinnedModel`'s own pass (its :meth:`~model.body_models.SkinnedModel.skeleton`
for the joints and skinning transforms, then shape and pose blend shapes and linear blend skinning, the
functions of :mod:`model.body_models`) on the chosen rows only, so it costs ``K / V`` of a full pass in
the blend shapes and the skinning. Its vertices equal the full model's at the same indices (tested).
Parameters come in as the model's :meth:`~model.body_models.SkinnedModel.shape_coefficients` and
:meth:`~model.body_models.SkinnedModel.local_rotmats`.

:meth:`PartialModel.forward_with_jacobian` also returns the Jacobian of the posed vertices with respect to
the translation, right-multiplied rotation increments of chosen joints (``R_j <- R_j exp([delta_j]x)``)
and the first shape coefficients, in closed form: a rotation increment ``delta_j`` turns every joint of
``j``'s subtree about the posed joint ``P_j`` by ``omega = G_j delta_j`` (``G_j`` its world rotation), so
vertex ``v`` moves by ``omega x s_vj`` with ``s_vj = sum_{k in subtree(j)} w_vk (A_k v~_v - P_j)``
(``A_k`` the skinning transform, ``v~_v`` the rest point), i.e. ``d x_v / d delta_j = -[s_vj]x G_j``. Shape
coefficients move rest points and joints linearly and the posed joints along the chain. The derivative
of the pose blend shapes is left out (they are small, and a Gauss-Newton step only needs a descent
direction: the residual itself is exact).

:class:`LandmarkFLAME` is FLAME on the vertices its landmark embeddings and pupils touch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from model.body_models import FLAME, SkinnedModel, blend_skinning, linear_blend, pose_feature


def vertex_subset(used: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The sorted unique vertex ids of ``used  # [U]`` (``[K]``) and the map ``[size]`` from a full
    model's vertex ids to their positions among them (0 for vertices not used), as ``(ids, remap)``."""
    ids = torch.unique(used)
    remap = torch.zeros(size, dtype=torch.long, device=ids.device)
    remap[ids] = torch.arange(len(ids), device=ids.device)
    return ids, remap


class PartialModel(nn.Module):
    """A body model's forward pass on the vertices ``vertex_ids`` only (joints are always all computed).

    The model's buffers are sliced once here; ``.to(dtype / device)`` moves both.
    """

    def __init__(self, model: SkinnedModel, vertex_ids: Sequence[int] | np.ndarray | Tensor) -> None:
        super().__init__()
        ids = torch.as_tensor(np.asarray(vertex_ids), dtype=torch.int64).reshape(-1)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= model.num_vertices):
            raise ValueError(f"vertex_ids: must lie in [0, {model.num_vertices}), "
                             f"got {int(ids.min())}..{int(ids.max())}")
        self.model = model
        cols = (ids[:, None] * 3 + torch.arange(3)).reshape(-1)  # coordinates of the chosen rows
        self.register_buffer("vertex_ids", ids)
        self.register_buffer("v_template", model.v_template[ids].reshape(-1).clone())  # [K*3]
        self.register_buffer("shapedirs", model.shapedirs[:, cols].clone())  # [S, K*3]
        self.register_buffer("posedirs", model.posedirs[:, cols].clone())  # [P, K*3]
        self.register_buffer("lbs_weights", model.lbs_weights[ids].clone())  # [K, J]
        weights = self.lbs_weights
        width = max(int((weights > 0).sum(1).max()), 1) if len(ids) else 1
        top = torch.topk(weights, width, dim=1)
        self.register_buffer("skin_joints", top.indices)  # [K, M] joints with non-zero weight (padded)
        self.register_buffer("skin_weights", top.values)  # [K, M]
        parents = model.parents
        ancestor = torch.eye(len(parents), dtype=torch.bool)  # [j, k]: j is k or an ancestor of k
        for k in range(1, len(parents)):
            ancestor[:, k] |= ancestor[:, parents[k]]
        self.register_buffer("ancestor", ancestor)

    @property
    def num_vertices(self) -> int:
        return len(self.vertex_ids)

    def forward(
        self,
        coeffs: Tensor,  # [N, S] shape (and expression) coefficients, as SkinnedModel.shape_coefficients()
        local_rotmats: Tensor,  # [N, J, 3, 3], as SkinnedModel.local_rotmats()
        transl: Tensor,  # [N, 3]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Posed vertices ``[N, K, 3]``, joints ``[N, J, 3]`` and joint world rotations ``[N, J, 3, 3]``."""
        vertices, joints, world_rot, _, _ = self._pose(coeffs, local_rotmats, transl)
        return vertices, joints, world_rot

    def _pose(self, coeffs: Tensor, local_rotmats: Tensor, transl: Tensor) -> tuple[Tensor, ...]:
        n = coeffs.shape[0]
        skeleton = self.model.skeleton(coeffs, local_rotmats)
        terms = [(coeffs, self.shapedirs), (pose_feature(local_rotmats), self.posedirs)]
        rest = linear_blend(self.v_template, terms).reshape(n, -1, 3)
        vertices = blend_skinning(rest, self.lbs_weights, skeleton.transforms)
        shift = transl[:, None]
        return vertices + shift, skeleton.joints + shift, skeleton.world_rot, rest, skeleton.transforms

    def forward_with_jacobian(
        self,
        coeffs: Tensor,  # [N, S]
        local_rotmats: Tensor,  # [N, J, 3, 3]
        transl: Tensor,  # [N, 3]
        joints: Sequence[int],  # Q joints whose rotation increments are parameters
        num_coeffs: int,  # the first C shape coefficients are parameters
    ) -> tuple[Tensor, Tensor]:
        """Posed vertices ``[N, K, 3]`` and their Jacobian ``[N, K, 3, 3 + 3 Q + C]`` with respect to
        ``[transl, delta_q for q in joints, coeffs[:, :C]]`` (see the module docstring)."""
        vertices, posed, world_rot, rest, transforms = self._pose(coeffs, local_rotmats, transl)
        q = list(joints)
        # per vertex and skinning slot: A_k v~ (posed point as joint k alone would place it)
        slot_t = transforms[:, self.skin_joints]  # [N, K, M, 4, 3]
        moved = torch.einsum("nkmrc,nkr->nkmc", slot_t[..., :3, :], rest) + slot_t[..., 3, :]
        member = self.ancestor[q][:, self.skin_joints].permute(1, 2, 0)  # [K, M, Q]
        weighted = member * self.skin_weights[..., None]  # [K, M, Q]
        span = torch.einsum("kmq,nkmc->nkqc", weighted.to(moved.dtype), moved)
        span = span - weighted.sum(1).to(moved.dtype)[None, :, :, None] * (posed[:, q] - transl[:, None])[:, None]
        g_cols = world_rot[:, q].transpose(-1, -2)[:, None]  # [N, 1, Q, 3 (column), 3]
        d_rot = torch.linalg.cross(g_cols, span[..., None, :], dim=-1)  # [N, K, Q, 3 (column c), 3]: G_c x s
        d_rot = d_rot.transpose(-1, -2)  # [N, K, Q, 3 (xyz), 3 (increment component)]
        n, k = vertices.shape[:2]
        d_shape = self._shape_jacobian(coeffs, world_rot, num_coeffs)  # [N, K, 3, C]
        eye = torch.eye(3, dtype=vertices.dtype, device=vertices.device).expand(n, k, 3, 3)
        jac = torch.cat([eye, d_rot.permute(0, 1, 3, 2, 4).reshape(n, k, 3, -1), d_shape], dim=-1)
        return vertices, jac

    def _shape_jacobian(self, coeffs: Tensor, world_rot: Tensor, num_coeffs: int) -> Tensor:
        """``d x_v / d coeffs[:, :C]``, ``[N, K, 3, C]``: rotated shape directions plus the moved joints."""
        n, c = coeffs.shape[0], num_coeffs
        model = self.model
        jdirs = model.j_shapedirs[:c].reshape(c, -1, 3).permute(1, 2, 0)  # [J, 3, C] rest joints per coefficient
        posed = [jdirs[0].expand(n, 3, c)]  # d P_k / d coeffs, filled in joint order (parents first)
        for k in range(1, model.num_joints):
            p = model.parents[k]
            posed.append(posed[p] + world_rot[:, p] @ (jdirs[k] - jdirs[p]))
        d_posed = torch.stack(posed, dim=1)  # [N, J, 3, C]
        d_transl = d_posed - world_rot @ jdirs  # [N, J, 3, C]  d T_k
        w = self.lbs_weights
        blended_rot = torch.einsum("kj,njrc->nkrc", w, world_rot)  # [N, K, 3, 3]
        vdirs = self.shapedirs[:c].reshape(c, -1, 3).permute(1, 2, 0)  # [K, 3, C]
        return blended_rot @ vdirs + torch.einsum("kj,njrc->nkrc", w, d_transl)


class LandmarkFLAME:
    """FLAME evaluated on the vertices its landmark embeddings (68 points, MediaPipe points) and the pupils
    touch, through :class:`PartialModel` (a few hundred of 5023 vertices). Kits with eyelid blend shapes
    fall back to the full model (the partial pass has no eyelid term)."""

    def __init__(self, flame: FLAME, pupils: Tensor) -> None:
        """``pupils  # [2]``: FLAME vertex of each pupil (left, right)."""
        self.flame = flame
        faces = flame.faces
        used = torch.cat([faces[flame.static_lmk_faces].reshape(-1), faces[flame.dynamic_lmk_faces].reshape(-1),
                          faces[flame.mediapipe_lmk_faces].reshape(-1), pupils])
        ids, remap = vertex_subset(used, flame.num_vertices)
        self.faces = remap[faces]  # [F, 3] FLAME triangles in subset indices (unused ones point at 0)
        self.pupils = remap[pupils]
        self.all_pupils = pupils
        self.partial = None if flame.has_eyelids else PartialModel(flame, ids).to(flame.v_template)

    def __call__(
        self,
        shape: Tensor,  # [B, <=num_betas]
        expression: Tensor,  # [B, <=num_expression]
        jaw: Tensor,  # [B, 3]
        eyes: Tensor,  # [B, 6] left, right eye axis-angle
        eyelids: Tensor | None,  # [B, 2] (a FLAME with eyelid blend shapes only)
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Vertices relative to the eye midpoint ``[B, K, 3]`` (FLAME's own frame), the faces that index
        them ``[F, 3]`` and the pupils ``[2]`` among them."""
        flame = self.flame
        if self.partial is None:
            out = flame(betas=shape, expression=expression, jaw_pose=jaw, eye_pose=eyes, eyelids=eyelids)
            verts, joints, faces, pupils = out.vertices, out.joints, flame.faces, self.all_pupils
        else:
            n = shape.shape[0]
            coeffs = flame.shape_coefficients({"betas": shape, "expression": expression}, n)
            rotmats = flame.local_rotmats({"jaw_pose": jaw, "eye_pose": eyes}, n)
            verts, joints, _ = self.partial(coeffs, rotmats, torch.zeros_like(shape[:, :3]))
            faces, pupils = self.faces, self.pupils
        eye_mid = joints[:, [FLAME.LEFT_EYE, FLAME.RIGHT_EYE]].mean(1, keepdim=True)
        return verts - eye_mid, faces, pupils
