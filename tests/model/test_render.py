"""Shaded mesh rendering: z-buffer coverage and depth against known answers and the brute-force reference,
coverage against the hard silhouette, Lambert shading, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from model.rasterizer import hard_silhouette
from model.render import project_pinhole, rasterize, rasterize_reference, render_mesh, vertex_normals

SQUARE_FACES = torch.tensor([[0, 1, 2], [0, 2, 3]])


def _square(x0: float, y0: float, x1: float, y1: float, z: float) -> torch.Tensor:
    return torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def test_square_of_two_triangles_covers_exactly_its_pixels():
    frags = rasterize(_square(2.0, 2.0, 6.0, 6.0, 1.5), SQUARE_FACES, 8, 9)
    covered = frags.face[0] >= 0
    expected = torch.zeros(8, 9, dtype=torch.bool)
    expected[2:6, 2:6] = True  # pixel centres 2.5 .. 5.5 lie inside [2, 6]
    assert torch.equal(covered, expected)
    assert set(frags.face[0][covered].tolist()) == {0, 1}  # both triangles, no gap along the diagonal
    assert torch.allclose(frags.depth[0][covered], torch.tensor(1.5))
    assert torch.isinf(frags.depth[0][~covered]).all()
    assert torch.allclose(frags.bary[0][covered].sum(-1), torch.tensor(1.0))
    assert (frags.bary[0][~covered] == 0).all()


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_whatever_the_order(near_first):
    far = torch.tensor([[0.0, 0.0, 3.0], [10.0, 0.0, 3.0], [0.0, 10.0, 3.0]])
    near = torch.tensor([[2.0, 2.0, 1.0], [9.0, 2.0, 1.0], [2.0, 9.0, 1.0]])
    verts = torch.cat([near, far] if near_first else [far, near])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterize(verts, faces, 10, 10)
    near_id = 0 if near_first else 1
    assert frags.face[0, 3, 3] == near_id and frags.depth[0, 3, 3] == 1.0  # inside both: the near one
    assert frags.face[0, 0, 0] == 1 - near_id and frags.depth[0, 0, 0] == 3.0  # only the far one covers it


def test_equal_depths_go_to_the_lower_face_index():
    verts = torch.cat([_square(0, 0, 4, 4, 2.0), _square(0, 0, 4, 4, 2.0)])
    faces = torch.cat([SQUARE_FACES + 4, SQUARE_FACES])  # the second copy comes first
    frags = rasterize(verts, faces, 4, 4)
    assert set(frags.face[0].reshape(-1).tolist()) <= {0, 1}


def test_perspective_correct_depth_of_a_tilted_plane():
    # the plane z = 2 + 0.5 x (camera frame) seen through a pinhole: the depth at each pixel centre is where
    # that pixel's ray meets the plane, which is not linear in screen space
    k = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
    xs = torch.tensor([-0.6, 0.6, 0.6, -0.6])
    ys = torch.tensor([-0.6, -0.6, 0.6, 0.6])
    cam = torch.stack([xs, ys, 2.0 + 0.5 * xs], -1).double()
    frags = rasterize(project_pinhole(cam[None], k.double()), SQUARE_FACES, 32, 32)
    hit = frags.face[0] >= 0
    assert hit.sum() > 100
    i, j = torch.nonzero(hit, as_tuple=True)
    u = (j.double() + 0.5 - 16.0) / 40.0  # ray direction x / z
    expected = 2.0 / (1.0 - 0.5 * u)  # z = 2 + 0.5 u z
    assert torch.allclose(frags.depth[0][hit], expected, atol=1e-9)


@pytest.mark.parametrize("seed,chunk", [(0, 65536), (1, 7), (2, 1)])
def test_fast_path_matches_the_reference(seed, chunk):
    gen = torch.Generator().manual_seed(seed)
    verts = torch.rand(2, 30, 3, generator=gen, dtype=torch.float64) * torch.tensor([23.0, 17.0, 3.0])
    verts[..., 2] += 0.5
    faces = torch.randint(0, 30, (40, 3), generator=gen)
    mask = torch.rand(2, 40, generator=gen) < 0.8
    fast = rasterize(verts, faces, 17, 23, face_mask=mask, chunk=chunk)
    ref = rasterize_reference(verts, faces, 17, 23, face_mask=mask)
    assert 0.2 < (ref.face >= 0).float().mean() < 0.95  # some pixels covered, some not
    assert torch.equal(fast.face, ref.face)
    assert torch.allclose(fast.depth, ref.depth)
    assert torch.allclose(fast.bary, ref.bary)


def test_coverage_matches_the_hard_silhouette():
    gen = torch.Generator().manual_seed(5)
    verts = torch.rand(3, 25, 3, generator=gen, dtype=torch.float64) * torch.tensor([31.0, 29.0, 2.0])
    verts[..., 2] += 1.0
    faces = torch.randint(0, 25, (30, 3), generator=gen)
    frags = rasterize(verts, faces, 29, 31)
    silhouette = hard_silhouette(verts[..., :2], faces, 29, 31)
    assert silhouette.any()
    assert torch.equal(frags.face >= 0, silhouette)


def test_triangles_behind_the_camera_are_skipped():
    verts = _square(0, 0, 8, 8, 1.0)
    verts[0, 2] = -1.0  # triangle 0 and 1 both use vertex 0
    frags = rasterize(verts, SQUARE_FACES, 8, 8)
    assert (frags.face < 0).all()


def test_render_mesh_lambert_known_answer():
    # a square facing the camera at z = 2, filling the middle of a 20 x 20 image
    cam = torch.tensor([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]])
    k = torch.tensor([[20.0, 0.0, 10.0], [0.0, 20.0, 10.0], [0.0, 0.0, 1.0]])
    color = (0.8, 0.4, 0.2)
    rgb, alpha = render_mesh(cam, SQUARE_FACES, k, 20, 20, color=color, light_dir=(0.0, 0.0, 1.0), ambient=0.25)
    inside = alpha[0] > 0
    assert inside.sum() == 20 * 20 // 4  # 10 x 10 px: from 5 to 15 in both directions
    assert torch.allclose(rgb[0][inside], torch.tensor(color))  # lit head-on: ambient + (1 - ambient) * 1
    assert (rgb[0][~inside] == 0).all()
    tilted = (0.0, math.sin(math.radians(60)), math.cos(math.radians(60)))  # 60 degrees off the normal
    rgb, _ = render_mesh(cam, SQUARE_FACES, k, 20, 20, color=color, light_dir=tilted, ambient=0.25)
    assert torch.allclose(rgb[0][inside], torch.tensor(color) * (0.25 + 0.75 * 0.5), atol=1e-6)


def test_vertex_normals_of_a_flat_square():
    normals = vertex_normals(_square(0, 0, 1, 1, 3.0)[None], SQUARE_FACES)
    assert torch.allclose(normals.abs(), torch.tensor([0.0, 0.0, 1.0]).expand(1, 4, 3))


def test_bad_input_names_the_tensor():
    with pytest.raises(ValueError, match="verts_px"):
        rasterize(torch.zeros(4, 2), SQUARE_FACES, 4, 4)
    with pytest.raises(ValueError, match="faces"):
        rasterize(_square(0, 0, 1, 1, 1.0), torch.tensor([[0, 1, 9]]), 4, 4)
    with pytest.raises(ValueError, match="height, width"):
        rasterize(_square(0, 0, 1, 1, 1.0), SQUARE_FACES, 0, 4)
    with pytest.raises(ValueError, match="face_mask"):
        rasterize(_square(0, 0, 1, 1, 1.0), SQUARE_FACES, 4, 4, face_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="intrinsics"):
        render_mesh(_square(0, 0, 1, 1, 1.0), SQUARE_FACES, torch.eye(4), 4, 4)
    with pytest.raises(ValueError, match="color"):
        render_mesh(_square(0, 0, 1, 1, 1.0), SQUARE_FACES, torch.eye(3), 4, 4, color=(1.0, 0.0))
