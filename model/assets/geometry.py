"""Mesh-building helpers for the synthetic kit: swept tubes, spheres, skinning along joint chains,
vertex reordering and closest points on a mesh. Pure numpy/scipy; no file I/O.

Conventions: metres, y up, z forward (the direction a person faces), x to the person's left.
A tube's vertex angle ``theta`` is measured from the ring's ``front`` axis towards ``cross(tangent, front)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Part:
    """One surface piece in its own (natural) vertex order.

    ``weights`` columns are joint indices of the model the part belongs to; ``tags`` name vertex
    indices (natural order) that other files refer to (fingertips, nose, landmark rings, ...).
    """

    verts: np.ndarray  # [V, 3] rest positions
    faces: np.ndarray  # [F, 3] vertex indices, counter-clockwise seen from outside
    radial: np.ndarray  # [V, 3] unit outward direction from the part's centre line
    weights: np.ndarray  # [V, J] skinning weights, rows sum to 1
    tags: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_verts(self) -> int:
        return len(self.verts)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """C1 ramp from 0 (x <= 0) to 1 (x >= 1)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def split_count(total: int, shares: np.ndarray, minimum: int = 3) -> np.ndarray:
    """Integers proportional to ``shares`` (each >= ``minimum``) that sum exactly to ``total``."""
    shares = np.asarray(shares, dtype=np.float64)
    spare = total - minimum * len(shares)
    if spare < 0:
        raise ValueError(f"cannot split {total} vertices over {len(shares)} rings of at least {minimum}")
    raw = spare * shares / shares.sum()
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: spare - counts.sum()]] += 1
    return counts + minimum


def samples_with(keys, start: float, stop: float, count: int) -> np.ndarray:
    """``count`` evenly spaced values from ``start`` to ``stop`` plus every value of ``keys``,
    sorted; even samples closer than a third of the spacing to a key are dropped."""
    even = np.linspace(start, stop, count)
    keys = np.asarray(keys, dtype=np.float64)
    gap = abs(stop - start) / max(count - 1, 1) / 3.0
    keep = np.abs(even[:, None] - keys[None, :]).min(1) > gap
    return np.sort(np.concatenate([even[keep], keys]))


def stitch_rings(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Triangles joining closed ring ``a`` to the next ring ``b`` (any sizes, same angular start).

    Both rings list vertex indices by increasing angle; the strip's normals point outwards when
    ``b`` follows ``a`` along the tube's tangent.
    """
    n, m = len(a), len(b)
    steps = np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m + 1e-9])
    from_a = np.concatenate([np.ones(n, bool), np.zeros(m, bool)])
    order = np.argsort(steps, kind="stable")
    from_a = from_a[order]
    i = np.cumsum(from_a) - from_a  # A steps taken before each event
    j = np.cumsum(~from_a) - ~from_a
    tri = np.where(
        from_a[:, None],
        np.stack([a[i % n], a[(i + 1) % n], b[j % m]], 1),
        np.stack([a[i % n], b[(j + 1) % m], b[j % m]], 1),
    )
    return tri


def ring_frames(tangents: np.ndarray, front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-ring (front, side) unit axes perpendicular to ``tangents`` [R, 3]; side = tangent x front."""
    t = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)
    f = np.broadcast_to(front, t.shape)
    f = f - (f * t).sum(1, keepdims=True) * t
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    return f, np.cross(t, f)


@dataclass
class Tube:
    """A generalised cylinder: rings of vertices around a centre line, optional apex caps."""

    verts: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    radial: np.ndarray  # [V, 3]
    arc: np.ndarray  # [V] arc length of each vertex's ring along the centre line
    theta: np.ndarray  # [V] angle around the ring (apexes: 0)
    rings: list[np.ndarray]  # vertex indices of each ring


