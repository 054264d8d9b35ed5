"""Horizontal flips (mirror images through the camera's x = 0 plane) of EHM parameters.

A mirrored image shows the mirrored person: every point ``(x, y, z)`` of the camera frame goes to
``(-x, y, z)``, the person's left and right swap, and every rotation ``R`` becomes ``M R M`` with
``M = diag(-1, 1, 1)`` (:func:`model.rotations.mirror_rotvec`). For EHM parameters
(:meth:`model.ehm.EHM.forward` names) that means:

- ``global_orient``, ``flame_jaw_pose``: mirrored;
- ``body_pose``: left and right joints exchanged (:data:`BODY_POSE_FLIP`), each mirrored;
- ``mano_hand_pose``, ``mano_betas``, ``hand_scale``: the two hands exchanged, the poses mirrored (a
  mirrored left hand is a right hand: MANO's left model is the mirror image of its right one);
- ``flame_eye_pose``, ``flame_eyelids``: the two eyes exchanged, the eye rotations mirrored;
- ``head_scale``: unchanged (a per-axis scale commutes with the mirror);
- ``betas``, ``flame_shape``, ``flame_expression``: mapped by the linear maps of :class:`ShapeMirror`,
  which a body-model folder defines (a shape's mirror image is again a shape of the model exactly when the
  basis spans its own mirror image; official bases do so closely, the synthetic kit's exactly);
- ``transl``: chosen so that the mirrored body's pelvis lands on the mirror image of the pelvis.

Keypoints of the record flip with :func:`schemas.keypoints.flip_keypoints` (the COCO-WholeBody
permutation is defined there, once). :data:`EHM_JOINT_FLIP` is the same permutation for EHM's 55 joints.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model.assets.layouts import SMPLX_JOINTS
from model.rotations import mirror_rotvec


def _swap_sides(name: str) -> str:
    for a, b in (("left_", "right_"), ("right_", "left_")):
        if name.startswith(a):
            return b + name[len(a):]
    return name


EHM_JOINT_FLIP: np.ndarray = np.array([SMPLX_JOINTS.index(_swap_sides(n)) for n in SMPLX_JOINTS], dtype=np.int64)
"""``[55]`` permutation: joint ``i`` of a mirrored EHM / SMPL-X body is the mirror image of joint
``EHM_JOINT_FLIP[i]`` of the original (joint order of ``model.assets.layouts.SMPLX_JOINTS``)."""
BODY_POSE_FLIP: np.ndarray = EHM_JOINT_FLIP[1:22] - 1
"""``[21]`` the same permutation on ``body_pose`` (SMPL-X joints 1..21)."""

_MIRROR = np.array([-1.0, 1.0, 1.0])


def mirror_index(points: np.ndarray, *, atol: float = 1e-5) -> np.ndarray:
    """``[K]`` index of each point's mirror partner: ``points[mirror_index(points)[i]]`` is ``points[i]`` with
    x negated. ``points  # [K, 3]`` must be symmetric about x = 0 within ``atol`` (``ValueError`` otherwise)."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, np.float64)
    dist, index = cKDTree(points).query(points * _MIRROR)
    if dist.max() > atol:
        raise ValueError(f"points are not mirror-symmetric about x = 0: a point's mirror image is {dist.max():.3g} "
                         f"from the nearest point (tolerance {atol})")
    return index.astype(np.int64)


def _mirror_map(basis: np.ndarray, index: np.ndarray, rcond: float = 1e-9) -> tuple[np.ndarray, float]:
    """The mirror as a linear map ``P [K, K]`` of coefficients (``c @ P``) and how far the basis is from
    spanning its own mirror image (0: exactly; up to 1).

    ``basis  # [K, P, 3]``: per-point offsets of each coefficient; ``index  # [P]``: each point's mirror
    partner. With ``G = B B^T`` (the shape metric) and ``Q = B M B^T`` (``M`` the mirror of the offsets), the
    least-squares map is ``Q G^-1``; in whitened coordinates it is ``S = G^-1/2 Q G^-1/2`` (symmetric, its
    eigenvalues in [-1, 1]). ``P`` replaces ``S`` by its nearest involution ``sign(S)``: the least-squares
    map itself when the basis spans its mirror image (eigenvalues exactly +-1), and always its own inverse,
    so that flipping twice gives the coefficients back. Directions that move no point are left alone.
    """
    k = basis.shape[0]
    if k == 0:
        return np.zeros((0, 0)), 0.0
    flat = basis.reshape(k, -1)
    mirrored = (basis[:, index] * _MIRROR).reshape(k, -1)
    g, v = np.linalg.eigh(flat @ flat.T)
    keep = g > rcond * max(g.max(), 1e-300)
    vk, root = v[:, keep], np.sqrt(g[keep])
    whiten = vk / root  # [K, r]: G^-1/2 on the kept subspace
    s = whiten.T @ (flat @ mirrored.T) @ whiten
    lam, u = np.linalg.eigh((s + s.T) / 2)
    involution = (u * np.where(lam >= 0, 1.0, -1.0)) @ u.T
    p = (vk * root) @ involution @ whiten.T + v[:, ~keep] @ v[:, ~keep].T
    return p, float(np.abs(np.abs(lam) - 1.0).max())


