"""Rotation conversions with any leading batch dimensions.

Conventions (the same as roma and ``scipy.spatial.transform.Rotation``):

- rotation matrices act on column vectors: ``x' = R @ x``;
- rotation vectors (axis-angle) are ``axis * angle`` in radians;
- quaternions are ``(x, y, z, w)``, scalar last;
- the 6D representation (Zhou et al. 2019, as in HMR2) is the first two columns of the matrix,
  concatenated: ``[R[..., :, 0], R[..., :, 1]]``.

Every conversion is differentiable with finite gradients everywhere, including the zero rotation, and
``rotmat_to_rotvec`` stays accurate near angles of 0 and pi. Beside the conversions: the quaternion
product, the rotation between two directions, the angle between two rotations and the mirror image of a
rotation.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

# Below this squared angle (rad^2) the Rodrigues coefficients use their Taylor series.
_SMALL_ANGLE_SQ = 1e-6


def _check_last_dims(name: str, tensor: Tensor, dims: tuple[int, ...]) -> None:
    if tensor.dim() < len(dims) or tuple(tensor.shape[tensor.dim() - len(dims):]) != dims:
        expected = ", ".join(["..."] + [str(d) for d in dims])
        raise ValueError(f"{name}: expected shape [{expected}], got {list(tensor.shape)}")


def skew(vectors: Tensor) -> Tensor:
    """Cross-product matrices ``[v]_x`` with ``[v]_x @ u == v x u``.

    vectors  # [..., 3]
    returns  # [..., 3, 3]
    """
    _check_last_dims("vectors", vectors, (3,))
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vectors.shape[:-1], 3, 3)


def rotvec_to_rotmat(rotvec: Tensor) -> Tensor:
    """Axis-angle vectors to rotation matrices (Rodrigues, series expansion near zero).

    rotvec   # [..., 3] axis * angle (rad)
    returns  # [..., 3, 3]
    """
    _check_last_dims("rotvec", rotvec, (3,))
    theta_sq = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta_sq < _SMALL_ANGLE_SQ
    # sqrt/sin of a safe value where small, so that the unused branch has finite gradients
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    a = torch.where(small, 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0, (1.0 - torch.cos(theta)) / safe_sq)
    k = skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * k + b * (k @ k)


def rotvec_to_quat(rotvec: Tensor) -> Tensor:
    """Axis-angle vectors to unit quaternions ``(x, y, z, w)`` (series near zero); ``w >= 0`` for angles up to pi.

    rotvec   # [..., 3] axis * angle (rad)
    returns  # [..., 4]
    """
    _check_last_dims("rotvec", rotvec, (3,))
    theta_sq = (rotvec * rotvec).sum(-1, keepdim=True)
    small = theta_sq < _SMALL_ANGLE_SQ
    theta = torch.where(small, torch.ones_like(theta_sq), theta_sq).sqrt()
    half_sinc = torch.where(small, 0.5 - theta_sq / 48.0, torch.sin(0.5 * theta) / theta)  # sin(t/2) / t
    w = torch.where(small, 1.0 - theta_sq / 8.0, torch.cos(0.5 * theta))
    return torch.cat([rotvec * half_sinc, w], dim=-1)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a b`` of quaternions ``(x, y, z, w)`` (rotation ``b`` first, then ``a``).

    a, b     # [..., 4], leading dimensions broadcast
    returns  # [..., 4]
    """
    _check_last_dims("a", a, (4,))
    _check_last_dims("b", b, (4,))
    av, aw = a[..., :3], a[..., 3:]
    bv, bw = b[..., :3], b[..., 3:]
    vec = aw * bv + bw * av + torch.linalg.cross(av.expand_as(bv) if av.dim() < bv.dim() else av,
                                                 bv.expand_as(av) if bv.dim() < av.dim() else bv, dim=-1)
    return torch.cat([vec, aw * bw - (av * bv).sum(-1, keepdim=True)], dim=-1)


def rotmat_to_quat(rotmat: Tensor) -> Tensor:
    """Rotation matrices to unit quaternions ``(x, y, z, w)`` with ``w >= 0`` (Shepperd's method).

    rotmat   # [..., 3, 3]
    returns  # [..., 4]
    """
    _check_last_dims("rotmat", rotmat, (3, 3))
    m = rotmat
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    # four candidate (unnormalised) quaternions, each well conditioned where its pivot is largest
    candidates = torch.stack(
        [
            torch.stack([1 + 2 * m00 - trace, m[..., 1, 0] + m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2],
                         m[..., 2, 1] - m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] + m[..., 0, 1], 1 + 2 * m11 - trace, m[..., 2, 1] + m[..., 1, 2],
                         m[..., 0, 2] - m[..., 2, 0]], -1),
            torch.stack([m[..., 2, 0] + m[..., 0, 2], m[..., 2, 1] + m[..., 1, 2], 1 + 2 * m22 - trace,
                         m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1],
                         1 + trace], -1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4]
    pivot = torch.stack([m00, m11, m22, trace], -1).argmax(-1)  # [...]
    quat = torch.take_along_dim(candidates, pivot[..., None, None].expand(*pivot.shape, 1, 4), dim=-2)[..., 0, :]
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return torch.where(quat[..., 3:] < 0, -quat, quat)