def make_tube(
    centers: np.ndarray,  # [R, 3] ring centres along the centre line
    front: np.ndarray,  # [3] direction of theta = 0 (projected per ring)
    radii: np.ndarray,  # [R, 2] half-extent along (front, side)
    total: int,  # exact vertex count, apexes included
    cap_start: bool,
    cap_end: bool,
    cap_length: float = 0.0,  # apex distance beyond the end rings
) -> Tube:
    """Sweep ellipses along ``centers``; ring sizes follow their perimeters so that ``total`` is exact."""
    centers = np.asarray(centers, np.float64)
    radii = np.asarray(radii, np.float64)
    tangents = np.gradient(centers, axis=0)
    fr, side = ring_frames(tangents, np.asarray(front, np.float64))
    perimeters = np.pi * (radii[:, 0] + radii[:, 1])
    counts = split_count(total - int(cap_start) - int(cap_end), perimeters)
    arc_rings = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centers, axis=0), axis=1))])

    verts, radial, arc, theta, rings, faces = [], [], [], [], [], []
    start = 0
    for r, n in enumerate(counts):
        th = 2.0 * np.pi * np.arange(n) / n
        direction = np.cos(th)[:, None] * fr[r] + np.sin(th)[:, None] * side[r]
        ellipse = radii[r, 0] * np.cos(th)[:, None] * fr[r] + radii[r, 1] * np.sin(th)[:, None] * side[r]
        verts.append(centers[r] + ellipse)
        radial.append(direction)
        arc.append(np.full(n, arc_rings[r]))
        theta.append(th)
        rings.append(np.arange(start, start + n))
        start += n
    for r in range(len(rings) - 1):
        faces.append(stitch_rings(rings[r], rings[r + 1]))
    t_unit = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)
    for is_start, flag in ((True, cap_start), (False, cap_end)):
        if not flag:
            continue
        r = 0 if is_start else len(rings) - 1
        sign = -1.0 if is_start else 1.0
        verts.append((centers[r] + sign * cap_length * t_unit[r])[None])
        radial.append((sign * t_unit[r])[None])
        arc.append(np.array([arc_rings[r] + sign * cap_length]))
        theta.append(np.zeros(1))
        ring = rings[r]
        nxt = np.roll(ring, -1)
        apex = np.full(len(ring), start)
        faces.append(np.stack([apex, nxt, ring], 1) if is_start else np.stack([apex, ring, nxt], 1))
        start += 1
    return Tube(
        verts=np.concatenate(verts),
        faces=np.concatenate(faces).astype(np.int64),
        radial=np.concatenate(radial),
        arc=np.concatenate(arc),
        theta=np.concatenate(theta),
        rings=rings,
    )


