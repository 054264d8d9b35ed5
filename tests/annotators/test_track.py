"""Person tracks across video frames: crossing people keep their ids, short gaps are bridged, long ones end
a track, ids are stable and still images untouched."""

from __future__ import annotations

import numpy as np
import pytest

from annotators.base import ERROR_STAGE, STAGES
from annotators.track import TrackConfig, TrackStage, keypoint_similarity, track_clip

W_BOX, H_BOX = 80.0, 200.0


def skeleton(cx: float, top: float, arms_up: bool) -> np.ndarray:
    """17 COCO body keypoints ``[17, 3]`` of a standing person in a box centred at ``cx``; arms up or down."""
    kp = np.zeros((17, 3))
    rel = {0: (0, 0.08), 1: (0.1, 0.06), 2: (-0.1, 0.06), 3: (0.2, 0.08), 4: (-0.2, 0.08), 5: (0.3, 0.25),
           6: (-0.3, 0.25), 11: (0.2, 0.55), 12: (-0.2, 0.55), 13: (0.2, 0.75), 14: (-0.2, 0.75), 15: (0.2, 0.95),
           16: (-0.2, 0.95)}
    arms = {7: (0.45, 0.1), 8: (-0.45, 0.1), 9: (0.4, -0.05), 10: (-0.4, -0.05)} if arms_up else \
           {7: (0.35, 0.4), 8: (-0.35, 0.4), 9: (0.3, 0.55), 10: (-0.3, 0.55)}
    for k, (dx, dy) in {**rel, **arms}.items():
        kp[k] = (cx + dx * W_BOX, top + dy * H_BOX, 0.9)
    return kp


def crossing(frames: int = 21, speed: float = 12.0, skip: tuple[int, ...] = ()):
    """Two people walking towards each other along one line; person 0 (arms up) from the left. Returns
    frames ``[N]``, boxes ``[N, 4]``, keypoints ``[N, 17, 3]`` and who each row is ``[N]``; rows of a frame
    listed by box area then left edge (the persons stage's order), so the list order swaps at the crossing."""
    out_f, out_b, out_k, who = [], [], [], []
    for f in range(frames):
        xs = (100 + speed * f, 100 + speed * (frames - 1) - speed * f)
        rows = []
        for person, cx in enumerate(xs):
            if (f, person) in [(s, 1) for s in skip]:
                continue
            box = [cx - W_BOX / 2, 50.0, cx + W_BOX / 2, 50.0 + H_BOX]
            rows.append((box[0], person, box, skeleton(cx, 50.0, arms_up=person == 0)))
        for _, person, box, kp in sorted(rows, key=lambda r: r[0]):
            out_f.append(f), out_b.append(box), out_k.append(kp), who.append(person)
    return np.array(out_f), np.array(out_b), np.array(out_k), np.array(who)


def test_crossing_people_keep_their_ids():
    frames, boxes, kp, who = crossing()
    ids = track_clip(frames, boxes, kp, TrackConfig())
    assert {int(ids[who == 0][0]), int(ids[who == 1][0])} == {0, 1}
    assert len(set(ids[who == 0])) == 1 and len(set(ids[who == 1])) == 1  # no id switch at the crossing
    # positions alone, without velocity or keypoints, swap ids where the people cross: those are what hold them
    no_motion = track_clip(frames, boxes, None, TrackConfig(velocity_smoothing=0.0, keypoint_weight=0.0))
    assert len(set(no_motion[who == 0])) > 1 or len(set(no_motion[who == 1])) > 1


def test_short_gaps_are_bridged_and_long_ones_end_the_track():
    frames, boxes, kp, who = crossing(skip=(3, 4, 5))
    ids = track_clip(frames, boxes, kp, TrackConfig(max_age=5))
    assert len(set(ids[who == 1])) == 1
    ids = track_clip(frames, boxes, kp, TrackConfig(max_age=2))
    assert len(set(ids[who == 1])) == 2 and set(ids) == {0, 1, 2}  # the lost person got a new track


def test_keypoint_similarity_known_answers():
    a = skeleton(100, 50, True)
    assert keypoint_similarity(a, a, 80 * 200, 0.3, 4) == pytest.approx(1.0)
    b = a.copy()
    b[:, 0] += 10.0
    expected = np.mean(np.exp(-100.0 / (2 * 80 * 200 * (2 * np.array(
        [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087,
         0.089, 0.089])) ** 2)))
    assert keypoint_similarity(a, b, 80 * 200, 0.3, 4) == pytest.approx(expected)
    b[:, 2] = 0.1
    assert keypoint_similarity(a, b, 80 * 200, 0.3, 4) is None


def _rows(frames, boxes, kp, clip, person_index):
    n = len(frames)
    whole = np.zeros((n, 133, 3), np.float32)
    whole[:, :17] = kp
    return {"track_id": np.array([clip] * n, object), "frame_index": np.asarray(frames, np.int32),
            "bbox_xyxy": np.asarray(boxes, np.float32), "person_index": np.asarray(person_index, np.int32),
            "kp2d_wholebody": whole, "sample_key": np.array([f"{clip}/f{f:06d}" for f in frames], object)}


def test_stage_names_tracks_per_clip_and_leaves_stills_alone():
    assert STAGES.get("track/iou-oks") is TrackStage
    frames, boxes, kp, who = crossing(frames=8)
    person_index = np.concatenate([np.arange((frames == f).sum()) for f in np.unique(frames)])
    a = _rows(frames, boxes, kp, "clips/a.mp4", person_index)
    b = _rows(frames[who == 0], boxes[who == 0], kp[who == 0], "clips/b.mp4", np.zeros((who == 0).sum()))
    still = _rows([-1], boxes[:1], kp[:1], "", [0])
    batch = {k: np.concatenate([a[k], b[k], still[k]]) for k in a}
    batch[ERROR_STAGE] = np.array([""] * len(batch["track_id"]), object)
    batch[ERROR_STAGE][1] = "keypoints"  # failed rows keep their clip key
    rng = np.random.default_rng(0)
    order = rng.permutation(len(batch["track_id"]))
    out = TrackStage()({k: v[order] for k, v in batch.items()})
    back = np.argsort(order)
    tracks = out["track_id"][back]
    n_a = len(frames)
    assert tracks[1] == "clips/a.mp4" and tracks[-1] == ""
    good_a = np.array([i for i in range(n_a) if i != 1])
    assert set(tracks[good_a]) == {"clips/a.mp4#t0", "clips/a.mp4#t1"}
    for person in (0, 1):
        assert len(set(tracks[good_a][who[good_a] == person])) == 1
    assert set(tracks[n_a:-1]) == {"clips/b.mp4#t0"}
    again = TrackStage()({k: v[order] for k, v in batch.items()})
    assert list(again["track_id"]) == list(out["track_id"])


def test_config_is_checked():
    with pytest.raises(ValueError, match="min_similarity=1.5"):
        TrackConfig(min_similarity=1.5)
    with pytest.raises(ValueError, match="motion_weight=0.0"):
        TrackConfig(motion_weight=0.0)
