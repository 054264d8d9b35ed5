"""Shaded mesh rendering in pure torch: a z-buffered triangle rasteriser and Lambert shading.

:func:`rasterize` finds, for every pixel, the nearest triangle whose screen-space footprint holds the
pixel centre, with its depth and perspective-correct barycentric coordinates; :func:`render_mesh`
projects camera-frame vertices through pinhole intrinsics, rasterises them and shades the result
(smooth Lambert shading of interpolated vertex normals, ambient term, optional per-vertex colours).
:func:`rasterize_reference` tests every pixel against every triangle: exact, slow, the check of the
fast path on small images.

Conventions are those of :mod:`model.rasterizer`: image pixels with x right, y down, origin at the
top-left image corner, pixel ``(i, j)`` (row, column) centred at ``(j + 0.5, i + 0.5)``. Camera frame:
OpenCV (x right, y down, z forward, metres), the schema's ``camera`` frame. Coverage is inclusive (a
pixel centre on an edge belongs to the triangle), so two triangles sharing an edge leave no gap; where
several triangles cover a pixel the smallest depth wins, and equal depths go to the lowest face index.

How the fast path works: pixel-triangle pairs are enumerated inside each triangle's pixel box (as in
:func:`model.rasterizer.soft_silhouette`), ``chunk`` triangles at a time so memory stays bounded; the
depth of each inside pair and its face index are packed into one int64 (the bit pattern of a positive
float32 orders like the float) and a running per-pixel minimum keeps the nearest face. Cost grows with
the area the triangles' boxes cover, not with ``pixels x triangles``. Nothing here is differentiable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from model.rasterizer import check_faces, check_image_size

DEFAULT_COLOR = (0.62, 0.74, 0.90)
"""Mesh colour (RGB in [0, 1]) when none is given: a light blue that stands out on photos."""


class Fragments(NamedTuple):
    """Per-pixel rasterisation result."""

    face: Tensor
    """[B, H, W] int64: index of the nearest covering triangle, -1 where none covers the pixel."""
    depth: Tensor
    """[B, H, W] float: depth (z) of the surface at the pixel centre, ``inf`` where empty."""
    bary: Tensor
    """[B, H, W, 3] float: perspective-correct barycentric coordinates in ``face``, zero where empty."""


def _check_mesh(verts: Tensor, faces: Tensor, name: str) -> None:
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [V, 3] or [B, V, 3], got {list(verts.shape)}")
    if not verts.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor, got {verts.dtype}")
    check_faces(faces, verts.shape[1])


def _batched(verts: Tensor) -> tuple[Tensor, bool]:
    return (verts[None], True) if verts.dim() == 2 else (verts, False)


def _edges(p: Tensor, tri: Tensor) -> Tensor:
    """Doubled signed areas ``[..., 3]`` of ``(corner k+1, corner k+2, p)``: the unnormalised barycentric
    coordinate of corner ``k``. ``p  # [..., 2]``, ``tri  # [..., 3, 2]``."""
    a, b = tri.roll(-1, dims=-2), tri.roll(-2, dims=-2)  # corners k+1 and k+2
    return ((b[..., 0] - a[..., 0]) * (p[..., None, 1] - a[..., 1])
            - (b[..., 1] - a[..., 1]) * (p[..., None, 0] - a[..., 0]))


def _barycentric(p: Tensor, tri: Tensor) -> tuple[Tensor, Tensor]:
    """Screen-space barycentric coordinates ``[..., 3]`` of ``p`` in ``tri`` and whether ``p`` is covered
    (inclusive edges, either winding; degenerate triangles cover nothing)."""
    e = _edges(p, tri)
    area = e.sum(-1)  # doubled signed area of the triangle
    bary = e / torch.where(area == 0, torch.ones_like(area), area)[..., None]
    covered = (area != 0) & (bary >= 0).all(-1)
    return bary, covered


