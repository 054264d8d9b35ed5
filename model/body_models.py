"""SMPL, SMPL-X, FLAME and MANO: batched forward passes with any leading batch dimensions.

Each model is a ``torch.nn.Module`` built from the arrays of an official model file (loaded by
:mod:`model.assets.loaders`, never by unpickling here). ``forward`` takes the parameters as keyword
tensors named as in the record schema (``betas``, ``global_orient``, ``body_pose`` ... without the
``smplx_`` prefix), all axis-angle in radians, with any leading batch dimensions that broadcast
together; a parameter left out is zero. It returns a :class:`BodyModelOutput` with the same leading
dimensions. ``module.to(torch.float64)`` / ``.to("cuda")`` move the whole model; parameters must then
have the model's dtype and device.

The math follows smplx's ``lbs`` exactly (shape blend shapes, joints regressed from the shaped
template, pose blend shapes from ``R - I`` of every non-root joint, linear blend skinning), with the
joint regressor folded into the shape basis once so that joints cost ``J x S`` instead of ``J x V``.
Hands use the flat hand as zero pose (smplx's ``flat_hand_mean=True``) and full axis-angle, no PCA.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS
from torch import Tensor, nn

from model.assets.catalog import asset_file
from model.assets.loaders import (
    BodyModelData,
    LandmarkEmbedding,
    load_body_model,
    load_flame_dynamic_embedding,
    load_flame_static_embedding,
    load_mediapipe_embedding,
    read_asset,
)
from model.rotations import rotvec_to_rotmat

SMPLX_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "reye", "leye", "rear", "lear",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb", "rindex", "rmiddle", "rring", "rpinky",
)
"""Vertex keypoints of SMPL and SMPL-X, in smplx's order (the 21 "extra joints" after the skeleton)."""

MANO_KEYPOINT_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
"""Fingertip vertex keypoints of MANO, in smplx's order."""

CAMERA_FRAMES = ("opencv", "opengl")
"""Frames a posed face can be expressed in: OpenCV camera (x right, y down, z forward) or
OpenGL / smplx's (x right, y up, camera looking down -z). Only the dynamic face contour depends on it."""

# Rotation that maps OpenCV camera coordinates to OpenGL ones (flip y and z).
_CV_TO_GL = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


@dataclasses.dataclass(frozen=True)
class BodyModelOutput:
    """A posed mesh; every tensor has the parameters' leading batch dimensions ``...``."""

    vertices: Tensor
    """[..., V, 3] posed vertices (model units: metres)."""
    joints: Tensor
    """[..., J, 3] posed skeleton joints, in the model's joint order."""
    joint_rotations: Tensor
    """[..., J, 3, 3] world rotation of every joint (the product of rotations down its chain)."""
    keypoints: Tensor
    """[..., K, 3] vertices picked as extra keypoints (:data:`SMPLX_KEYPOINT_NAMES` / :data:`MANO_KEYPOINT_NAMES`;
    K = 0 for FLAME)."""
    faces: Tensor
    """[F, 3] triangle vertex indices (int64), shared by every mesh in the batch."""
    landmarks68: Tensor | None = None
    """[..., 68, 3] FLAME face landmarks in iBUG-68 order (17 dynamic contour points, then 51 static ones);
    FLAME and EHM only."""
    landmarks_mediapipe: Tensor | None = None
    """[..., 105, 3] FLAME points of MediaPipe face-mesh landmarks (FLAME and EHM; their MediaPipe
    face-mesh indices are ``FLAME.mediapipe_landmark_indices``)."""


# --------------------------------------------------------------------------------------------------
# Pure functions: the math, apart from any file loading
# --------------------------------------------------------------------------------------------------