@dataclass(frozen=True)
class ShapeMirror:
    """How the shape coefficients and the pelvis of a body-model folder change under the mirror."""

    betas: np.ndarray
    """[B, B] SMPL-X betas of the mirrored body: ``betas @ self.betas``."""
    flame_shape: np.ndarray
    """[S, S] the same for FLAME shape coefficients."""
    flame_expression: np.ndarray
    """[E, E] the same for FLAME expression coefficients."""
    pelvis: np.ndarray
    """[3] rest pelvis (SMPL-X joint 0) at zero betas, model frame."""
    pelvis_dirs: np.ndarray
    """[B, 3] change of the rest pelvis per unit of each beta."""
    span_gaps: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Per map, how far the model's basis is from spanning its own mirror image (0: exactly, the flip is
    exact; official FLAME and SMPL-X bases come close, the synthetic kit's FLAME bases do not: there the
    flipped face is the involution nearest to the least-squares mirror, see :func:`_mirror_map`)."""

    @classmethod
    def identity(cls, num_betas: int = 10, num_flame_shape: int = 300, num_flame_expression: int = 100) -> ShapeMirror:
        """The maps of a model whose every basis vector is its own mirror image, pelvis on x = 0."""
        return cls(np.eye(num_betas), np.eye(num_flame_shape), np.eye(num_flame_expression), np.zeros(3),
                   np.zeros((num_betas, 3)))

    @classmethod
    def from_ehm(cls, ehm: Any, *, atol: float = 1e-5) -> ShapeMirror:
        """The maps of an :class:`model.ehm.EHM` (its SMPL-X body part, its FLAME); ``ValueError`` when its
        rest meshes are not mirror-symmetric within ``atol`` metres."""
        nb = ehm.num_betas
        body = ehm.body_template.detach().double().cpu().numpy()  # [Vb, 3]
        body_dirs = ehm.body_shapedirs.detach().double().cpu().numpy().reshape(nb, -1, 3)
        joints = ehm.j_template.detach().double().cpu().numpy()  # [25, 3]
        joint_dirs = ehm.j_shapedirs.detach().double().cpu().numpy().reshape(nb, -1, 3)
        joint_index = EHM_JOINT_FLIP[: joints.shape[0]]
        mirrored = joints[joint_index] * _MIRROR
        if np.abs(mirrored - joints).max() > atol:
            raise ValueError("EHM rest joints are not mirror-symmetric about x = 0")
        # one map for betas from the body vertices and the joints together
        basis = np.concatenate([body_dirs, joint_dirs], axis=1)
        index = np.concatenate([mirror_index(body, atol=atol), body.shape[0] + joint_index])
        betas, gap_betas = _mirror_map(basis, index)
        flame = ehm.flame
        template = flame.v_template.detach().double().cpu().numpy()
        flame_index = mirror_index(template, atol=atol)
        dirs = flame.shapedirs.detach().double().cpu().numpy().reshape(-1, template.shape[0], 3)
        n_shape = flame.shape_sizes["betas"]
        shape, gap_shape = _mirror_map(dirs[:n_shape], flame_index)
        expression, gap_expression = _mirror_map(dirs[n_shape:], flame_index)
        return cls(betas, shape, expression, joints[0], joint_dirs[:, 0],
                   {"betas": gap_betas, "flame_shape": gap_shape, "flame_expression": gap_expression})

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (``np.savez`` / a checkpoint)."""
        return {"betas": self.betas, "flame_shape": self.flame_shape, "flame_expression": self.flame_expression,
                "pelvis": self.pelvis, "pelvis_dirs": self.pelvis_dirs}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> ShapeMirror:
        return cls(**{k: np.asarray(arrays[k], np.float64) for k in ("betas", "flame_shape", "flame_expression",
                                                                      "pelvis", "pelvis_dirs")})

    def involution_error(self) -> float:
        """Largest ``|P P - I|`` over the maps (0 up to rounding: flipping twice gives the coefficients back)."""
        return max((float(np.abs(m @ m - np.eye(len(m))).max()) for m in (self.betas, self.flame_shape,
                    self.flame_expression) if len(m)), default=0.0)


