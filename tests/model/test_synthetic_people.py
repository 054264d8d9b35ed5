"""Synthetic people: the joint-limit table, the pose distributions, the texture and backdrops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.ehm import EHM
from model.flip import BODY_POSE_FLIP
from model.synthetic_people import STANDING, PoseDistribution, _joint_table, backdrop, body_texture, sample_ehm_params, texture_regions


def test_joint_table_is_ordered_and_mirrored():
    lo, neutral, hi = _joint_table()
    assert (lo <= neutral).all() and (neutral <= hi).all()
    mirror = np.array([1.0, -1.0, -1.0])
    for j, partner in enumerate(BODY_POSE_FLIP):
        if partner != j:  # right side = mirror image of the left one
            assert np.allclose(neutral[j], neutral[partner] * mirror)
            assert np.allclose(np.sort(np.stack([lo[j], hi[j]]) * mirror, 0), np.stack([lo[partner], hi[partner]]))


def test_varied_poses_stay_within_the_limits(kit_dir):
    ehm = EHM.from_dir(kit_dir)
    lo, _, hi = _joint_table()
    p = sample_ehm_params(ehm, 200, np.random.default_rng(0), PoseDistribution(spread=2.0))
    assert (p["body_pose"] >= lo - 1e-6).all() and (p["body_pose"] <= hi + 1e-6).all()
    assert p["body_pose"].std(0).max() > 0.3  # they do vary
    assert {k: v.shape[1:] for k, v in p.items()} == {k: s.shape for k, s in ehm.param_specs().items()
                                                      if k != "flame_eyelids"}
    assert all(v.dtype == np.float32 for v in p.values())
    s = sample_ehm_params(ehm, 50, np.random.default_rng(0), STANDING)
    assert (np.abs(s["body_pose"][:, 15, 2] + 1.15) < 0.6).all()  # arms lowered
    with pytest.raises(ValueError, match="kind"):
        PoseDistribution(kind="dancing")


def test_texture_and_backdrop(kit_dir):
    ehm = EHM.from_dir(kit_dir)
    with torch.no_grad():
        regions = texture_regions(ehm)
    assert all(mask.any() for mask in regions.values())
    assert not (regions["face"] & ~regions["head"]).any()
    colours = body_texture(regions, np.random.default_rng(1))
    assert colours.shape == (ehm.lbs_weights.shape[0], 3) and colours.min() >= 0 and colours.max() <= 1
    assert not np.allclose(colours[regions["face"]].mean(0), colours[regions["head"] & ~regions["face"]].mean(0))
    image = backdrop(np.random.default_rng(2), 40, 30, clutter=3)
    assert image.shape == (40, 30, 3) and 0 <= image.min() and image.max() <= 1