def kinematic_levels(parents: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Group the non-root joints of a kinematic tree by depth: ``[(joints, their parents), ...]``.

    parents  # [J] parent index per joint, -1 at the root (joint 0); parents come before children
    """
    depth = [0] * len(parents)
    levels: dict[int, tuple[list[int], list[int]]] = {}
    for j, p in enumerate(parents):
        if j == 0:
            if p != -1:
                raise ValueError(f"parents: joint 0 must be the root (parent -1), got parent {p}")
            continue
        if not 0 <= p < j:
            raise ValueError(f"parents: joint {j} has parent {p}; parents must come before their children")
        depth[j] = depth[p] + 1
        joints, pars = levels.setdefault(depth[j], ([], []))
        joints.append(j)
        pars.append(p)
    return [levels[d] for d in sorted(levels)]


class KinematicTree(nn.Module):
    """A kinematic tree, its joints grouped by depth so that the chain costs one step per level."""

    def __init__(self, parents: Sequence[int]) -> None:
        super().__init__()
        self.parents = tuple(int(p) for p in parents)
        self._depth = 0
        for i, (joints, pars) in enumerate(kinematic_levels(self.parents)):
            self.register_buffer(f"joints{i}", torch.tensor(joints), persistent=False)
            self.register_buffer(f"parents{i}", torch.tensor(pars), persistent=False)
            self._depth = i + 1

    def chain(
        self,
        local_rotmats: Tensor,  # [N, J, 3, 3] rotation of each joint relative to its parent
        rest_joints: Tensor,  # [N, J, 3] joint positions in the rest pose
    ) -> tuple[Tensor, Tensor]:
        """World rotations ``[N, J, 3, 3]`` and posed positions ``[N, J, 3]`` of every joint (root fixed)."""
        world_rot = local_rotmats
        posed = rest_joints
        for i in range(self._depth):
            joints, parents = getattr(self, f"joints{i}"), getattr(self, f"parents{i}")
            parent_rot = world_rot[:, parents]
            offset = rest_joints[:, joints] - rest_joints[:, parents]
            world_rot = world_rot.index_copy(1, joints, parent_rot @ local_rotmats[:, joints])
            posed = posed.index_copy(1, joints, posed[:, parents] + (parent_rot @ offset[..., None])[..., 0])
        return world_rot, posed


def skinning_transforms(
    world_rot: Tensor,  # [N, J, 3, 3]
    posed_joints: Tensor,  # [N, J, 3]
    rest_joints: Tensor,  # [N, J, 3]
) -> Tensor:
    """Per-joint affine maps from rest-pose to posed coordinates, ``[N, J, 4, 3]``.

    Row-vector form: ``x' = [x, 1] @ M``, i.e. rows 0..2 are the columns of the rotation ``R`` and
    row 3 is the translation ``t = posed - R rest`` (``x' = R x + t``).
    """
    t = posed_joints - (world_rot @ rest_joints[..., None])[..., 0]
    return torch.cat([world_rot.transpose(-1, -2), t[..., None, :]], dim=-2)


def apply_affine(transforms: Tensor, points: Tensor) -> Tensor:
    """``[x, 1] @ M`` for ``transforms  # [..., 4, 3]`` (as :func:`skinning_transforms`) and ``points  # [..., 3]``."""
    out = torch.addcmul(transforms[..., 3, :], transforms[..., 0, :], points[..., 0:1])
    out = torch.addcmul(out, transforms[..., 1, :], points[..., 1:2])
    return torch.addcmul(out, transforms[..., 2, :], points[..., 2:3])


def blend_skinning(
    points: Tensor,  # [N, V, 3] rest-pose points (after blend shapes)
    weights: Tensor,  # [V, J] skinning weights
    transforms: Tensor,  # [N, J, 4, 3] from skinning_transforms()
) -> Tensor:
    """Linear blend skinning: ``sum_j w_vj (R_j x_v + t_j)``, returns ``[N, V, 3]``."""
    n, j = transforms.shape[:2]
    return apply_affine((weights @ transforms.reshape(n, j, 12)).reshape(n, -1, 4, 3), points)


def pose_feature(local_rotmats: Tensor) -> Tensor:
    """Pose blend-shape features ``[N, 9 (J - 1)]``: ``R - I`` of every joint but the root.

    local_rotmats  # [N, J, 3, 3]
    """
    eye = torch.eye(3, dtype=local_rotmats.dtype, device=local_rotmats.device)
    return (local_rotmats[:, 1:] - eye).reshape(local_rotmats.shape[0], -1)


def linear_blend(base: Tensor, terms: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """``base + sum_i coeffs_i @ basis_i`` as fused multiply-adds, ``[N, D]``.

    base   # [D] (or [N, D])
    terms  # (coeffs [N, K_i], basis [K_i, D]) pairs
    """
    out = base
    for coeffs, basis in terms:
        out = torch.addmm(out, coeffs, basis)
    return out


def barycentric_points(
    vertices: Tensor,  # [N, V, 3]
    faces: Tensor,  # [F, 3] int64
    face_index: Tensor,  # [N, L] or [L] int64
    bary: Tensor,  # [N, L, 3] or [L, 3]
) -> Tensor:
    """Points on mesh triangles from barycentric coordinates, ``[N, L, 3]``."""
    n = vertices.shape[0]
    corners = faces[face_index].expand(n, -1, 3)  # [N, L, 3]
    picked = torch.gather(vertices, 1, corners.reshape(n, -1, 1).expand(-1, -1, 3)).reshape(n, -1, 3, 3)
    return (picked * bary.expand(n, -1, 3)[..., None]).sum(-2)


def contour_lut_index(
    head_rotation: Tensor,  # [N, 3, 3] world rotation of the head (FLAME's neck joint)
    camera_frame: str,
) -> Tensor:
    """Row ``[N]`` of FLAME's dynamic-contour look-up table for each head's yaw.

    The table (``flame_dynamic_embedding.npy``, 79 rows) is indexed by the yaw in whole degrees:
    rows 0..39 for 0..39 degrees, rows 40..78 for -1..-39 degrees, as smplx's
    ``find_dynamic_lmk_idx_and_bcoords`` reads it. The yaw is taken relative to a camera on the +z
    axis of the OpenGL frame; a head posed in the OpenCV camera frame is flipped into it first.
    """
    if camera_frame == "opencv":
        head_rotation = _CV_TO_GL.to(head_rotation) @ head_rotation
    r = head_rotation.detach()
    pitch_free = torch.hypot(r[:, 0, 0], r[:, 1, 0])
    yaw = torch.round(torch.rad2deg(torch.atan2(r[:, 2, 0], pitch_free))).clamp(max=39)
    return torch.where(yaw < 0, (39 - yaw).clamp(max=78), yaw).long()


# --------------------------------------------------------------------------------------------------
# Parameters at the public boundary
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One keyword parameter of a forward pass."""

    shape: tuple[int, ...]
    """Trailing shape (after the batch dimensions)."""
    doc: str
    """What it is, for error messages."""
    fill: float = 0.0
    """Value used when the parameter is left out."""
    fewer_ok: bool = False
    """Coefficient vectors: the last dimension may be shorter (the rest is zero)."""


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(["..."] + [str(s) for s in shape]) + "]"


def flatten_params(
    specs: Mapping[str, ParamSpec],
    given: Mapping[str, Tensor | None],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Size, dict[str, Tensor]]:
    """Check parameters against their specs, broadcast their batch dims and flatten them to ``[N, ...]``.

    Returns the common batch shape and every spec'd parameter as ``[N, *spec.shape]`` (left-out ones
    filled, short coefficient vectors zero-padded). Raises ``ValueError`` naming the bad tensor.
    """
    batch_shapes = {}
    for name, value in given.items():
        if value is None:
            continue
        spec = specs[name]
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of shape {_shape_text(spec.shape)}, got {type(value)}")
        k = len(spec.shape)
        trailing = tuple(value.shape[value.dim() - k:]) if value.dim() >= k else None
        ok = trailing is not None and (
            trailing == spec.shape
            or (spec.fewer_ok and trailing[:-1] == spec.shape[:-1] and trailing[-1] <= spec.shape[-1])
        )
        if not ok:
            fewer = f" (last dimension at most {spec.shape[-1]})" if spec.fewer_ok else ""
            raise ValueError(
                f"{name}: expected shape {_shape_text(spec.shape)}{fewer} ({spec.doc}), got {list(value.shape)}"
            )
        if value.dtype != dtype:
            raise ValueError(
                f"{name}: dtype {value.dtype} does not match the model's {dtype}; cast the tensor or move the "
                f"model with .to({dtype})"
            )
        if value.device != device:
            raise ValueError(f"{name}: on {value.device} but the model is on {device}; move one of them")
        batch_shapes[name] = value.shape[: value.dim() - k]
    try:
        batch = torch.broadcast_shapes(*batch_shapes.values()) if batch_shapes else torch.Size()
    except RuntimeError:
        listed = ", ".join(f"{n} {list(s)}" for n, s in batch_shapes.items())
        raise ValueError(f"parameters have batch dimensions that do not broadcast together: {listed}") from None
    n = math.prod(batch)
    flat = {}
    for name, spec in specs.items():
        value = given.get(name)
        if value is None:
            flat[name] = torch.full((n, *spec.shape), spec.fill, dtype=dtype, device=device)
            continue
        missing = spec.shape[-1] - value.shape[-1] if spec.shape else 0
        if missing:
            value = torch.nn.functional.pad(value, (0, missing))
        flat[name] = value.expand(*batch, *spec.shape).reshape(n, *spec.shape)
    return batch, flat


def unflatten(tensor: Tensor, batch: torch.Size) -> Tensor:
    """``[N, ...]`` back to ``[*batch, ...]``."""
    return tensor.reshape(*batch, *tensor.shape[1:])


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------


def _buffer(array: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)


class PosedSkeleton(NamedTuple):
    """A posed kinematic tree and the skinning transforms it gives (:meth:`SkinnedModel.skeleton`)."""

    rest_joints: Tensor
    """[N, J, 3] joints of the shaped rest pose."""
    world_rot: Tensor
    """[N, J, 3, 3] world rotation of every joint."""
    joints: Tensor
    """[N, J, 3] posed joints."""
    transforms: Tensor
    """[N, J, 4, 3] rest-to-posed affine maps (:func:`skinning_transforms`)."""


class SkinnedModel(nn.Module):
    """Shared machinery of SMPL, SMPL-X, FLAME and MANO: buffers, parameter layout, forward.

    Subclasses set :attr:`POSE_LAYOUT` (pose parameters in joint order with their joint counts) and
    :attr:`KEYPOINT_IDS` / :attr:`KEYPOINT_NAMES`, and pass the ``shapedirs`` columns of each
    coefficient parameter (in basis order) to ``__init__``.
    """

    NAME = "model"
    POSE_LAYOUT: tuple[tuple[str, int], ...] = ()
    KEYPOINT_IDS: Mapping[str, int] = {}
    KEYPOINT_NAMES: tuple[str, ...] = ()

    def __init__(self, arrays: BodyModelData, shape_columns: Mapping[str, Sequence[int]]) -> None:
        """``arrays``: the model file as :func:`model.assets.loaders.load_body_model` reads it;
        ``shape_columns``: for each coefficient parameter, the ``shapedirs`` columns it drives."""
        super().__init__()
        n_verts = arrays.v_template.shape[0]
        n_joints = len(arrays.parents)
        n_pose = sum(count for _, count in self.POSE_LAYOUT)
        if n_pose != n_joints:
            raise ValueError(f"{self.NAME}: the model file has {n_joints} joints, expected {n_pose}")
        columns = [c for cols in shape_columns.values() for c in cols]
        basis = arrays.shapedirs[:, :, columns]  # [V, 3, S]
        self.shape_sizes = {name: len(cols) for name, cols in shape_columns.items()}
        self.parents = tuple(int(p) for p in arrays.parents)
        self.tree = KinematicTree(self.parents)
        self.register_buffer("v_template", _buffer(arrays.v_template))
        self.register_buffer("faces", _buffer(arrays.faces, torch.int64))
        self.register_buffer("shapedirs", _buffer(basis.reshape(n_verts * 3, -1).T))  # [S, V*3]
        self.register_buffer("posedirs", _buffer(arrays.posedirs.reshape(n_verts * 3, -1).T))  # [P, V*3]
        self.register_buffer("lbs_weights", _buffer(arrays.weights))  # [V, J]
        self.register_buffer("j_template", _buffer(arrays.j_regressor @ arrays.v_template))  # [J, 3]
        j_dirs = np.einsum("jv,vcs->sjc", arrays.j_regressor, basis).reshape(len(columns), n_joints * 3)
        self.register_buffer("j_shapedirs", _buffer(j_dirs))  # [S, J*3]
        ids = [self.KEYPOINT_IDS[name] for name in self.KEYPOINT_NAMES]
        if any(i >= n_verts for i in ids):
            raise ValueError(f"{self.NAME}: keypoint vertex ids {ids} do not fit a mesh of {n_verts} vertices")
        self.register_buffer("keypoint_ids", torch.tensor(ids, dtype=torch.int64))

    # -- introspection ----------------------------------------------------------------------------

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    def param_specs(self) -> dict[str, ParamSpec]:
        """Keyword parameters of :meth:`forward` and their trailing shapes."""
        specs = {name: ParamSpec((size,), "coefficients", fewer_ok=True) for name, size in self.shape_sizes.items()}
        for name, count in self.POSE_LAYOUT:
            shape = (3,) if count == 1 else (count, 3)
            specs[name] = ParamSpec(shape, "axis-angle, radians")
        specs["transl"] = ParamSpec((3,), "translation, metres")
        return specs

    # -- the forward pass -------------------------------------------------------------------------

    def _flatten(self, given: Mapping[str, Tensor | None]) -> tuple[torch.Size, dict[str, Tensor]]:
        return flatten_params(self.param_specs(), given, self.v_template.dtype, self.v_template.device)

    def shape_coefficients(self, coeffs: Mapping[str, Tensor], batch: int) -> Tensor:
        """Concatenated shape (and expression) coefficients ``[N, S]`` in the basis order of :attr:`shape_sizes`.

        coeffs  # name -> [N, <=size] for the names of ``shape_sizes``; missing or short ones are zero-padded
        """
        ref = self.v_template
        parts = []
        for name, size in self.shape_sizes.items():
            value = coeffs.get(name)
            if value is None:
                value = torch.zeros(batch, size, dtype=ref.dtype, device=ref.device)
            elif value.shape[-1] < size:
                value = torch.nn.functional.pad(value, (0, size - value.shape[-1]))
            parts.append(value)
        return torch.cat(parts, dim=-1)

    def local_rotmats(self, rotvecs: Mapping[str, Tensor], batch: int) -> Tensor:
        """Local joint rotations ``[N, J, 3, 3]`` from the pose parameters of :attr:`POSE_LAYOUT` (axis-angle),
        in joint order.

        rotvecs  # name -> [N, 3] or [N, count, 3] for the names of ``POSE_LAYOUT``; missing ones are zero
        """
        ref = self.v_template
        parts = []
        for name, count in self.POSE_LAYOUT:
            value = rotvecs.get(name)
            if value is None:
                parts.append(torch.zeros(batch, count, 3, dtype=ref.dtype, device=ref.device))
            else:
                parts.append(value.reshape(batch, count, 3))
        unknown = set(rotvecs) - {name for name, _ in self.POSE_LAYOUT}
        if unknown:
            raise KeyError(f"{self.NAME} has no pose parameter(s) {sorted(unknown)}")
        return rotvec_to_rotmat(torch.cat(parts, dim=1))

    def _shape_and_pose(self, flat: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Coefficients ``[N, S]`` and local rotations ``[N, J, 3, 3]`` of flattened parameters (every name given)."""
        n = flat["transl"].shape[0]
        coeffs = self.shape_coefficients({name: flat[name] for name in self.shape_sizes}, n)
        return coeffs, self.local_rotmats({name: flat[name] for name, _ in self.POSE_LAYOUT}, n)

    def rest_joints(self, coeffs: Tensor) -> Tensor:
        """Rest-pose joints of shaped models, ``[N, J, 3]`` (``coeffs  # [N, S]``)."""
        return self.j_template + (coeffs @ self.j_shapedirs).reshape(-1, self.num_joints, 3)

    def rest_points(self, coeffs: Tensor, local_rotmats: Tensor, *extra: tuple[Tensor, Tensor]) -> Tensor:
        """Rest-pose vertices with shape, pose and ``extra`` (coefficients, basis) blend shapes, ``[N, V, 3]``.

        coeffs         # [N, S] shape (and expression) coefficients
        local_rotmats  # [N, J, 3, 3] joint rotations relative to their parents
        extra          # ([N, K], [K, V*3]) pairs, e.g. FLAME's eyelids
        """
        terms = [(coeffs, self.shapedirs), (pose_feature(local_rotmats), self.posedirs), *extra]
        return linear_blend(self.v_template.reshape(-1), terms).reshape(-1, self.num_vertices, 3)

    def pose(
        self,
        coeffs: Tensor,  # [N, S]
        local_rotmats: Tensor,  # [N, J, 3, 3]
        *extra: tuple[Tensor, Tensor],  # further blend shapes, as rest_points()
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Vertices ``[N, V, 3]``, joints ``[N, J, 3]`` and joint world rotations ``[N, J, 3, 3]``."""
        skeleton = self.skeleton(coeffs, local_rotmats)
        points = self.rest_points(coeffs, local_rotmats, *extra)
        vertices = blend_skinning(points, self.lbs_weights, skeleton.transforms)
        return vertices, skeleton.joints, skeleton.world_rot

    def skeleton(
        self,
        coeffs: Tensor,  # [N, S]
        local_rotmats: Tensor,  # [N, J, 3, 3]
    ) -> PosedSkeleton:
        """The shaped rest joints, posed down the kinematic tree, and their skinning transforms."""
        rest = self.rest_joints(coeffs)
        world_rot, joints = self.tree.chain(local_rotmats, rest)
        return PosedSkeleton(rest, world_rot, joints, skinning_transforms(world_rot, joints, rest))

    def _output(self, batch: torch.Size, vertices: Tensor, joints: Tensor, world_rot: Tensor,
                transl: Tensor, **landmarks: Tensor | None) -> BodyModelOutput:
        shift = transl[:, None]
        vertices = vertices + shift
        extra = {k: None if v is None else unflatten(v + shift, batch) for k, v in landmarks.items()}
        return BodyModelOutput(
            vertices=unflatten(vertices, batch),
            joints=unflatten(joints + shift, batch),
            joint_rotations=unflatten(world_rot, batch),
            keypoints=unflatten(vertices.index_select(1, self.keypoint_ids), batch),
            faces=self.faces,
            **extra,
        )

    def _forward(self, given: Mapping[str, Tensor | None]) -> BodyModelOutput:
        batch, flat = self._flatten(given)
        vertices, joints, world_rot = self.pose(*self._shape_and_pose(flat))
        return self._output(batch, vertices, joints, world_rot, flat["transl"])


def _expression_columns(arrays: BodyModelData, num_betas: int, num_expression: int,
                        shape_space: int = 300) -> dict[str, list[int]]:
    """Shape / expression columns of SMPL-X and FLAME ``shapedirs``: 300 shape + 100 expression in the
    official files, 10 + 10 in the older SMPL-X ones (smplx's rule)."""
    total = arrays.shapedirs.shape[-1]
    start = shape_space if total >= shape_space + 100 else 10
    n_shape, n_expr = min(start, total), total - start
    if num_betas > n_shape or num_expression > n_expr:
        raise ValueError(
            f"{arrays.source}: has {n_shape} shape and {max(n_expr, 0)} expression components; asked for "
            f"num_betas={num_betas}, num_expression={num_expression}"
        )
    return {"betas": list(range(num_betas)), "expression": list(range(start, start + num_expression))}


def _betas_columns(arrays: BodyModelData, num_betas: int) -> dict[str, list[int]]:
    if num_betas > arrays.shapedirs.shape[-1]:
        raise ValueError(f"{arrays.source}: has {arrays.shapedirs.shape[-1]} shape components, asked for {num_betas}")
    return {"betas": list(range(num_betas))}


# --------------------------------------------------------------------------------------------------
# The four models
# --------------------------------------------------------------------------------------------------


class SMPL(SkinnedModel):
    """SMPL: 6890 vertices, 24 joints; ``body_pose`` is joints 1..23."""

    NAME = "SMPL"
    POSE_LAYOUT = (("global_orient", 1), ("body_pose", 23))
    KEYPOINT_IDS = SMPLX_VERTEX_IDS["smplh"]
    KEYPOINT_NAMES = SMPLX_KEYPOINT_NAMES

    def __init__(self, arrays: BodyModelData, num_betas: int = 10) -> None:
        super().__init__(arrays, _betas_columns(arrays, num_betas))

    @classmethod
    def from_dir(cls, body_models: str | Path, gender: str = "neutral", num_betas: int = 10) -> SMPL:
        """From ``body_models/smpl/SMPL_{GENDER}.pkl``."""
        data = load_body_model(asset_file(body_models, f"smpl_{gender.lower()}"), "smpl")
        return cls(data, num_betas)

    def forward(
        self,
        betas: Tensor | None = None,  # [..., <=num_betas]
        global_orient: Tensor | None = None,  # [..., 3]
        body_pose: Tensor | None = None,  # [..., 23, 3]
        transl: Tensor | None = None,  # [..., 3]
    ) -> BodyModelOutput:
        return self._forward(dict(betas=betas, global_orient=global_orient, body_pose=body_pose, transl=transl))


class SMPLX(SkinnedModel):
    """SMPL-X: 10475 vertices, 55 joints (22 body, jaw, 2 eyes, 2 x 15 finger joints)."""

    NAME = "SMPL-X"
    POSE_LAYOUT = (
        ("global_orient", 1), ("body_pose", 21), ("jaw_pose", 1), ("leye_pose", 1), ("reye_pose", 1),
        ("left_hand_pose", 15), ("right_hand_pose", 15),
    )
    KEYPOINT_IDS = SMPLX_VERTEX_IDS["smplx"]
    KEYPOINT_NAMES = SMPLX_KEYPOINT_NAMES
    NUM_BODY_JOINTS = 22
    """Joints 0..21: pelvis to wrists; then jaw 22, eyes 23 / 24, left fingers 25..39, right 40..54."""
    HEAD, LEFT_WRIST, RIGHT_WRIST, JAW, LEFT_EYE, RIGHT_EYE = 15, 20, 21, 22, 23, 24

    def __init__(self, arrays: BodyModelData, num_betas: int = 10, num_expression: int = 10) -> None:
        super().__init__(arrays, _expression_columns(arrays, num_betas, num_expression))

    @classmethod
    def from_dir(cls, body_models: str | Path, gender: str = "neutral", num_betas: int = 10,
                 num_expression: int = 10) -> SMPLX:
        """From ``body_models/smplx/SMPLX_{GENDER}.npz``."""
        data = load_body_model(asset_file(body_models, f"smplx_{gender.lower()}"), "smplx")
        return cls(data, num_betas, num_expression)

    def forward(
        self,
        betas: Tensor | None = None,  # [..., <=num_betas]
        global_orient: Tensor | None = None,  # [..., 3]
        body_pose: Tensor | None = None,  # [..., 21, 3]
        left_hand_pose: Tensor | None = None,  # [..., 15, 3]
        right_hand_pose: Tensor | None = None,  # [..., 15, 3]
        jaw_pose: Tensor | None = None,  # [..., 3]
        leye_pose: Tensor | None = None,  # [..., 3]
        reye_pose: Tensor | None = None,  # [..., 3]
        expression: Tensor | None = None,  # [..., <=num_expression]
        transl: Tensor | None = None,  # [..., 3]
    ) -> BodyModelOutput:
        return self._forward(dict(
            betas=betas, global_orient=global_orient, body_pose=body_pose, left_hand_pose=left_hand_pose,
            right_hand_pose=right_hand_pose, jaw_pose=jaw_pose, leye_pose=leye_pose, reye_pose=reye_pose,
            expression=expression, transl=transl,
        ))


class MANO(SkinnedModel):
    """MANO: 778 vertices, 16 joints (wrist, then index, middle, pinky, ring, thumb; 3 each)."""

    NAME = "MANO"
    POSE_LAYOUT = (("global_orient", 1), ("hand_pose", 15))
    KEYPOINT_IDS = SMPLX_VERTEX_IDS["mano"]
    KEYPOINT_NAMES = MANO_KEYPOINT_NAMES

    def __init__(self, arrays: BodyModelData, num_betas: int = 10) -> None:
        super().__init__(arrays, _betas_columns(arrays, num_betas))

    @classmethod
    def from_dir(cls, body_models: str | Path, side: str = "right", num_betas: int = 10) -> MANO:
        """From ``body_models/mano/MANO_{LEFT,RIGHT}.pkl``."""
        if side not in ("left", "right"):
            raise ValueError(f"side: expected 'left' or 'right', got {side!r}")
        data = load_body_model(asset_file(body_models, f"mano_{side}"), "mano")
        return cls(data, num_betas)

    def forward(
        self,
        betas: Tensor | None = None,  # [..., <=num_betas]
        global_orient: Tensor | None = None,  # [..., 3]
        hand_pose: Tensor | None = None,  # [..., 15, 3]
        transl: Tensor | None = None,  # [..., 3]
    ) -> BodyModelOutput:
        return self._forward(dict(betas=betas, global_orient=global_orient, hand_pose=hand_pose, transl=transl))


class FLAME(SkinnedModel):
    """FLAME: 5023 vertices, 5 joints (root, neck, jaw, left eye, right eye), 68 + MediaPipe landmarks.

    ``eye_pose`` is ``[left eye, right eye]`` axis-angle (6 values, the record's ``flame_eye_pose``);
    ``eyelids`` weigh the two eyelid blend shapes when the kit has them (``l_eyelid.npy`` /
    ``r_eyelid.npy`` beside the FLAME file, as metrical-tracker, SMIRK and GUAVA ship them).
    """

    NAME = "FLAME"
    POSE_LAYOUT = (("global_orient", 1), ("neck_pose", 1), ("jaw_pose", 1), ("eye_pose", 2))
    NECK, JAW, LEFT_EYE, RIGHT_EYE = 1, 2, 3, 4

    def __init__(
        self,
        arrays: BodyModelData,
        static: LandmarkEmbedding,  # flame_static_embedding: 51 points
        dynamic: LandmarkEmbedding,  # flame_dynamic_embedding: 79 yaw rows x 17 contour points
        mediapipe: LandmarkEmbedding,  # mediapipe_landmark_embedding: 105 points with their MediaPipe indices
        eyelids: np.ndarray | None = None,  # [2, V, 3] left, right eyelid blend shapes
        num_betas: int = 300,
        num_expression: int = 100,
        camera_frame: str = "opencv",
    ) -> None:
        super().__init__(arrays, _expression_columns(arrays, num_betas, num_expression))
        if camera_frame not in CAMERA_FRAMES:
            raise ValueError(f"camera_frame: expected one of {CAMERA_FRAMES}, got {camera_frame!r}")
        self.camera_frame = camera_frame
        """Frame the posed face is expressed in; picks which way the dynamic contour looks (see
        :func:`contour_lut_index`)."""
        self.register_buffer("static_lmk_faces", _buffer(static.face_idx, torch.int64))  # [51]
        self.register_buffer("static_lmk_bary", _buffer(static.bary))  # [51, 3]
        self.register_buffer("dynamic_lmk_faces", _buffer(dynamic.face_idx, torch.int64))  # [79, 17]
        self.register_buffer("dynamic_lmk_bary", _buffer(dynamic.bary))  # [79, 17, 3]
        self.register_buffer("mediapipe_lmk_faces", _buffer(mediapipe.face_idx, torch.int64))  # [L]
        self.register_buffer("mediapipe_lmk_bary", _buffer(mediapipe.bary))  # [L, 3]
        self.register_buffer("mediapipe_landmark_indices", _buffer(mediapipe.landmark_indices, torch.int64))
        self.has_eyelids = eyelids is not None
        if eyelids is not None:
            if eyelids.shape != (2, self.num_vertices, 3):
                raise ValueError(f"{arrays.source}: eyelid blend shapes have shape {list(eyelids.shape)}, expected "
                                 f"[2, {self.num_vertices}, 3]")
            self.register_buffer("eyelid_dirs", _buffer(eyelids.reshape(2, -1)))  # [2, V*3]

    @classmethod
    def from_dir(cls, body_models: str | Path, num_betas: int = 300, num_expression: int = 100,
                 camera_frame: str = "opencv") -> FLAME:
        """From ``body_models/flame/``: ``FLAME_NEUTRAL.pkl``, the static, dynamic and MediaPipe landmark
        embeddings and, when both are there, ``l_eyelid.npy`` / ``r_eyelid.npy``."""
        data = load_body_model(asset_file(body_models, "flame"), "flame")
        num_faces = len(data.faces)
        static = load_flame_static_embedding(asset_file(body_models, "flame_static_embedding"), num_faces)
        dynamic = load_flame_dynamic_embedding(asset_file(body_models, "flame_dynamic_embedding"), num_faces)
        mediapipe = load_mediapipe_embedding(asset_file(body_models, "mediapipe_embedding"), num_faces)
        eyelids = load_eyelids(body_models, data.v_template.shape[0])
        return cls(data, static, dynamic, mediapipe, eyelids, num_betas, num_expression, camera_frame)

    def param_specs(self) -> dict[str, ParamSpec]:
        specs = super().param_specs()
        specs["eye_pose"] = ParamSpec((6,), "left and right eye axis-angle, radians")
        specs["eyelids"] = ParamSpec((2,), "left and right eyelid blend-shape weights")
        return specs

    def eyelid_terms(self, eyelids: Tensor | None, name: str = "eyelids") -> list[tuple[Tensor, Tensor]]:
        """The eyelid blend shapes as :meth:`rest_points` terms (``eyelids  # [N, 2]``); none when
        ``eyelids`` is None. ``name`` is the parameter's name in the error for a FLAME without them."""
        if eyelids is None:
            return []
        if not self.has_eyelids:
            raise ValueError(
                f"{name}: this FLAME has no eyelid blend shapes ({' and '.join(EYELID_FILES)} in the body-model "
                f"folder); leave {name} out or add the files"
            )
        return [(eyelids, self.eyelid_dirs)]

    def face_landmarks(self, vertices: Tensor, head_rotation: Tensor,
                       faces: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """68 landmarks ``[N, 68, 3]`` (contour picked by the head's yaw) and the MediaPipe points
        ``[N, L, 3]`` on a posed FLAME head.

        vertices       # [N, V, 3] FLAME's vertices, or a mesh that contains them (EHM)
        head_rotation  # [N, 3, 3] world rotation of the FLAME neck joint
        faces          # [F, 3] FLAME's triangles as indices into ``vertices`` (default: FLAME's own)
        """
        faces = self.faces if faces is None else faces
        row = contour_lut_index(head_rotation, self.camera_frame)
        contour = barycentric_points(vertices, faces, self.dynamic_lmk_faces[row], self.dynamic_lmk_bary[row])
        static = barycentric_points(vertices, faces, self.static_lmk_faces, self.static_lmk_bary)
        mediapipe = barycentric_points(vertices, faces, self.mediapipe_lmk_faces, self.mediapipe_lmk_bary)
        return torch.cat([contour, static], dim=1), mediapipe

    def forward(
        self,
        betas: Tensor | None = None,  # [..., <=num_betas] (the record's flame_shape)
        expression: Tensor | None = None,  # [..., <=num_expression]
        global_orient: Tensor | None = None,  # [..., 3]
        neck_pose: Tensor | None = None,  # [..., 3]
        jaw_pose: Tensor | None = None,  # [..., 3]
        eye_pose: Tensor | None = None,  # [..., 6] left eye, right eye
        eyelids: Tensor | None = None,  # [..., 2] left, right
        transl: Tensor | None = None,  # [..., 3]
    ) -> BodyModelOutput:
        batch, flat = self._flatten(dict(
            betas=betas, expression=expression, global_orient=global_orient, neck_pose=neck_pose,
            jaw_pose=jaw_pose, eye_pose=eye_pose, eyelids=eyelids, transl=transl,
        ))
        eyelid_terms = self.eyelid_terms(None if eyelids is None else flat["eyelids"])
        vertices, joints, world_rot = self.pose(*self._shape_and_pose(flat), *eyelid_terms)
        lmk68, lmk_mp = self.face_landmarks(vertices, world_rot[:, self.NECK])
        return self._output(batch, vertices, joints, world_rot, flat["transl"],
                            landmarks68=lmk68, landmarks_mediapipe=lmk_mp)


# --------------------------------------------------------------------------------------------------
# Loading (through model.assets.loaders; no unpickling here)
# --------------------------------------------------------------------------------------------------


EYELID_FILES = ("flame/l_eyelid.npy", "flame/r_eyelid.npy")
"""FLAME eyelid blend shapes (metrical-tracker / SMIRK / GUAVA), optional: ``[1, 5023, 3]`` or ``[5023, 3]``."""


def load_eyelids(body_models: str | Path, num_vertices: int) -> np.ndarray | None:
    """The two eyelid blend shapes ``[2, V, 3]`` (left, right), or None when the kit has neither file."""
    paths = [Path(body_models) / name for name in EYELID_FILES]
    present = [p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        raise FileNotFoundError(f"{paths[present.index(False)]} is missing (its partner is there); add both or neither")
    shapes = [np.asarray(read_asset(p), np.float64) for p in paths]
    for path, shape in zip(paths, shapes):
        if shape.size != num_vertices * 3:
            raise ValueError(f"{path}: has shape {list(shape.shape)}, expected [1, {num_vertices}, 3]")
    return np.stack([shape.reshape(num_vertices, 3) for shape in shapes])
