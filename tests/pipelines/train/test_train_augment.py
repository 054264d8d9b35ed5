"""From records to training samples: gated supervision, crop geometry against known answers, flips, rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fitting.camera import project
from fitting.objectives import ehm_wholebody_points
from model.ehm import EHM
from model.ehm_record import ehm_params_from_columns
from model.networks.pear import PEAR_TINY
from model.pear import apply_affine_2d
from pipelines.io.shards import iter_wds
from model.flip import flip_ehm_params
from pipelines.train.augment import PARAM_PREFIX, SamplePreparer
from pipelines.train.config import config_from_dict
from pipelines.train.data import parse_record
from schemas.keypoints import flip_keypoints


def _preparer(mirror, **augment) -> SamplePreparer:
    config = config_from_dict({"data": {"train": ["x.tar"], "augment": augment}})
    return SamplePreparer(config.data, PEAR_TINY, mirror)


def flip_sample(sample, mirror, width: int) -> dict[str, np.ndarray]:
    """The mirror image of a prepared sample, written independently of :class:`SamplePreparer`: image and
    keypoints mirrored (left/right exchanged), EHM parameters flipped, hand flags exchanged."""
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][:, :, ::-1])
    out["kp2d"] = flip_keypoints(np.asarray(sample["kp2d"], np.float32), width).astype(np.float32)
    out["has_hands"] = np.asarray(sample["has_hands"])[::-1].copy()
    params = {k[len(PARAM_PREFIX):]: v for k, v in sample.items() if k.startswith(PARAM_PREFIX)}
    out.update({PARAM_PREFIX + k: np.asarray(v, np.float32) for k, v in flip_ehm_params(params, mirror).items()})
    affine = np.asarray(sample["affine"], np.float64).copy()
    affine[0] = -affine[0]
    affine[0, 2] += width
    out["affine"] = affine.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def records(corpus):
    return [parse_record(raw) for raw in iter_wds(str(corpus / "wds" / "val-000000.tar"), decode=False)]


def test_supervision_follows_the_flags_and_gates(records, mirror):
    record, _ = records[0]
    sup = _preparer(mirror).supervision(record)
    assert sup["has_body"] == 1 and sup["has_face"] == 1 and sup["has_hands"].tolist() == [1, 1]
    assert (sup["kp_weight"] > 0).sum() > 50
    gated = dict(record, quality_reproj_norm_body=np.float32(0.5), quality_flags=np.int32(16 | 2))
    sup = _preparer(mirror).supervision(gated)  # body reprojection too high, face and right hand gated
    assert sup["has_body"] == 0 and sup["has_face"] == 0 and sup["has_hands"].tolist() == [1, 0]
    empty = dict(gated, has_hands=np.zeros(2, bool), kp2d_wholebody=np.zeros((133, 3), np.float32))
    assert _preparer(mirror).supervision(empty) is None


def test_unaugmented_keypoints_are_the_projected_targets(records, mirror, kit_dir):
    """Known answers: the corpus keypoints are the projected EHM points plus about a pixel of noise."""
    prep = _preparer(mirror, enabled=False)
    ehm = EHM.from_dir(kit_dir)
    errors = []
    for record, crop in records[:4]:
        sample = prep(record, crop, prep.supervision(record), None)
        params = ehm_params_from_columns({k: v[None] for k, v in record.items() if not isinstance(v, str)})
        with torch.no_grad():
            out = ehm(**params)
            uv = project(ehm_wholebody_points(out.joints, out.keypoints, out.landmarks68),
                         torch.as_tensor(record["cam_intrinsics"])[None])[0].numpy()
        crop_uv = apply_affine_2d(sample["affine"].astype(np.float64), uv)
        visible = sample["kp2d"][:, 2] > 0
        errors.append(np.linalg.norm(crop_uv[visible] - sample["kp2d"][visible, :2], axis=-1))
        assert sample["image"].shape == (3, *PEAR_TINY.image_size) and sample["image"].std() > 10
    scale = float(np.hypot(*sample["affine"][:, 0]))
    assert np.median(np.concatenate(errors)) < 2.0 * scale


def test_a_mirrored_sample_is_the_flip_of_the_plain_one(records, mirror):
    record, crop = records[1]
    plain = _preparer(mirror, scale=0.0, translation=0.0, rotation_prob=0.0, color=0.0, flip_prob=0.0)
    mirrored = _preparer(mirror, scale=0.0, translation=0.0, rotation_prob=0.0, color=0.0, flip_prob=1.0)
    sup = plain.supervision(record)
    a = plain(record, crop, sup, np.random.default_rng(0))
    b = mirrored(record, crop, sup, np.random.default_rng(0))
    expected = flip_sample(a, mirror, PEAR_TINY.image_size[1])
    for name in expected:
        tol = 2.0 if name == "image" else 1e-4  # OpenCV's fixed-point bilinear weights round either way
        assert np.abs(np.asarray(b[name], np.float64) - np.asarray(expected[name], np.float64)).max() <= tol, name
    twice = flip_sample(expected, mirror, PEAR_TINY.image_size[1])
    for name in a:
        assert np.allclose(np.asarray(twice[name], np.float64), np.asarray(a[name], np.float64), atol=1e-5), name


def test_rotation_turns_the_keypoints_and_the_orientation_together(records, mirror):
    from scipy.spatial.transform import Rotation

    record, crop = records[2]
    rotated = _preparer(mirror, scale=0.0, translation=0.0, rotation_prob=1.0, color=0.0, flip_prob=0.0)
    plain = _preparer(mirror, enabled=False)
    sup = plain.supervision(record)
    a = plain(record, crop, sup, None)
    b = rotated(record, crop, sup, np.random.default_rng(4))
    rel = Rotation.from_rotvec(b["params.global_orient"]) * Rotation.from_rotvec(a["params.global_orient"]).inv()
    axis_angle = rel.as_rotvec()
    assert np.allclose(axis_angle[:2], 0, atol=1e-5) and abs(axis_angle[2]) > 0.01  # about the camera axis

    def direction(kp):
        v = kp[6, :2] - kp[12, :2]  # right hip -> right shoulder
        return np.arctan2(v[1], v[0])

    turned = (direction(b["kp2d"]) - direction(a["kp2d"]) + np.pi) % (2 * np.pi) - np.pi
    assert turned == pytest.approx(axis_angle[2], abs=1e-4)