def _apply(coeffs: Any, matrix: np.ndarray, name: str) -> Any:
    """``coeffs [..., k] @ matrix[:k, :k]`` (leading components only), numpy or torch."""
    k = coeffs.shape[-1]
    if k > matrix.shape[0]:
        raise ValueError(f"{name}: {k} coefficients, but the mirror map has {matrix.shape[0]}")
    m = matrix[:k, :k]
    if isinstance(coeffs, Tensor):
        return coeffs @ torch.as_tensor(m, dtype=coeffs.dtype, device=coeffs.device)
    return (np.asarray(coeffs) @ m).astype(np.asarray(coeffs).dtype)


def _flip_axis(value: Any, axis: int) -> Any:
    """``value`` with its ``axis`` (of length 2: left, right) reversed."""
    if isinstance(value, Tensor):
        return value.flip(axis)
    return np.flip(np.asarray(value), axis).copy()


def _pelvis(betas: Any, mirror: ShapeMirror) -> Any:
    k = betas.shape[-1]
    if isinstance(betas, Tensor):
        dirs = torch.as_tensor(mirror.pelvis_dirs[:k], dtype=betas.dtype, device=betas.device)
        return torch.as_tensor(mirror.pelvis, dtype=betas.dtype, device=betas.device) + betas @ dirs
    return mirror.pelvis + np.asarray(betas, np.float64) @ mirror.pelvis_dirs[:k]


def flip_ehm_params(params: Mapping[str, Any], mirror: ShapeMirror) -> dict[str, Any]:
    """EHM parameters (``{name: [..., *shape]}``, numpy arrays or torch tensors, any subset of
    :meth:`model.ehm.EHM.forward`'s names) of the mirrored person (see the module docstring).
    ``transl`` needs ``betas`` beside it (the pelvis depends on the shape)."""
    unknown = sorted(set(params) - set(_FLIPS) - {"transl"})
    if unknown:
        raise KeyError(f"flip_ehm_params: unknown EHM parameter(s) {unknown}; known: {sorted(_FLIPS) + ['transl']}")
    out = {name: _FLIPS[name](value, mirror) for name, value in params.items() if name != "transl"}
    if "transl" in params:
        if "betas" not in params:
            raise KeyError("flip_ehm_params: flipping 'transl' needs 'betas' (the pelvis depends on the shape)")
        t, b = params["transl"], params["betas"]
        before, after = _pelvis(b, mirror), _pelvis(out["betas"], mirror)
        out["transl"] = _mirror_points(t + before) - after
        if not isinstance(t, Tensor):
            out["transl"] = out["transl"].astype(np.asarray(t).dtype)
    return out


def _mirror_points(points: Any) -> Any:
    """``points  # [..., 3]`` with x negated (numpy or torch)."""
    out = points.clone() if isinstance(points, Tensor) else np.array(points, copy=True)
    out[..., 0] = -out[..., 0]
    return out


def _rotations(value: Any, _: ShapeMirror) -> Any:
    return mirror_rotvec(value if isinstance(value, Tensor) else np.asarray(value).copy())


def _body_pose(value: Any, _: ShapeMirror) -> Any:
    index = BODY_POSE_FLIP if not isinstance(value, Tensor) else torch.as_tensor(BODY_POSE_FLIP, device=value.device)
    return _rotations(value[..., index, :], _)


_FLIPS = {
    "betas": lambda v, m: _apply(v, m.betas, "betas"),
    "global_orient": _rotations,
    "body_pose": _body_pose,
    "mano_hand_pose": lambda v, m: _rotations(_flip_axis(v, -3), m),
    "mano_betas": lambda v, m: _flip_axis(v, -2),
    "hand_scale": lambda v, m: _flip_axis(v, -1),
    "flame_shape": lambda v, m: _apply(v, m.flame_shape, "flame_shape"),
    "flame_expression": lambda v, m: _apply(v, m.flame_expression, "flame_expression"),
    "flame_jaw_pose": _rotations,
    "flame_eye_pose": lambda v, m: _rotations(_flip_axis(v.reshape(*v.shape[:-1], 2, 3), -2), m).reshape(v.shape),
    "flame_eyelids": lambda v, m: _flip_axis(v, -1),
    "head_scale": lambda v, m: v.clone() if isinstance(v, Tensor) else np.asarray(v).copy(),
}
"""How each EHM parameter (but ``transl``) flips."""
