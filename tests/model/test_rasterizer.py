"""Soft silhouette rasteriser: agreement with the hard reference, gradients, culling, bad input."""

from __future__ import annotations

import pytest
import torch

from model.rasterizer import hard_silhouette, influence_radius, soft_silhouette


def _random_mesh(batch: int, height: int, width: int, seed: int, faces: int = 12, verts: int = 20):
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(batch, verts, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height])
    f = torch.randint(0, verts, (faces, 3), generator=gen)
    return v, f


@pytest.mark.parametrize("batch,height,width", [(1, 16, 16), (3, 17, 23), (2, 32, 9)])
def test_soft_matches_hard_as_sigma_goes_to_zero(batch, height, width):
    v, f = _random_mesh(batch, height, width, seed=batch * 100 + height)
    hard = hard_silhouette(v, f, height, width)
    assert 0 < hard.sum() < hard.numel()  # the test means something: some pixels in, some out
    mismatches = []
    for sigma in (1.0, 1e-2, 1e-6):
        soft = soft_silhouette(v, f, height, width, sigma=sigma)
        assert soft.shape == (batch, height, width)
        mismatches.append(int(((soft > 0.5) != hard).sum()))
    assert mismatches[-1] == 0
    assert mismatches[0] >= mismatches[-1]


def test_soft_matches_dense_evaluation_despite_culling():
    """Skipping pairs beyond the influence radius changes no pixel by more than about eps."""
    v, f = _random_mesh(2, 12, 14, seed=7, faces=5)
    sigma, eps = 2.0, 1e-4
    soft = soft_silhouette(v, f, 12, 14, sigma=sigma, eps=eps)
    # dense: every pixel against every triangle, by brute force
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(14.0), indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 2).double() + 0.5
    dense = torch.ones(2, p.shape[0], dtype=torch.float64)
    for b in range(2):
        for tri in v[b][f]:
            d2 = torch.stack([_seg_dist_sq(p, tri[k], tri[(k + 1) % 3]) for k in range(3)], -1).min(-1).values
            inside = _inside(p, tri)
            dense[b] *= 1 - torch.sigmoid(torch.where(inside, 1.0, -1.0) * d2 / sigma)
    dense = (1 - dense).reshape(2, 12, 14)
    assert torch.allclose(soft, dense, atol=f.shape[0] * eps)


def _seg_dist_sq(p, a, b):
    t = ((p - a) @ (b - a) / ((b - a) @ (b - a))).clamp(0, 1)
    return ((p - (a + t[:, None] * (b - a))) ** 2).sum(-1)


def _inside(p, tri):
    def cross(o, a, b):
        return (a[0] - o[0]) * (b[:, 1] - o[1]) - (a[1] - o[1]) * (b[:, 0] - o[0])

    e = torch.stack([cross(tri[k], tri[(k + 1) % 3], p) for k in range(3)], -1)
    return (e > 0).all(-1) | (e < 0).all(-1)


def test_gradient_moves_triangle_towards_target():
    tri = torch.tensor([[[4.2, 3.1], [12.7, 5.3], [6.4, 13.8]]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    target = hard_silhouette(tri + torch.tensor([3.0, 0.0], dtype=torch.float64), faces, 20, 24).double()
    verts = tri.clone().requires_grad_(True)
    loss = ((soft_silhouette(verts, faces, 20, 24, sigma=1.0) - target) ** 2).mean()
    loss.backward()
    grad = verts.grad
    assert torch.isfinite(grad).all()
    assert (grad[..., 0] < 0).all()  # moving right (towards the target) lowers the loss
    with torch.no_grad():
        stepped = tri - 0.5 * grad / grad.abs().max()
        after = ((soft_silhouette(stepped, faces, 20, 24, sigma=1.0) - target) ** 2).mean()
    assert after < loss


def test_gradients_finite_for_degenerate_and_on_pixel_triangles():
    verts = torch.tensor([[[2.5, 2.5], [6.5, 2.5], [2.5, 6.5], [3.0, 3.0], [5.0, 5.0], [7.0, 7.0]]],
                         dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])  # the second is a line (zero area)
    soft_silhouette(verts, faces, 10, 10, sigma=0.5).sum().backward()
    assert torch.isfinite(verts.grad).all()


def test_face_mask_and_empty_image_parts():
    v, f = _random_mesh(2, 16, 16, seed=3)
    mask = torch.ones(2, f.shape[0], dtype=torch.bool)
    mask[1] = False
    soft = soft_silhouette(v, f, 16, 16, sigma=0.5, face_mask=mask)
    assert soft[0].max() > 0.5 and soft[1].max() == 0.0
    assert torch.equal(hard_silhouette(v, f, 16, 16, face_mask=mask)[1], torch.zeros(16, 16, dtype=torch.bool))
    far = soft_silhouette(v + 1000.0, f, 16, 16)  # everything outside the image
    assert far.abs().max() == 0.0


def test_influence_radius():
    assert influence_radius(1.0, 1e-4) == pytest.approx(9.2103 ** 0.5, rel=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    ({"verts_px": torch.zeros(2, 3)}, "verts_px"),
    ({"faces": torch.zeros(2, 3)}, "faces"),
    ({"faces": torch.tensor([[0, 1, 9]])}, "faces"),
    ({"face_mask": torch.ones(2, 1, dtype=torch.bool)}, "face_mask"),
])
def test_bad_input_names_the_tensor(kwargs, match):
    args = {"verts_px": torch.zeros(1, 3, 2), "faces": torch.tensor([[0, 1, 2]]), "height": 4, "width": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        soft_silhouette(**args)