def make_sphere(center: np.ndarray, radius: float, n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """UV sphere with ``n_lat`` rings of ``n_lon`` vertices and two poles; pole 0 faces +z (front).

    Returns (verts [2 + n_lat * n_lon, 3], faces).
    """
    centers = center + radius * np.cos(np.linspace(0, np.pi, n_lat + 2)[1:-1])[:, None] * np.array([0, 0, 1.0])
    radii = radius * np.sin(np.linspace(0, np.pi, n_lat + 2)[1:-1])
    ring_size = np.full(n_lat, n_lon)
    verts, faces, rings, start = [], [], [], 0
    for c, r, n in zip(centers, radii, ring_size):
        th = 2.0 * np.pi * np.arange(n) / n
        verts.append(c + r * np.stack([np.sin(th), np.cos(th), np.zeros(n)], 1))
        rings.append(np.arange(start, start + n))
        start += n
    # rings run from the front pole (+z) backwards, i.e. along tangent -z; with x = sin, y = cos the
    # side axis is tangent x front = (-z) x y = +x, so the strips face outwards.
    for r in range(n_lat - 1):
        faces.append(stitch_rings(rings[r], rings[r + 1]))
    front_pole, back_pole = start, start + 1
    verts.append((center + np.array([0, 0, radius]))[None])
    verts.append((center - np.array([0, 0, radius]))[None])
    first, last = rings[0], rings[-1]
    faces.append(np.stack([np.full(n_lon, front_pole), np.roll(first, -1), first], 1))
    faces.append(np.stack([np.full(n_lon, back_pole), last, np.roll(last, -1)], 1))
    verts = np.concatenate(verts)
    # natural order: front pole first
    order = np.concatenate([[front_pole, back_pole], np.arange(start)])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return verts[order], inverse[np.concatenate(faces)]


def chain_weights(
    arc: np.ndarray,  # [V] position of each vertex along the chain
    first_joint: int,
    boundaries: list[tuple[float, int, float]],  # (arc where the joint takes over, joint, blend half-width)
    num_joints: int,
) -> np.ndarray:
    """Skinning weights [V, num_joints] that hand over smoothly from joint to joint along a chain."""
    w = np.zeros((len(arc), num_joints))
    w[:, first_joint] = 1.0
    for at, joint, half in boundaries:
        t = smoothstep((arc - (at - half)) / (2.0 * half))[:, None]
        w *= 1.0 - t
        w[:, joint] += t[:, 0]
    return w


def blend_towards(weights: np.ndarray, joint: int, amount: np.ndarray) -> np.ndarray:
    """Move a fraction ``amount`` [V] of each vertex's skinning onto ``joint`` (rows keep summing to 1)."""
    amount = np.clip(amount, 0.0, 1.0)[:, None]
    out = weights * (1.0 - amount)
    out[:, joint] += amount[:, 0]
    return out


def concat_parts(parts: list[Part]) -> tuple[Part, list[np.ndarray]]:
    """One part from several (vertex ranges in order); returns it and each input's index range."""
    offsets = np.cumsum([0] + [p.num_verts for p in parts])
    tags: dict[str, np.ndarray] = {}
    for p, off in zip(parts, offsets):
        for k, v in p.tags.items():
            if k in tags:
                raise ValueError(f"tag {k!r} defined twice")
            tags[k] = np.asarray(v) + off
    merged = Part(
        verts=np.concatenate([p.verts for p in parts]),
        faces=np.concatenate([p.faces + off for p, off in zip(parts, offsets)]),
        radial=np.concatenate([p.radial for p in parts]),
        weights=np.concatenate([p.weights for p in parts]),
        tags=tags,
    )
    return merged, [np.arange(offsets[i], offsets[i + 1]) for i in range(len(parts))]


def place_indices(num: int, fixed: dict[int, int], slots: np.ndarray | None = None) -> np.ndarray:
    """Final index of every natural vertex: ``fixed`` maps natural index -> final index; the others
    fill the remaining ``slots`` (default ``range(num)``) in natural order. Returns new_of_old [num]."""
    slots = np.arange(num) if slots is None else np.asarray(slots)
    if len(slots) != num:
        raise ValueError(f"{len(slots)} slots for {num} vertices")
    new_of_old = np.full(num, -1, dtype=np.int64)
    for old, new in fixed.items():
        new_of_old[old] = new
    used = set(fixed.values())
    if len(used) != len(fixed) or not used <= set(slots.tolist()):
        raise ValueError("fixed indices must be distinct and among the slots")
    free_slots = np.array([s for s in slots.tolist() if s not in used], dtype=np.int64)
    free_old = np.flatnonzero(new_of_old < 0)
    new_of_old[free_old] = free_slots
    return new_of_old


def closest_points(
    points: np.ndarray,  # [P, 3]
    verts: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    candidates: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point of each query among the ``candidates`` faces with the nearest centroids.

    Returns (face index [P], barycentric coordinates [P, 3], closest point [P, 3]).
    """
    tri = verts[faces]  # [F, 3, 3]
    k = min(candidates, len(faces))
    _, cand = cKDTree(tri.mean(1)).query(points, k=k)
    cand = cand.reshape(len(points), k)
    bary = _closest_barycentric(points[:, None, :], tri[cand])  # [P, k, 3]
    closest = np.einsum("pkc,pkcd->pkd", bary, tri[cand])
    best = np.argmin(((closest - points[:, None]) ** 2).sum(-1), axis=1)
    rows = np.arange(len(points))
    return cand[rows, best], bary[rows, best], closest[rows, best]


def _closest_barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of the closest point on triangles ``tri`` [..., 3, 3] to ``p`` [..., 3]."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    ab, ac = b - a, c - a
    # unconstrained projection
    d00 = (ab * ab).sum(-1)
    d01 = (ab * ac).sum(-1)
    d11 = (ac * ac).sum(-1)
    ap = p - a
    d20 = (ap * ab).sum(-1)
    d21 = (ap * ac).sum(-1)
    denom = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    v = (d11 * d20 - d01 * d21) / denom
    w = (d00 * d21 - d01 * d20) / denom
    bary = np.stack([1 - v - w, v, w], -1)
    inside = (bary >= 0).all(-1)
    # otherwise the closest point lies on an edge: test the three and keep the nearest
    best = bary.copy()
    best_d = np.full(inside.shape, np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        e0, e1 = tri[..., i, :], tri[..., j, :]
        e = e1 - e0
        t = np.clip(((p - e0) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-30), 0.0, 1.0)
        q = e0 + t[..., None] * e
        d = ((p - q) ** 2).sum(-1)
        cand = np.zeros(bary.shape)
        np.put_along_axis(cand, np.full(t.shape + (1,), i), (1 - t)[..., None], -1)
        np.put_along_axis(cand, np.full(t.shape + (1,), j), t[..., None], -1)
        better = (~inside) & (d < best_d)
        best = np.where(better[..., None], cand, best)
        best_d = np.where(better, d, best_d)
    return best