def quat_to_rotmat(quat: Tensor) -> Tensor:
    """Quaternions ``(x, y, z, w)`` (normalised here) to rotation matrices.

    quat     # [..., 4]
    returns  # [..., 3, 3]
    """
    _check_last_dims("quat", quat, (4,))
    x, y, z, w = (quat / quat.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(*quat.shape[:-1], 3, 3)


def quat_to_rotvec(quat: Tensor) -> Tensor:
    """Quaternions ``(x, y, z, w)`` (normalised here) to axis-angle vectors with angles in [0, pi].

    quat     # [..., 4]
    returns  # [..., 3]
    """
    _check_last_dims("quat", quat, (4,))
    quat = quat / quat.norm(dim=-1, keepdim=True)
    quat = torch.where(quat[..., 3:] < 0, -quat, quat)
    xyz, w = quat[..., :3], quat[..., 3:]
    sin_sq = (xyz * xyz).sum(-1, keepdim=True)
    small = sin_sq < _SMALL_ANGLE_SQ
    sin_half = torch.where(small, torch.ones_like(sin_sq), sin_sq).sqrt()
    angle = 2.0 * torch.atan2(sin_half, w)
    # angle / sin(angle / 2); series 2 / w * (1 - s^2 / (3 w^2)) for small s = sin(angle / 2)
    factor = torch.where(small, 2.0 / w * (1.0 - sin_sq / (3.0 * w * w)), angle / sin_half)
    return xyz * factor


def rotmat_to_rotvec(rotmat: Tensor) -> Tensor:
    """Rotation matrices to axis-angle vectors with angles in [0, pi] (through the quaternion).

    rotmat   # [..., 3, 3]
    returns  # [..., 3]
    """
    return quat_to_rotvec(rotmat_to_quat(rotmat))


def rot6d_to_rotmat(rot6d: Tensor) -> Tensor:
    """6D rotations (first two matrix columns) to rotation matrices by Gram-Schmidt.

    rot6d    # [..., 6] = [column 0, column 1]
    returns  # [..., 3, 3]
    """
    _check_last_dims("rot6d", rot6d, (6,))
    a1, a2 = rot6d[..., :3], rot6d[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotmat_to_rot6d(rotmat: Tensor) -> Tensor:
    """Rotation matrices to the 6D representation (first two columns).

    rotmat   # [..., 3, 3]
    returns  # [..., 6]
    """
    _check_last_dims("rotmat", rotmat, (3, 3))
    return torch.cat([rotmat[..., :, 0], rotmat[..., :, 1]], dim=-1)


# --------------------------------------------------------------------------------------------------
# Rotations between directions and rotations; mirror images
# --------------------------------------------------------------------------------------------------


def rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """Axis-angle ``[..., 3]`` of the smallest rotation turning direction ``a`` onto direction ``b``.

    a, b  # [..., 3] (any non-zero length); opposite directions get a half turn about an axis
          # perpendicular to ``a``
    """
    a = a / a.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cross = torch.linalg.cross(a, b, dim=-1)
    sin = cross.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(-1, keepdim=True)
    angle = torch.atan2(sin, cos)
    # any axis perpendicular to a, for the antiparallel case
    helper = torch.where(a[..., :1].abs() < 0.9, a.new_tensor((1.0, 0.0, 0.0)), a.new_tensor((0.0, 1.0, 0.0)))
    perpendicular = torch.linalg.cross(a, helper.expand_as(a), dim=-1)
    axis = torch.where(sin > 1e-9, cross, perpendicular)
    return axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12) * angle


def rotation_angle(a: Tensor, b: Tensor) -> Tensor:
    """Angle (rad) of the rotation between axis-angle rotations ``a`` and ``b  # [..., 3]`` -> ``[...]``."""
    relative = rotvec_to_rotmat(a).transpose(-1, -2) @ rotvec_to_rotmat(b)
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.arccos(cos)


ArrayOrTensor = TypeVar("ArrayOrTensor", Tensor, np.ndarray)


def mirror_rotvec(rotvec: ArrayOrTensor) -> ArrayOrTensor:
    """Axis-angle ``rotvec  # [..., 3]`` of the mirror image through x = 0: ``(x, y, z) -> (x, -y, -z)``
    (a right hand's rotations <-> a left hand's). Takes a torch tensor or a numpy array and returns a new
    one of the same kind, dtype and device (differentiable for tensors)."""
    mirrored = -rotvec
    mirrored[..., 0] = rotvec[..., 0]
    return mirrored
