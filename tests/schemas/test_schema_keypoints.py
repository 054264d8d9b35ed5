"""The keypoint layouts of the record: COCO-WholeBody-133, the MediaPipe mapping tables, the flip."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import keypoints as wb


def test_layout_covers_133_named_keypoints_in_order():
    assert len(wb.KEYPOINT_NAMES) == wb.NUM_KEYPOINTS == 133
    assert len(set(wb.KEYPOINT_NAMES)) == 133
    parts = [wb.BODY, wb.FEET, wb.FACE, wb.LEFT_HAND, wb.RIGHT_HAND]
    assert [p.start for p in parts] == [0, 17, 23, 91, 112]
    assert [p.stop - p.start for p in parts] == [17, 6, 68, 21, 21]
    assert wb.KEYPOINT_NAMES[wb.LEFT_HAND.start] == "left_hand_root"
    assert wb.KEYPOINT_NAMES[wb.RIGHT_HAND.stop - 1] == "right_pinky_finger4"
    assert wb.KEYPOINT_NAMES[16] == "right_ankle" and wb.KEYPOINT_NAMES[18] == "left_small_toe"


def test_mapping_tables_fill_133_unique_targets():
    pose_targets = [dst for dst, _ in wb.POSE_TO_WHOLEBODY]
    targets = (
        pose_targets
        + [toe for toe, _ in wb.SMALL_TOES]
        + [wb.FACE.start + i for i in range(len(wb.FACE_MESH_TO_IBUG68))]
        + [hand.start + wb.HAND_TO_WHOLEBODY[i] for hand in wb.HANDS for i in range(21)]
    )
    assert len(targets) == 133 and sorted(targets) == list(range(133))
    assert set(wb.POSE_APPROXIMATE) <= set(pose_targets)
    assert all(big in pose_targets for _, big in wb.SMALL_TOES)
    assert all(0 <= src < 33 for _, src in wb.POSE_TO_WHOLEBODY)
    assert len(set(src for _, src in wb.POSE_TO_WHOLEBODY)) == len(wb.POSE_TO_WHOLEBODY)
    assert all(0 <= v < 468 for v in wb.FACE_MESH_TO_IBUG68)  # mesh vertices, never iris points
    assert sorted(wb.HAND_TO_WHOLEBODY) == list(range(21))


def test_pose_mapping_keeps_sides():
    # BlazePose: odd indices from 11 on are the person's left (11 left shoulder, 23 left hip, 29 left heel).
    for dst, src in wb.POSE_TO_WHOLEBODY:
        name = wb.KEYPOINT_NAMES[dst]
        if src >= 11:
            assert name.startswith("left_" if src % 2 == 1 else "right_"), (dst, src)


def test_flip_pairs_are_a_symmetric_involution():
    idx = wb.FLIP_INDEX
    assert sorted(idx) == list(range(133))
    assert np.array_equal(idx[idx], np.arange(133))
    for i, j in wb.FLIP_PAIRS:
        a, b = wb.KEYPOINT_NAMES[i], wb.KEYPOINT_NAMES[j]
        if not a.startswith("face"):
            assert a.replace("left_", "right_") == b or a.replace("right_", "left_") == b, (a, b)
    # centre points stay: nose, nose bridge and chin of the face
    for k in (0, wb.FACE.start + 8, wb.FACE.start + 27, wb.FACE.start + 30, wb.FACE.start + 51):
        assert idx[k] == k
    assert idx[wb.FACE.start + 36] == wb.FACE.start + 45  # outer eye corners
    assert idx[wb.FACE.start + 48] == wb.FACE.start + 54  # mouth corners
    assert len(wb.FLIP_PAIRS) == 8 + 3 + 29 + 21  # body, feet, face, hands


def test_flip_keypoints_mirrors_x_and_swaps_sides():
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 100, size=(2, 133, 3))
    flipped = wb.flip_keypoints(kp, image_width=100.0)
    assert np.allclose(flipped[:, 5, 0], 100.0 - kp[:, 6, 0])  # left shoulder <- mirrored right shoulder
    assert np.allclose(flipped[:, 5, 1:], kp[:, 6, 1:])
    assert np.allclose(wb.flip_keypoints(flipped, 100.0), kp)
    with pytest.raises(ValueError, match="kp must have shape"):
        wb.flip_keypoints(np.zeros((17, 3)), 100.0)


def test_skeleton_links_are_valid():
    links = wb.SKELETON
    assert all(0 <= a < 133 and 0 <= b < 133 and a != b for a, b in links)
    assert len(set(map(frozenset, links))) == len(links)
    linked = {k for link in links for k in link}
    assert linked == set(range(133))  # every keypoint is drawn
