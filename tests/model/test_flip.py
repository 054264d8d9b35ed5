"""Horizontal flips of EHM parameters: involution, mirrored meshes and renders, mirror maps of shape bases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fitting.objectives import ehm_wholebody_points
from model.ehm import EHM
from model.flip import BODY_POSE_FLIP, EHM_JOINT_FLIP, ShapeMirror, _mirror_map, flip_ehm_params, mirror_index
from model.render import render_mesh
from schemas.keypoints import flip_keypoints

F64 = torch.float64


@pytest.fixture(scope="module")
def ehm(kit_dir) -> EHM:
    return EHM.from_dir(kit_dir).to(F64)


@pytest.fixture(scope="module")
def mirror(ehm) -> ShapeMirror:
    return ShapeMirror.from_ehm(ehm)


def _params(ehm: EHM, n: int, seed: int, face: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {k: rng.normal(0, 0.3, (n,) + s.shape) for k, s in ehm.param_specs().items() if k != "flame_eyelids"}
    p["hand_scale"] = 1 + 0.1 * p["hand_scale"]
    p["head_scale"] = 1 + 0.1 * p["head_scale"]
    p["transl"][:, 2] += 3.0
    p["global_orient"][:, 0] += np.pi
    if not face:
        p["flame_shape"][:] = 0
        p["flame_expression"][:] = 0
    return p


def test_permutations_swap_sides():
    assert sorted(EHM_JOINT_FLIP.tolist()) == list(range(55))
    assert (EHM_JOINT_FLIP[EHM_JOINT_FLIP] == np.arange(55)).all()
    assert EHM_JOINT_FLIP[0] == 0 and EHM_JOINT_FLIP[1] == 2 and EHM_JOINT_FLIP[16] == 17 and EHM_JOINT_FLIP[25] == 40
    assert BODY_POSE_FLIP[0] == 1 and BODY_POSE_FLIP[2] == 2  # left hip <-> right hip; spine1 stays


def test_flipping_twice_gives_the_parameters_back(ehm, mirror):
    params = _params(ehm, 3, 0)
    twice = flip_ehm_params(flip_ehm_params(params, mirror), mirror)
    for name, value in params.items():
        np.testing.assert_allclose(twice[name], value, atol=1e-9, err_msg=name)
    assert mirror.involution_error() < 1e-9
    tensors = {k: torch.as_tensor(v) for k, v in params.items()}
    back = flip_ehm_params(flip_ehm_params(tensors, mirror), mirror)
    assert all(torch.allclose(back[k], tensors[k], atol=1e-9) for k in tensors)


def test_flipped_parameters_pose_the_mirror_image(ehm, mirror):
    """Exact where the model's bases span their mirror images: the kit's body (betas) and hands; the kit's
    FLAME bases do not (see ShapeMirror.span_gaps), so the face coefficients are zero here."""
    assert mirror.span_gaps["betas"] < 1e-9 and mirror.span_gaps["flame_expression"] > 0.1
    params = _params(ehm, 2, 1, face=False)
    flipped = flip_ehm_params(params, mirror)
    out = ehm(**{k: torch.as_tensor(v) for k, v in params.items()})
    out_f = ehm(**{k: torch.as_tensor(v) for k, v in flipped.items()})
    vi = mirror_index(ehm().vertices.numpy())
    flip_x = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(out_f.vertices.numpy(), out.vertices.numpy()[:, vi] * flip_x, atol=1e-9)
    np.testing.assert_allclose(out_f.joints.numpy(), out.joints.numpy()[:, EHM_JOINT_FLIP] * flip_x, atol=1e-9)
    # the record's COCO-WholeBody keypoints: projected with the principal point in the image centre, the
    # flipped body's keypoints are the flipped keypoints (schemas.keypoints.FLIP_INDEX) of the original
    width = 400.0
    k = torch.tensor([[500.0, 0, width / 2], [0, 500.0, 300.0], [0, 0, 1]], dtype=F64)

    def pixels(o):
        points = ehm_wholebody_points(o.joints, o.keypoints, o.landmarks68)
        uvw = points @ k.T
        return (uvw[..., :2] / uvw[..., 2:]).numpy()

    expected, got = flip_keypoints(pixels(out), width), pixels(out_f)
    body_and_hands = np.r_[0:23, 91:133]
    np.testing.assert_allclose(got[:, body_and_hands], expected[:, body_and_hands], atol=1e-6)
    # the kit's face landmark embedding is close to, not exactly, mirror-symmetric (barycentric positions)
    np.testing.assert_allclose(got[:, 23:91], expected[:, 23:91], atol=0.5)


def test_flipped_render_is_the_render_of_the_flipped_parameters(ehm, mirror):
    params = _params(ehm, 1, 2, face=False)
    params["transl"][:] = [0.0, 0.2, 3.5]
    flipped = flip_ehm_params(params, mirror)
    size = 96
    k = torch.tensor([[150.0, 0, size / 2], [0, 150.0, size / 2], [0, 0, 1]], dtype=F64)
    rgb, alpha = render_mesh(ehm(**{n: torch.as_tensor(v) for n, v in params.items()}).vertices, ehm.faces, k, size, size)
    rgb_f, alpha_f = render_mesh(ehm(**{n: torch.as_tensor(v) for n, v in flipped.items()}).vertices, ehm.faces, k,
                                 size, size)
    assert alpha.sum() > 200
    differ = (alpha_f[0] != alpha[0].flip(-1)).float().mean()
    assert differ < 0.005  # coverage ties on edges may go either way
    both = (alpha_f[0] > 0) & (alpha[0].flip(-1) > 0)
    assert (rgb_f[0][both] - rgb[0].flip(-2)[both]).abs().max() < 0.05


def test_mirror_map_is_exact_for_a_basis_that_spans_its_mirror():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(20, 3))
    points = np.concatenate([points, points * [-1, 1, 1]])  # symmetric point set
    index = mirror_index(points)
    sym = rng.normal(size=(3, 20, 3))
    sym = np.concatenate([sym, sym * [-1, 1, 1]], 1)  # mirror-symmetric offsets
    anti = rng.normal(size=(2, 20, 3))
    anti = np.concatenate([anti, -anti * [-1, 1, 1]], 1)  # antisymmetric offsets
    basis = np.einsum("kj,jpd->kpd", rng.normal(size=(5, 5)), np.concatenate([sym, anti]))
    p, gap = _mirror_map(basis, index)
    assert gap < 1e-9
    c = rng.normal(size=(4, 5))
    offsets = np.einsum("nk,kpd->npd", c, basis)
    np.testing.assert_allclose(np.einsum("nk,kpd->npd", c @ p, basis), offsets[:, index] * [-1, 1, 1], atol=1e-9)


def test_bad_input_is_refused(mirror):
    with pytest.raises(KeyError, match="unknown EHM parameter"):
        flip_ehm_params({"smplx_betas": np.zeros(10)}, mirror)
    with pytest.raises(KeyError, match="needs 'betas'"):
        flip_ehm_params({"transl": np.zeros(3)}, mirror)
    with pytest.raises(ValueError, match="mirror-symmetric"):
        mirror_index(np.array([[0.1, 0.0, 0.0], [0.3, 0.0, 0.0]]))
