"""SMPL, SMPL-X, FLAME and MANO forward passes on the synthetic kit, against smplx's own ``lbs``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import smplx
import torch
from smplx.lbs import find_dynamic_lmk_idx_and_bcoords, lbs, vertices2landmarks

from model.assets.catalog import asset_file
from model.assets.loaders import BodyModelData, load_body_model
from model.body_models import EYELID_FILES, FLAME, MANO, SMPL, SMPLX, contour_lut_index
from model.rotations import rotvec_to_rotmat

F64 = torch.float64


@pytest.fixture(scope="module")
def models(kit_dir):
    """One float64 model of each kind, loaded once for the module."""
    return {
        "smpl": SMPL.from_dir(kit_dir).to(F64),
        "smplx": SMPLX.from_dir(kit_dir, num_betas=10, num_expression=10).to(F64),
        "flame": FLAME.from_dir(kit_dir, num_betas=20, num_expression=10, camera_frame="opengl").to(F64),
        "mano": MANO.from_dir(kit_dir, side="right").to(F64),
    }


@pytest.fixture(scope="module")
def arrays(kit_dir):
    """The official arrays as the assets loaders read them (the reference for the checks below)."""
    keys = {"smpl": "smpl_neutral", "smplx": "smplx_neutral", "flame": "flame", "mano": "mano_right"}
    return {kind: load_body_model(asset_file(kit_dir, key), kind) for kind, key in keys.items()}


def _params(model, batch: tuple[int, ...], seed: int = 0, scale: float = 0.4) -> dict[str, torch.Tensor]:
    """Random parameters for every forward keyword of ``model`` (coefficients at full length)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(*batch, *spec.shape, generator=gen, dtype=F64) * scale
        for name, spec in model.param_specs().items()
        if name != "eyelids" or model.has_eyelids
    }


def _reference(model, arrays: BodyModelData, params: dict[str, torch.Tensor]):
    """smplx's ``lbs`` on the official arrays with the same coefficients and joint rotations."""
    n = params["transl"].shape[0]
    coeffs, dirs = [], []
    for name, size in model.shape_sizes.items():
        coeffs.append(params[name])
        offset = 0 if name == "betas" else arrays.shapedirs.shape[-1] - 100 if arrays.shapedirs.shape[-1] >= 400 else 10
        dirs.append(arrays.shapedirs[:, :, offset : offset + size])
    pose = torch.cat([params[name].reshape(n, -1) for name, _ in model.POSE_LAYOUT], dim=1)
    verts, joints = lbs(
        torch.cat(coeffs, 1), pose, torch.tensor(arrays.v_template),
        torch.tensor(np.concatenate(dirs, -1)),
        torch.tensor(arrays.posedirs.reshape(-1, arrays.posedirs.shape[-1]).T),
        torch.tensor(arrays.j_regressor), torch.tensor(arrays.parents), torch.tensor(arrays.weights),
    )
    shift = params["transl"][:, None]
    return verts + shift, joints + shift


@pytest.mark.parametrize("kind", ["smpl", "smplx", "flame", "mano"])
def test_zero_pose_gives_the_template(models, arrays, kind):
    out = models[kind]()
    ref = arrays[kind]
    np.testing.assert_allclose(out.vertices.numpy(), ref.v_template, atol=1e-6)
    np.testing.assert_allclose(out.joints.numpy(), ref.j_regressor @ ref.v_template, atol=1e-6)
    assert out.vertices.shape == (ref.v_template.shape[0], 3)
    torch.testing.assert_close(out.joint_rotations, torch.eye(3, dtype=F64).expand(len(ref.parents), 3, 3))


@pytest.mark.parametrize("kind", ["smpl", "smplx", "flame", "mano"])
def test_forward_matches_smplx_lbs(models, arrays, kind):
    model = models[kind]
    params = _params(model, (3,))
    params.pop("eyelids", None)  # smplx has no eyelids
    out = model(**params)
    verts, joints = _reference(model, arrays[kind], params)
    torch.testing.assert_close(out.vertices, verts, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.joints, joints, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.keypoints, out.vertices[:, model.keypoint_ids])


def test_smplx_matches_the_smplx_package(models, kit_dir):
    """The kit loads in smplx unchanged; with a flat hand mean and no PCA, both agree (keypoints too)."""
    model = models["smplx"]
    ref_model = smplx.create(
        str(kit_dir), model_type="smplx", gender="neutral", use_pca=False, flat_hand_mean=True,
        num_betas=10, num_expression_coeffs=10,
    ).to(F64)
    params = _params(model, (2,), seed=3)
    out = model(**params)
    flat = {k: v.reshape(2, -1) for k, v in params.items()}
    ref = ref_model(**flat)
    torch.testing.assert_close(out.vertices, ref.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.joints, ref.joints[:, :55], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.keypoints, ref.joints[:, 55:76], atol=1e-5, rtol=0)


