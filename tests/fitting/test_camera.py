"""Default intrinsics, projection and translation estimates."""

from __future__ import annotations

import math

import pytest
import torch

from fitting.camera import default_intrinsics, project, solve_translation, translation_from_box


def test_default_intrinsics_use_the_image_diagonal() -> None:
    k = default_intrinsics(640, 480)
    assert float(k[0, 0]) == pytest.approx(800.0) and float(k[1, 1]) == pytest.approx(800.0)
    assert (float(k[0, 2]), float(k[1, 2])) == (320.0, 240.0)
    with pytest.raises(ValueError, match="image size"):
        default_intrinsics(0, 480)


def test_project_is_a_pinhole() -> None:
    k = default_intrinsics(640, 480)
    uv = project(torch.tensor([[[0.0, 0.0, 2.0], [1.0, -0.5, 4.0]]]), k[None])
    torch.testing.assert_close(uv, torch.tensor([[[320.0, 240.0], [520.0, 140.0]]]))


def test_solve_translation_recovers_the_true_translation() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(3, 10, 3, generator=gen) * 0.4
    truth = torch.tensor([[0.2, -0.1, 4.0], [-1.0, 0.5, 8.0], [0.0, 0.0, 3.0]])
    k = default_intrinsics(1000, 800).expand(3, 3, 3)
    uv = project(points + truth[:, None], k)
    weights = torch.ones(3, 10)
    weights[2, 1:] = 0  # one point cannot fix a translation
    t, ok = solve_translation(points, uv, weights, k)
    assert ok.tolist() == [True, True, False]
    torch.testing.assert_close(t[:2], truth[:2], atol=1e-4, rtol=0)


def test_translation_from_box() -> None:
    k = default_intrinsics(1000, 1000)[None]
    f = math.hypot(1000, 1000)
    t = translation_from_box(torch.tensor([1.7]), torch.tensor([[450.0, 300.0, 550.0, 700.0]]), k)
    torch.testing.assert_close(t, torch.tensor([[0.0, 0.0, f * 1.7 / 400.0]]))
