"""Pinhole cameras for fitting: the default intrinsics, projection, and translations from 2D points.

Frames: the OpenCV camera frame (x right, y down, z forward, metres) and image pixels (x right, y down,
origin at the top-left corner), as the record's ``cam_intrinsics`` and ``smplx_transl`` use them.

**Default intrinsics** (:func:`default_intrinsics`): when a source gives no camera, the focal length is the
image diagonal in pixels, ``f = sqrt(W^2 + H^2)`` (the convention of CLIFF and BEDLAM: a field of view of
about 53 degrees along the diagonal), square pixels, principal point at the image centre ``(W / 2, H / 2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def default_intrinsics(width: float, height: float, *, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> Tensor:
    """``[3, 3]`` intrinsics for a ``width x height`` image: ``f = sqrt(W^2 + H^2)``, centre principal point."""
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"image size must be positive and finite, got {width} x {height}")
    f = math.hypot(width, height)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def project(points: Tensor, intrinsics: Tensor, *, min_depth: float = 1e-3) -> Tensor:
    """Pixel coordinates ``[..., N, 2]`` of camera-frame points ``[..., N, 3]`` through ``intrinsics [..., 3, 3]``.

    Points nearer than ``min_depth`` metres (or behind the camera) are projected as if at ``min_depth``
    along their own direction in x and y, which keeps gradients finite during fitting.
    """
    if points.shape[-1] != 3:
        raise ValueError(f"points: expected shape [..., N, 3], got {list(points.shape)}")
    if intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics: expected shape [..., 3, 3], got {list(intrinsics.shape)}")
    z = points[..., 2:].clamp(min=min_depth)
    xy = points[..., :2] / z
    f = torch.stack([intrinsics[..., 0, 0], intrinsics[..., 1, 1]], -1)[..., None, :]
    c = torch.stack([intrinsics[..., 0, 2], intrinsics[..., 1, 2]], -1)[..., None, :]
    return xy * f + c


def solve_translation(points: Tensor, keypoints: Tensor, weights: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Translations ``t [B, 3]`` such that ``project(points + t) ~ keypoints``, by weighted linear least squares.

    points     # [B, N, 3] model points in the camera's orientation (before translation)
    keypoints  # [B, N, 2] pixels
    weights    # [B, N] confidence (0: unused)
    intrinsics # [B, 3, 3]

    Each point gives two equations linear in ``t`` (``f_x (X + t_x) = (u - c_x)(Z + t_z)`` and the same in
    y): exact for noise-free data, the usual algebraic estimate otherwise. Returns ``t`` and ``ok [B]``:
    False where fewer than two points have weight or the system is degenerate (``t`` is then zero).
    """
    for name, value, dims in (("points", points, 3), ("keypoints", keypoints, 3), ("weights", weights, 2)):
        if value.dim() != dims:
            raise ValueError(f"{name}: expected {dims} dimensions, got shape {list(value.shape)}")
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    du, dv = cx - keypoints[..., 0], cy - keypoints[..., 1]  # [B, N]
    zero = torch.zeros_like(du)
    rows_x = torch.stack([fx.expand_as(du), zero, du], -1)  # [B, N, 3]
    rows_y = torch.stack([zero, fy.expand_as(dv), dv], -1)
    rhs_x = -(fx * points[..., 0] + du * points[..., 2])
    rhs_y = -(fy * points[..., 1] + dv * points[..., 2])
    a = torch.cat([rows_x, rows_y], 1) * torch.cat([weights, weights], 1)[..., None]  # [B, 2N, 3]
    b = torch.cat([rhs_x, rhs_y], 1) * torch.cat([weights, weights], 1)
    ata = a.transpose(1, 2) @ a
    atb = (a.transpose(1, 2) @ b[..., None])[..., 0]
    det = torch.linalg.det(ata)
    scale = (ata.diagonal(dim1=1, dim2=2).abs().amax(-1) + 1e-12) ** 3
    ok = ((weights > 0).sum(1) >= 2) & (det.abs() > 1e-9 * scale)
    safe = torch.where(ok[:, None, None], ata, torch.eye(3, dtype=ata.dtype, device=ata.device).expand_as(ata))
    t = torch.linalg.solve(safe, torch.where(ok[:, None], atb, torch.zeros_like(atb)))
    return t, ok


def translation_from_box(height_m: Tensor, box_xyxy: Tensor, intrinsics: Tensor) -> Tensor:
    """Translations ``[B, 3]`` that put a body of ``height_m [B]`` metres (centred at the origin) upright
    in the middle of ``box_xyxy [B, 4]``: depth ``f * height / box height``, x and y from the box centre."""
    box_h = (box_xyxy[:, 3] - box_xyxy[:, 1]).clamp(min=1.0)
    depth = intrinsics[:, 1, 1] * height_m / box_h
    cu = 0.5 * (box_xyxy[:, 0] + box_xyxy[:, 2])
    cv = 0.5 * (box_xyxy[:, 1] + box_xyxy[:, 3])
    x = (cu - intrinsics[:, 0, 2]) / intrinsics[:, 0, 0] * depth
    y = (cv - intrinsics[:, 1, 2]) / intrinsics[:, 1, 1] * depth
    return torch.stack([x, y, depth], -1)
