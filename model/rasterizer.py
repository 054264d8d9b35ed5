"""Differentiable soft silhouettes of triangle meshes in pure torch, and a hard reference.

The soft rasteriser follows SoftRas (Liu et al. 2019) and PyTorch3D's ``SoftSilhouetteShader``: every
triangle ``f`` covers pixel ``p`` with probability

    D_f(p) = sigmoid(delta_f(p) * d_f(p)^2 / sigma)

where ``d_f(p)`` is the distance from the pixel centre to the triangle's boundary and ``delta_f(p)`` is
``+1`` inside the triangle and ``-1`` outside; the silhouette aggregates the triangles as independent
events, ``S(p) = 1 - prod_f (1 - D_f(p))``. As ``sigma -> 0`` it becomes the hard silhouette (1 inside
any triangle, 0 outside); larger ``sigma`` blurs the edge over about ``sqrt(sigma)`` pixels and lets
gradients reach pixels outside the mesh.

Only pixel-triangle pairs whose probability can exceed ``eps`` are evaluated: the triangle's box grown by
``sqrt(sigma * ln(1 / eps))`` px. The pairs of the whole batch are enumerated at once (no per-sample
loop) and the ``log(1 - D)`` terms are summed per pixel with ``index_add_``, so cost and memory grow with
the covered area, not with ``pixels x triangles``.

Geometry is in image pixels, the schema's continuous convention: x right, y down, origin at the
top-left image corner, pixel ``(i, j)`` (row, column) centred at ``(j + 0.5, i + 0.5)``. Depth plays no
part (a silhouette has no occlusion); callers drop triangles behind the camera with ``face_mask``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_faces(faces: Tensor, num_vertices: int) -> None:
    """``faces`` must be an integer tensor ``[F, 3]`` of indices into ``num_vertices`` vertices (``ValueError``)."""
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"faces: expected an integer tensor [F, 3], got {faces.dtype} {list(faces.shape)}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise ValueError(f"faces: indices must lie in [0, {num_vertices}), got [{int(faces.min())}, "
                         f"{int(faces.max())}]")


def check_image_size(height: int, width: int) -> None:
    """A raster needs positive sides (``ValueError``)."""
    if height < 1 or width < 1:
        raise ValueError(f"height, width: expected positive image sizes, got {height} x {width}")


def _check_inputs(verts_px: Tensor, faces: Tensor, height: int, width: int, face_mask: Tensor | None) -> None:
    if verts_px.dim() != 3 or verts_px.shape[-1] != 2:
        raise ValueError(f"verts_px: expected shape [B, V, 2] (image px), got {list(verts_px.shape)}")
    check_faces(faces, verts_px.shape[1])
    check_image_size(height, width)
    if face_mask is not None and tuple(face_mask.shape) != (verts_px.shape[0], faces.shape[0]):
        raise ValueError(f"face_mask: expected shape [{verts_px.shape[0]}, {faces.shape[0]}] (bool per sample and "
                         f"triangle), got {list(face_mask.shape)}")


def _segment_distance_sq(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Squared distance from points ``p`` to segments ``a b`` (all ``[..., 2]``), ``[...]``."""
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)
    closest = a + t.clamp(0.0, 1.0)[..., None] * ab
    diff = p - closest
    return (diff * diff).sum(-1)


def _edge_functions(p: Tensor, tri: Tensor) -> Tensor:
    """Signed doubled areas ``[..., 3]`` of ``(p, corner k, corner k+1)`` for ``p  # [..., 2]``, ``tri  # [..., 3, 2]``."""
    a, b = tri, tri.roll(-1, dims=-2)
    return (b[..., 0] - a[..., 0]) * (p[..., None, 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., None, 0] - a[..., 0])


def _inside(p: Tensor, tri: Tensor) -> Tensor:
    """Whether ``p`` lies strictly inside the (non-degenerate) triangle ``tri``, either winding."""
    e = _edge_functions(p, tri)
    return ((e > 0).all(-1) | (e < 0).all(-1))


def influence_radius(sigma: float, eps: float) -> float:
    """Distance in px beyond which a pixel outside a triangle has probability below ``eps``."""
    return math.sqrt(sigma * math.log(1.0 / eps))