def _perspective(bary: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Depth ``[...]`` and perspective-correct barycentrics ``[..., 3]`` from screen-space ``bary`` and
    the corners' depths ``z  # [..., 3]`` (1/z is linear in screen space)."""
    inv = (bary / z).sum(-1)
    depth = 1.0 / inv
    return depth, bary / z * depth[..., None]


def rasterize(
    verts_px: Tensor,  # [V, 3] or [B, V, 3]: x, y in image px, z = depth (> 0 in front of the camera)
    faces: Tensor,  # [F, 3] int vertex indices
    height: int,
    width: int,
    *,
    face_mask: Tensor | None = None,  # [F] or [B, F] bool: triangles to draw (default: all)
    near: float = 1e-6,
    chunk: int = 65536,
) -> Fragments:
    """The nearest covering triangle per pixel, its depth and barycentrics (see the module docstring).

    Triangles with a corner at depth ``<= near`` are skipped (clip them before calling if they matter).
    A 2-D ``verts_px`` gives fragments with a batch dimension of 1.
    """
    verts_px, _ = _batched(verts_px)
    _check_mesh(verts_px, faces, "verts_px")
    check_image_size(height, width)
    b, device = verts_px.shape[0], verts_px.device
    faces = faces.long()
    n_faces = faces.shape[0]
    draw = _face_mask(face_mask, b, n_faces, device)
    tri_all = verts_px[:, faces]  # [B, F, 3, 3]
    draw = draw & (tri_all[..., 2] > near).all(-1)
    empty = torch.iinfo(torch.int64).max
    best = torch.full((b * height * width,), empty, dtype=torch.int64, device=device)
    for start in range(0, n_faces, max(1, chunk)):
        tri = tri_all[:, start : start + chunk].reshape(-1, 3, 3)  # [B*f, 3, 3]
        f = min(chunk, n_faces - start)
        with torch.no_grad():
            lo, hi = tri[..., :2].min(1).values - 0.5, tri[..., :2].max(1).values - 0.5  # centres c = j + 0.5
            j0 = lo[:, 0].ceil().clamp(0, width).long()
            j1 = hi[:, 0].floor().clamp(-1, width - 1).long()
            i0 = lo[:, 1].ceil().clamp(0, height).long()
            i1 = hi[:, 1].floor().clamp(-1, height - 1).long()
            cols, rows = (j1 - j0 + 1).clamp(min=0), (i1 - i0 + 1).clamp(min=0)
            counts = cols * rows * draw[:, start : start + chunk].reshape(-1).long()
            tri_id = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)  # [P]
            local = torch.arange(len(tri_id), device=device) - (torch.cumsum(counts, 0) - counts)[tri_id]
            px = j0[tri_id] + local % cols[tri_id]
            py = i0[tri_id] + local // cols[tri_id]
            corners = tri[tri_id]  # [P, 3, 3]
            centre = torch.stack([px, py], -1).to(verts_px.dtype) + 0.5
            bary, covered = _barycentric(centre, corners[..., :2])
            depth, _ = _perspective(bary[covered], corners[covered][..., 2])
            sample = tri_id[covered] // f
            face = tri_id[covered] % f + start
            pixel = (sample * height + py[covered]) * width + px[covered]
            # positive float32 bit patterns order like the floats: depth in the high word, face in the low
            key = (depth.float().view(torch.int32).long() << 32) | face
            best = best.scatter_reduce(0, pixel, key, reduce="amin")
    hit = best != empty
    face = torch.where(hit, best & 0xFFFFFFFF, torch.full_like(best, -1)).reshape(b, height, width)
    return _fragments(verts_px, faces, face, height, width)


def _face_mask(face_mask: Tensor | None, b: int, n_faces: int, device: torch.device) -> Tensor:
    if face_mask is None:
        return torch.ones(b, n_faces, dtype=torch.bool, device=device)
    mask = face_mask if face_mask.dim() == 2 else face_mask[None]
    if mask.dtype != torch.bool or tuple(mask.shape[1:]) != (n_faces,) or mask.shape[0] not in (1, b):
        raise ValueError(f"face_mask: expected a bool tensor [F] or [B, F] with F = {n_faces}, B = {b}, got "
                         f"{mask.dtype} {list(face_mask.shape)}")
    return mask.expand(b, n_faces).to(device)