def test_joint_rotations_are_the_chain_products(models):
    model = models["smpl"]
    params = _params(model, (2,), seed=5)
    out = model(**params)
    local = rotvec_to_rotmat(torch.cat([params["global_orient"][:, None], params["body_pose"]], 1))
    for j, p in enumerate(model.parents):
        want = local[:, j] if p < 0 else out.joint_rotations[:, p] @ local[:, j]
        torch.testing.assert_close(out.joint_rotations[:, j], want)


def test_flame_landmarks_match_smplx(models):
    model = models["flame"]
    params = _params(model, (4,), seed=7)
    params.pop("eyelids", None)
    params["global_orient"] = torch.tensor([[0, a, 0] for a in (0.0, 0.3, -0.5, 1.2)], dtype=F64)
    out = model(**params)
    n = 4
    full_pose = torch.cat([params[k].reshape(n, -1) for k, _ in model.POSE_LAYOUT], 1)
    dyn_faces, dyn_bary = find_dynamic_lmk_idx_and_bcoords(
        out.vertices, full_pose, model.dynamic_lmk_faces, model.dynamic_lmk_bary, torch.tensor([1, 0])
    )
    faces = torch.cat([dyn_faces, model.static_lmk_faces.expand(n, -1)], 1)
    bary = torch.cat([dyn_bary, model.static_lmk_bary.expand(n, -1, -1)], 1)
    want = vertices2landmarks(out.vertices, model.faces, faces, bary)
    torch.testing.assert_close(out.landmarks68, want)
    assert len(set(contour_lut_index(out.joint_rotations[:, 1], "opengl").tolist())) == 4


def test_contour_lut_follows_the_camera_frame():
    """A head turned by the same angle towards the camera picks the same row in either frame."""
    yaw = rotvec_to_rotmat(torch.tensor([[0.0, 0.35, 0.0], [0.0, -0.35, 0.0]], dtype=F64))
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    gl = contour_lut_index(yaw, "opengl")
    assert gl.tolist() == [59, 20]  # smplx's angle is minus the y rotation: +20 deg -> row 39 + 20
    assert contour_lut_index(flip @ yaw, "opencv").tolist() == gl.tolist()


@pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
def test_batch_shapes(models, batch):
    model = models["smplx"]
    out = model(**_params(model, batch))
    assert out.vertices.shape == (*batch, model.num_vertices, 3)
    assert out.joints.shape == (*batch, 55, 3)
    assert out.joint_rotations.shape == (*batch, 55, 3, 3)
    assert out.keypoints.shape == (*batch, 21, 3)


def test_parameters_broadcast_and_short_coefficients_are_padded(models):
    model = models["smplx"]
    betas = torch.randn(4, dtype=F64)
    pose = torch.randn(2, 3, 21, 3, dtype=F64) * 0.3
    out = model(betas=betas, body_pose=pose)
    assert out.vertices.shape == (2, 3, model.num_vertices, 3)
    padded = torch.cat([betas, torch.zeros(6, dtype=F64)])
    single = model(betas=padded, body_pose=pose[1, 2])
    torch.testing.assert_close(out.vertices[1, 2], single.vertices)


def test_local_rotmats_and_shape_coefficients_fill_what_is_left_out(models):
    model = models["smplx"]
    pose = torch.randn(2, 21, 3, dtype=F64) * 0.3
    rotmats = model.local_rotmats({"body_pose": pose}, 2)
    assert rotmats.shape == (2, 55, 3, 3)
    torch.testing.assert_close(rotmats[:, 1:22], rotvec_to_rotmat(pose))
    eye = torch.eye(3, dtype=F64)
    assert torch.equal(rotmats[:, 0], eye.expand(2, 3, 3)) and torch.equal(rotmats[:, 22:], eye.expand(2, 33, 3, 3))
    with pytest.raises(KeyError, match="eye_pose"):
        model.local_rotmats({"eye_pose": torch.zeros(2, 6, dtype=F64)}, 2)
    betas = torch.randn(2, 4, dtype=F64)
    coeffs = model.shape_coefficients({"betas": betas}, 2)  # betas padded to 10, expression all zero
    assert coeffs.shape == (2, 20)
    assert torch.equal(coeffs[:, :4], betas) and not coeffs[:, 4:].any()
    # the same as the forward pass's own handling of short and missing parameters
    out = model.pose(coeffs, rotmats)
    full = model(betas=betas, body_pose=pose)
    torch.testing.assert_close(out[0], full.vertices)