def soft_silhouette(
    verts_px: Tensor,  # [B, V, 2] vertex positions in image px
    faces: Tensor,  # [F, 3] int vertex indices
    height: int,
    width: int,
    *,
    sigma: float = 1.0,
    eps: float = 1e-4,
    face_mask: Tensor | None = None,  # [B, F] bool: triangles to draw (default: all)
) -> Tensor:
    """Soft silhouettes ``[B, H, W]`` in ``[0, 1]`` (see the module docstring).

    ``sigma`` is in px^2 (the edge blurs over about ``sqrt(sigma)`` px); pairs farther than
    :func:`influence_radius` from a triangle are skipped (their probability is below ``eps``).
    Differentiable with respect to ``verts_px``.
    """
    _check_inputs(verts_px, faces, height, width, face_mask)
    if not sigma > 0.0 or not 0.0 < eps < 0.5:
        raise ValueError(f"sigma must be > 0 and eps in (0, 0.5), got sigma={sigma}, eps={eps}")
    n, device = verts_px.shape[0], verts_px.device
    tri = verts_px[:, faces].reshape(-1, 3, 2)  # [B*F, 3, 2]
    margin = influence_radius(sigma, eps)
    with torch.no_grad():
        lo = tri.min(1).values - margin - 0.5  # pixel centres c = j + 0.5 with lo <= c <= hi
        hi = tri.max(1).values + margin - 0.5
        j0 = lo[:, 0].ceil().clamp(0, width).long()
        j1 = hi[:, 0].floor().clamp(-1, width - 1).long()
        i0 = lo[:, 1].ceil().clamp(0, height).long()
        i1 = hi[:, 1].floor().clamp(-1, height - 1).long()
        cols = (j1 - j0 + 1).clamp(min=0)
        rows = (i1 - i0 + 1).clamp(min=0)
        counts = cols * rows
        if face_mask is not None:
            counts = counts * face_mask.reshape(-1).long()
        tri_id = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)  # [P]
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(tri_id), device=device) - start[tri_id]
        px = j0[tri_id] + local % cols[tri_id]
        py = i0[tri_id] + local // cols[tri_id]
        sample = tri_id // faces.shape[0]
        pixel = (sample * height + py) * width + px
    centre = torch.stack([px, py], -1).to(verts_px.dtype) + 0.5  # [P, 2]
    corners = tri[tri_id]  # [P, 3, 2]
    dist_sq = torch.stack(
        [_segment_distance_sq(centre, corners[:, k], corners[:, (k + 1) % 3]) for k in range(3)], -1
    ).min(-1).values
    sign = torch.where(_inside(centre, corners), 1.0, -1.0).to(verts_px.dtype)
    log_outside = torch.nn.functional.logsigmoid(-sign * dist_sq / sigma)  # log(1 - D)
    total = torch.zeros(n * height * width, dtype=verts_px.dtype, device=device).index_add(0, pixel, log_outside)
    return (1.0 - torch.exp(total)).reshape(n, height, width)


def hard_silhouette(
    verts_px: Tensor,  # [B, V, 2] vertex positions in image px
    faces: Tensor,  # [F, 3] int vertex indices
    height: int,
    width: int,
    *,
    face_mask: Tensor | None = None,  # [B, F] bool
    chunk: int = 4096,
) -> Tensor:
    """Reference binary silhouettes ``[B, H, W]`` (bool): pixel centres strictly inside any triangle.

    Tests every pixel against every triangle (``chunk`` triangles at a time): exact, slow, not
    differentiable; meant for checking :func:`soft_silhouette` on small images.
    """
    _check_inputs(verts_px, faces, height, width, face_mask)
    n, device, dtype = verts_px.shape[0], verts_px.device, verts_px.dtype
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(1, -1, 1, 2).to(dtype) + 0.5  # [1, P, 1, 2]
    out = torch.zeros(n, height * width, dtype=torch.bool, device=device)
    for start in range(0, faces.shape[0], chunk):
        tri = verts_px[:, faces[start : start + chunk]]  # [B, f, 3, 2]
        inside = _inside(centres, tri[:, None])  # [B, P, f]
        if face_mask is not None:
            inside &= face_mask[:, None, start : start + chunk]
        out |= inside.any(-1)
    return out.reshape(n, height, width)