def _fragments(verts_px: Tensor, faces: Tensor, face: Tensor, height: int, width: int) -> Fragments:
    """Depth and barycentrics of the winning ``face  # [B, H, W]`` at every covered pixel centre."""
    b = verts_px.shape[0]
    ys, xs = torch.meshgrid(torch.arange(height, device=face.device), torch.arange(width, device=face.device),
                            indexing="ij")
    centre = torch.stack([xs, ys], -1).to(verts_px.dtype) + 0.5  # [H, W, 2]
    depth = torch.full((b, height, width), float("inf"), dtype=verts_px.dtype, device=face.device)
    bary = torch.zeros(b, height, width, 3, dtype=verts_px.dtype, device=face.device)
    hit = face >= 0
    if hit.any():
        sample = torch.arange(b, device=face.device)[:, None, None].expand_as(face)[hit]
        corners = verts_px[sample[:, None], faces[face[hit]]]  # [P, 3, 3]
        screen, _ = _barycentric(centre.expand(b, height, width, 2)[hit], corners[..., :2])
        depth[hit], bary[hit] = _perspective(screen, corners[..., 2])
    return Fragments(face, depth, bary)


def rasterize_reference(
    verts_px: Tensor,  # [V, 3] or [B, V, 3]
    faces: Tensor,  # [F, 3]
    height: int,
    width: int,
    *,
    face_mask: Tensor | None = None,  # [F] or [B, F] bool
    near: float = 1e-6,
) -> Fragments:
    """:func:`rasterize` by brute force: every pixel against every triangle, one triangle at a time
    (exact, slow; for checking the fast path on small images)."""
    verts_px, _ = _batched(verts_px)
    _check_mesh(verts_px, faces, "verts_px")
    check_image_size(height, width)
    b, device = verts_px.shape[0], verts_px.device
    faces = faces.long()
    draw = _face_mask(face_mask, b, faces.shape[0], device)
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    centre = torch.stack([xs, ys], -1).to(verts_px.dtype) + 0.5  # [H, W, 2]
    best_depth = torch.full((b, height, width), float("inf"), dtype=torch.float32, device=device)
    face = torch.full((b, height, width), -1, dtype=torch.int64, device=device)
    for s in range(b):
        for f in range(faces.shape[0]):
            tri = verts_px[s, faces[f]]  # [3, 3]
            if not draw[s, f] or not bool((tri[:, 2] > near).all()):
                continue
            bary, covered = _barycentric(centre, tri[:, :2].expand(height, width, 3, 2))
            depth = _perspective(bary, tri[:, 2].expand(height, width, 3))[0].float()
            better = covered & (depth < best_depth[s])  # strict: the lower face index keeps ties
            best_depth[s] = torch.where(better, depth, best_depth[s])
            face[s] = torch.where(better, torch.full_like(face[s], f), face[s])
    return _fragments(verts_px, faces, face, height, width)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Unit vertex normals ``[B, V, 3]`` of ``verts  # [B, V, 3]``: area-weighted sums of the face normals
    (right-handed winding ``a -> b -> c``); zero for vertices no triangle uses."""
    faces = faces.long()
    tri = verts[:, faces]  # [B, F, 3, 3]
    n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)  # [B, F, 3], |n| = 2 area
    acc = torch.zeros_like(verts).index_add(1, faces.reshape(-1), n.repeat_interleave(3, dim=1))
    return torch.nn.functional.normalize(acc, dim=-1)


def project_pinhole(
    verts_cam: Tensor,  # [B, V, 3] camera frame (OpenCV), metres
    intrinsics: Tensor,  # [B, 3, 3] or [3, 3]
) -> Tensor:
    """``[B, V, 3]``: pixel x, y through ``intrinsics`` and the camera-frame depth z (unclamped: points
    at or behind the camera get meaningless x, y; :func:`rasterize` skips their triangles)."""
    k = intrinsics if intrinsics.dim() == 3 else intrinsics[None]
    uvw = verts_cam @ k.transpose(-1, -2).to(verts_cam)  # [B, V, 3] = K X
    z = verts_cam[..., 2:]
    safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    return torch.cat([uvw[..., :2] / safe, z], -1)


def render_mesh(
    verts_cam: Tensor,  # [V, 3] or [B, V, 3] camera frame (OpenCV: x right, y down, z forward), metres
    faces: Tensor,  # [F, 3] int vertex indices
    intrinsics: Tensor,  # [3, 3] or [B, 3, 3] pinhole K mapping the camera frame to image px
    height: int,
    width: int,
    *,
    color: Tensor | tuple[float, float, float] = DEFAULT_COLOR,  # [3], [B, 3] or per vertex [B, V, 3]
    light_dir: tuple[float, float, float] = (0.0, 0.3, 1.0),  # camera frame, pointing from the light
    ambient: float = 0.3,
    face_mask: Tensor | None = None,  # [F] or [B, F] bool
    near: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Shaded images ``rgb [B, H, W, 3]`` in [0, 1] (black background) and coverage ``alpha [B, H, W]``
    (float, 1 where the mesh covers the pixel centre), for a 2-D or 3-D ``verts_cam``.

    Shading: ``color * (ambient + (1 - ambient) * |n . l|)`` with ``n`` the perspective-correct
    interpolated vertex normal and ``l`` the unit direction towards the light (``-light_dir``; the
    default light sits behind and slightly above the camera). Two-sided: back faces seen through a
    hole are lit like front faces. Compose over a photo with ``alpha``.
    """
    verts_cam, _ = _batched(verts_cam)
    _check_mesh(verts_cam, faces, "verts_cam")
    b = verts_cam.shape[0]
    if intrinsics.shape[-2:] != (3, 3) or intrinsics.dim() not in (2, 3) or (
            intrinsics.dim() == 3 and intrinsics.shape[0] not in (1, b)):
        raise ValueError(f"intrinsics: expected shape [3, 3] or [B, 3, 3] with B = {b}, got {list(intrinsics.shape)}")
    if not 0.0 <= ambient <= 1.0:
        raise ValueError(f"ambient must lie in [0, 1], got {ambient}")
    faces = faces.long()
    frags = rasterize(project_pinhole(verts_cam, intrinsics), faces, height, width, face_mask=face_mask, near=near)
    colors = _vertex_colors(color, verts_cam)  # [B, V, 3]
    normals = vertex_normals(verts_cam, faces)
    light = -torch.tensor(light_dir, dtype=verts_cam.dtype, device=verts_cam.device)
    light = light / light.norm().clamp(min=1e-12)
    hit = frags.face >= 0
    rgb = torch.zeros(b, height, width, 3, dtype=verts_cam.dtype, device=verts_cam.device)
    if hit.any():
        sample = torch.arange(b, device=hit.device)[:, None, None].expand_as(frags.face)[hit]
        corners = faces[frags.face[hit]]  # [P, 3]
        w = frags.bary[hit][..., None]  # [P, 3, 1]
        n = torch.nn.functional.normalize((normals[sample[:, None], corners] * w).sum(1), dim=-1)
        c = (colors[sample[:, None], corners] * w).sum(1)
        lambert = (n @ light).abs()[:, None]
        rgb[hit] = (c * (ambient + (1.0 - ambient) * lambert)).clamp(0.0, 1.0)
    return rgb, hit.to(verts_cam.dtype)


def _vertex_colors(color: Tensor | tuple[float, float, float], verts: Tensor) -> Tensor:
    c = torch.as_tensor(color, dtype=verts.dtype, device=verts.device)
    b, v = verts.shape[:2]
    if c.shape == (3,):
        return c.expand(b, v, 3)
    if c.shape in ((b, 3), (1, 3)):
        return c[:, None].expand(b, v, 3)
    if c.shape in ((b, v, 3), (v, 3)):
        return c.expand(b, v, 3)
    raise ValueError(f"color: expected shape [3], [B, 3] or [B, V, 3] with B = {b}, V = {v}, got {list(c.shape)}")