def test_float32_agrees_with_float64(models):
    model = models["smplx"]
    params = _params(model, (2,))
    out64 = model(**params)
    out32 = copy.deepcopy(model).to(torch.float32)(**{k: v.float() for k, v in params.items()})
    assert out32.vertices.dtype == torch.float32
    torch.testing.assert_close(out32.vertices.double(), out64.vertices, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["smpl", "smplx", "flame", "mano"])
def test_gradients_are_finite_at_zero_and_away(models, kind):
    model = models[kind]
    for scale in (0.0, 0.5):
        params = {k: v.requires_grad_(True) for k, v in _params(model, (2,), scale=scale).items()}
        out = model(**params)
        loss = out.vertices.square().sum() + out.joints.square().sum()
        if out.landmarks68 is not None:
            loss = loss + out.landmarks68.square().sum()
        loss.backward()
        for name, value in params.items():
            assert torch.isfinite(value.grad).all(), name
            assert value.grad.abs().sum() > 0 or name == "eyelids", name


def test_shape_errors_name_the_tensor(models):
    model = models["smplx"]
    with pytest.raises(ValueError, match=r"body_pose: expected shape \[\.\.\., 21, 3\]"):
        model(body_pose=torch.zeros(2, 63, dtype=F64))
    with pytest.raises(ValueError, match=r"betas: expected shape \[\.\.\., 10\] \(last dimension at most 10\)"):
        model(betas=torch.zeros(11, dtype=F64))
    with pytest.raises(ValueError, match="global_orient: dtype torch.float32 does not match"):
        model(global_orient=torch.zeros(3))
    with pytest.raises(ValueError, match=r"do not broadcast together: betas \[2\], transl \[3\]"):
        model(betas=torch.zeros(2, 10, dtype=F64), transl=torch.zeros(3, 3, dtype=F64))
    with pytest.raises(TypeError, match="jaw_pose: expected a torch.Tensor"):
        model(jaw_pose=np.zeros(3))


@pytest.fixture(scope="module")
def kit_with_eyelids(kit_dir, tmp_path_factory):
    """The kit (linked, not copied) plus random eyelid blend shapes in SMIRK's [1, V, 3] layout."""
    root = tmp_path_factory.mktemp("kit_eyelids")
    for entry in kit_dir.iterdir():
        if entry.name != "flame":
            (root / entry.name).symlink_to(entry)
    (root / "flame").mkdir()
    for entry in (kit_dir / "flame").iterdir():
        (root / "flame" / entry.name).symlink_to(entry)
    rng = np.random.default_rng(0)
    shapes = rng.normal(scale=1e-3, size=(2, 1, 5023, 3))
    for name, shape in zip(EYELID_FILES, shapes):
        np.save(root / name, shape)
    return root, shapes[:, 0]


def test_eyelid_blend_shapes_add_in_the_rest_pose(kit_with_eyelids, models):
    root, shapes = kit_with_eyelids
    model = FLAME.from_dir(root, num_betas=20, num_expression=10).to(F64)
    assert model.has_eyelids and not models["flame"].has_eyelids
    weights = torch.tensor([[0.3, -0.7]], dtype=F64)
    out = model(eyelids=weights)
    want = torch.as_tensor(model.v_template + 0.3 * shapes[0] - 0.7 * shapes[1])
    torch.testing.assert_close(out.vertices[0], want, atol=1e-7, rtol=0)
    torch.testing.assert_close(out.joints[0], model().joints)  # eyelids do not move the joints


def test_eyelids_without_the_files_are_refused(models, kit_with_eyelids):
    with pytest.raises(ValueError, match=r"eyelids: this FLAME has no eyelid blend shapes \(flame/l_eyelid\.npy"):
        models["flame"](eyelids=torch.zeros(2, dtype=F64))
    root, _ = kit_with_eyelids
    (root / EYELID_FILES[1]).rename(root / "flame" / "moved.npy")
    try:
        with pytest.raises(FileNotFoundError, match="r_eyelid.npy is missing"):
            FLAME.from_dir(root)
    finally:
        (root / "flame" / "moved.npy").rename(root / EYELID_FILES[1])


def test_too_many_components_are_refused(kit_dir):
    with pytest.raises(ValueError, match="shape components, asked for 11"):
        MANO.from_dir(kit_dir, num_betas=11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(models):
    model = models["smplx"]
    params = _params(model, (2,))
    cpu = model(**params)
    gpu = copy.deepcopy(model).to("cuda")(**{k: v.cuda() for k, v in params.items()})
    torch.testing.assert_close(gpu.vertices.cpu(), cpu.vertices)
