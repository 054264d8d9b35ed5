"""Using a regressor (model/pear.py): crop geometry, the crop camera against the record's camera, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoints import CheckpointError
from model.networks.pear import PEAR_TINY, PearRegressor, cam_to_translation, project_crop
from model.pear import (
    apply_affine_2d,
    box_window,
    camera_translation,
    compose_affine,
    crop_cam,
    load_regressor,
    region_affine,
    warp_image,
    window_affine,
)


def test_window_maps_the_box_onto_the_crop():
    box = np.array([100.0, 50.0, 160.0, 250.0])  # 60 x 200: taller than 192 : 256
    centre, height = box_window(box, 192 / 256, 1.2)
    assert np.allclose(centre, [130, 150]) and height == pytest.approx(240)
    wide_centre, wide_height = box_window(np.array([0.0, 0.0, 300.0, 100.0]), 0.75, 1.0)
    assert wide_height == pytest.approx(400)  # widened to the aspect first
    a = window_affine(centre, height, (256, 192))
    assert np.allclose(apply_affine_2d(a, centre), [96, 128])
    assert np.allclose(apply_affine_2d(a, [130, 30]), [96, 0])  # the window's top edge
    flipped = window_affine(centre, height, (256, 192), flip=True)
    p = np.array([[110.0, 80.0]])
    assert np.allclose(apply_affine_2d(flipped, p)[0, 0], 192 - apply_affine_2d(a, p)[0, 0])
    rotated = window_affine(centre, height, (256, 192), rotation=np.pi / 2)
    assert np.allclose(apply_affine_2d(rotated, [140, 150]), [96, 128 + 10 * 256 / 240])  # x right -> y down


def test_warp_samples_the_right_pixels():
    image = np.zeros((300, 400, 3), np.uint8)
    image[100:110, 200:210] = 255  # a white square centred at (205, 105)
    a = window_affine(np.array([205.0, 105.0]), 40.0, (64, 48))
    crop = warp_image(image, a, (64, 48))
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert np.allclose([xs.mean() + 0.5, ys.mean() + 0.5], [24, 32], atol=0.6)
    # through a stored crop: the crop of region (150, 50)-(250, 150) at 50 px, then the same window
    stored = warp_image(image, window_affine(np.array([200.0, 100.0]), 100.0, (50, 50)), (50, 50))
    via = warp_image(stored, compose_affine(a, region_affine(np.array([150.0, 50, 250, 150]), (50, 50))), (64, 48))
    ys2, xs2 = np.nonzero(via[..., 0] > 128)
    assert np.allclose([xs2.mean(), ys2.mean()], [xs.mean(), ys.mean()], atol=1.0)


def test_crop_camera_and_record_camera_agree():
    rng = np.random.default_rng(0)
    k = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    transl = np.array([[0.3, -0.2, 4.0]])
    box_centre = (k @ transl[0])[:2] / transl[0, 2]
    a = window_affine(box_centre + [15, -10], 300.0, (256, 192))
    f = 5000.0
    cam = crop_cam(transl, a[None], k[None], f, (256, 192))
    assert np.allclose(camera_translation(cam, a[None], k[None], f, (256, 192)), transl)
    # points at the origin's depth project to the same crop pixel through either camera
    points = np.concatenate([rng.uniform(-0.5, 0.5, (20, 2)), np.zeros((20, 1))], -1)
    real = (points + transl) @ k.T
    via_record = apply_affine_2d(a, real[:, :2] / real[:, 2:])
    t_crop = cam_to_translation(torch.as_tensor(cam), f, 256)
    via_crop = project_crop(torch.as_tensor(points)[None] + t_crop[:, None], f, 256, 192)[0].numpy()
    assert np.allclose(via_crop, via_record, atol=1e-6)


def test_load_regressor_reads_pearl_checkpoints_and_refuses_others(tmp_path):
    net = PearRegressor(PEAR_TINY)
    state = {f"regressor.{k}": v for k, v in net.state_dict().items()}
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": state, "pearl": {"model": PEAR_TINY.to_dict(), "config": {"seed": 3}}}, good)
    loaded = load_regressor(good)
    assert loaded.config == PEAR_TINY and loaded.train_config == {"seed": 3} and len(loaded.digest) == 12
    assert torch.equal(loaded.network.init_params, net.init_params)
    torch.save({"state_dict": state}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="no 'pearl' entry"):
        load_regressor(tmp_path / "plain.ckpt")
    bad = {"state_dict": {k: v for k, v in state.items() if "decoder" not in k}, "pearl": {"model": PEAR_TINY.to_dict()}}
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_regressor(tmp_path / "bad.ckpt")


def test_the_predictor_keeps_every_predicted_face_parameter(tmp_path):
    from model.pear import PearPredictor

    torch.manual_seed(0)
    net = PearRegressor(PEAR_TINY)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"regressor.{k}": v for k, v in net.state_dict().items()},
                "pearl": {"model": PEAR_TINY.to_dict(), "config": {}}}, path)
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    k = np.array([[400.0, 0, 160], [0, 400, 120], [0, 0, 1]])
    predictor, box = PearPredictor(path, device="cpu"), np.array([[100.0, 40, 220, 230]])
    columns = predictor.predict([image], box, k[None])
    outputs, _ = predictor.network_outputs([image], np.zeros(1, np.int64), box)
    assert np.allclose(columns["flame_eyelids"], np.asarray(outputs["flame_eyelids"]), atol=1e-6)
