"""The keypoints stage (MediaPipe backend) on real images: where the keypoints land, sides, mirroring,
placeholders for failed rows, bad input, pickling; plus the region-of-interest geometry it relies on."""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotators import images
from annotators import keypoints as kpm
from model import metrics
from schemas import keypoints as wb
from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES, ErrorPolicy

ROOT = Path(__file__).resolve().parents[2]
EVALDATA = ROOT.parent / "shared" / "evaldata"

# COCO val2017 image 785 (CC BY 2.0) and its COCO-17 keypoints (CC BY 4.0): x, y per keypoint.
COCO785_BOX = np.array([280.79, 44.73, 499.49, 391.41], np.float32)
COCO785_BODY = np.array(
    [[367, 81], [374, 73], [360, 75], [386, 78], [356, 81], [399, 108], [358, 129], [433, 142], [341, 159],
     [449, 165], [309, 178], [424, 203], [393, 214], [429, 294], [367, 273], [466, 362], [396, 341]],
    np.float32,
)  # fmt: skip


def example(name: str) -> np.ndarray:
    """A shipped example image as RGB uint8 (examples/, else the shared copy)."""
    for folder in (ROOT / "examples", ROOT.parent / "shared" / "examples"):
        if (folder / name).exists():
            return np.asarray(Image.open(folder / name).convert("RGB"))
    pytest.skip(f"example image {name} not found")


def make_batch(images: list[np.ndarray], boxes: list, failed: list[bool] | None = None) -> dict[str, np.ndarray]:
    n = len(images)
    col = np.empty(n, dtype=object)
    for i, im in enumerate(images):
        col[i] = im
    failed = failed or [False] * n
    return {
        "key": np.array([f"s{i}/p00" for i in range(n)], dtype=object),
        "image": col,
        "bbox_xyxy": np.asarray(boxes, dtype=np.float32),
        "source": np.array(["test"] * n, dtype=object),
        ERROR_STAGE: np.array(["persons" if f else "" for f in failed], dtype=object),
        ERROR_REASON: np.array(["ValueError: earlier failure" if f else "" for f in failed], dtype=object),
    }


@pytest.fixture(scope="module")
def stage() -> kpm.KeypointsStage:
    return kpm.KeypointsStage(kpm.KeypointsConfig(), policy=ErrorPolicy.RAISE)


@pytest.fixture(scope="module")
def annotated(stage):
    """One batch: full body (COCO 785), portrait, upper body, and a row an earlier stage failed."""
    grace, astro, coco = example("grace_hopper.jpg"), example("astronaut.png"), example("coco_000000000785.jpg")
    batch = make_batch(
        [coco, grace, astro, grace],
        [COCO785_BOX, [0, 0, 512, 600], [0, 0, 512, 512], [0, 0, 512, 600]],
        failed=[False, False, False, True],
    )
    return stage(batch)


def test_stage_is_registered():
    assert STAGES.get("keypoints/mediapipe") is kpm.KeypointsStage


def test_output_columns_have_contract_shapes(annotated):
    expected = {
        "kp2d_wholebody": ((4, 133, 3), np.float32),
        "mp_face_landmarks": ((4, 478, 3), np.float32),
        "mp_hand_landmarks_3d": ((4, 2, 21, 3), np.float32),
        "mp_pose_landmarks": ((4, 33, 4), np.float32),
        "has_kp_body": ((4,), np.bool_),
        "has_face": ((4,), np.bool_),
        "has_hands": ((4, 2), np.bool_),
        "has_hand_landmarks": ((4, 2), np.bool_),
        "conf_body": ((4,), np.float32),
        "conf_face": ((4,), np.float32),
        "conf_hands": ((4, 2), np.float32),
    }
    for col, (shape, dtype) in expected.items():
        assert annotated[col].shape == shape, col
        assert annotated[col].dtype == dtype, col
    assert list(annotated["source"]) == ["test"] * 4  # other columns carried through
    conf = annotated["kp2d_wholebody"][..., 2]
    assert np.all((conf >= 0) & (conf <= 1))


def test_failed_row_passes_through_with_placeholders(annotated):
    assert annotated[ERROR_STAGE][3] == "persons"
    assert annotated[ERROR_REASON][3] == "ValueError: earlier failure"
    assert not annotated["has_kp_body"][3] and not annotated["has_face"][3] and not annotated["has_hands"][3].any()
    for col in ("kp2d_wholebody", "mp_face_landmarks", "mp_hand_landmarks_3d", "conf_body", "conf_face"):
        assert not np.any(annotated[col][3]), col
    assert list(annotated[ERROR_STAGE][:3]) == ["", "", ""]


def test_body_on_full_body_person_matches_coco_labels(annotated):
    kp = annotated["kp2d_wholebody"][0]
    assert annotated["has_kp_body"][0] and annotated["conf_body"][0] > 0.8
    err = np.linalg.norm(kp[wb.BODY, :2] - COCO785_BODY, axis=1) / metrics.box_size(COCO785_BOX)
    assert np.mean(err < 0.1) >= 0.9, err.round(3)
    x0, y0, x1, y1 = COCO785_BOX
    assert np.all((kp[:23, 0] > x0 - 20) & (kp[:23, 0] < x1 + 20) & (kp[:23, 1] > y0 - 20) & (kp[:23, 1] < y1 + 20))
    # she faces the camera: her left shoulder/hip is on the image's right; nose above the shoulders
    assert kp[5, 0] > kp[6, 0] and kp[11, 0] > kp[12, 0]
    assert kp[0, 1] < min(kp[5, 1], kp[6, 1])
    # feet: heels and big toes near the ankles, small toes unmapped (confidence 0)
    foot = 0.15 * metrics.box_size(COCO785_BOX)
    assert np.all(np.linalg.norm(kp[[17, 19], :2] - kp[15, :2], axis=1) < foot)
    assert np.all(np.linalg.norm(kp[[20, 22], :2] - kp[16, :2], axis=1) < foot)
    assert kp[18, 2] == 0 and kp[21, 2] == 0


def test_face_landmarks_land_on_the_face(annotated):
    # (row, face region in image px) measured by eye on the examples, generously
    for row, (x0, y0, x1, y1) in ((1, (150, 100, 380, 360)), (2, (160, 50, 290, 200))):
        assert annotated["has_face"][row] and annotated["conf_face"][row] > 0.5
        mesh = annotated["mp_face_landmarks"][row]
        assert np.all((mesh[:, 0] > x0) & (mesh[:, 0] < x1) & (mesh[:, 1] > y0) & (mesh[:, 1] < y1)), row
        face68 = annotated["kp2d_wholebody"][row][wb.FACE]
        lo, hi = mesh[:, :2].min(axis=0), mesh[:, :2].max(axis=0)
        assert np.all((face68[:, :2] >= lo - 1) & (face68[:, :2] <= hi + 1))
        # person's left eye (iBUG 45, mesh 263) on the image's right; nose tip between eyes and mouth
        assert face68[45, 0] > face68[36, 0] and mesh[263, 0] > mesh[33, 0]
        assert face68[36, 1] < face68[30, 1] < face68[51, 1] < face68[8, 1]
        assert face68[8, 1] == face68[:17, 1].max() or face68[8, 1] > face68[:17, 1].max() - 3  # chin lowest
        assert np.ptp(mesh[:, 2]) < np.ptp(mesh[:, 0])  # depth in px units, same scale as x


def test_no_hands_reported_where_none_are_visible(annotated):
    # the portrait and the astronaut show no hands (BlazePose still guesses wrists inside the picture)
    assert not annotated["has_hands"][1:3].any() and not annotated["has_hand_landmarks"][1:3].any()
    assert not annotated["mp_hand_landmarks_3d"][1:3].any()
    assert not annotated["kp2d_wholebody"][1:3, wb.LEFT_HAND.start :].any()


def test_gloved_hands_are_kept_as_pose_only_hands(annotated):
    # the skier's hands are gloved: the hand landmark model finds neither, BlazePose sees both
    assert list(annotated["has_hands"][0]) == [True, True]
    assert not annotated["has_hand_landmarks"][0].any()
    assert not annotated["mp_hand_landmarks_3d"][0].any()
    assert not annotated["kp2d_wholebody"][0, wb.LEFT_HAND.start:].any()  # no hand keypoints are made up
    pose = annotated["mp_pose_landmarks"][0]
    for side, points in enumerate(wb.POSE_HAND_POINTS):
        vis = pose[list(points), 3].mean()
        assert vis >= 0.75 and annotated["conf_hands"][0, side] == pytest.approx(0.7 * vis, rel=1e-5)
    # the pose's wrists are the body keypoints' wrists
    np.testing.assert_allclose(pose[[15, 16], :2], annotated["kp2d_wholebody"][0, [9, 10], :2])


def test_pose_only_hand_needs_a_visible_hand_inside_the_image():
    stage = kpm.KeypointsStage(kpm.KeypointsConfig(min_pose_hand_visibility=0.6, pose_hand_confidence=0.5))
    points = np.zeros((33, 3), np.float32)
    points[:, :2] = 50.0
    visibility = np.full(33, 0.8, np.float32)
    pose = kpm.PoseLandmarks(points, visibility, 1.0, False)
    assert stage.pose_hand(pose, 0, (100, 100, 3)) == pytest.approx(0.4)
    visibility[19] = 0.1  # left index: mean visibility of wrist, index, pinky 0.57
    assert stage.pose_hand(pose, 0, (100, 100, 3)) == 0.0
    assert stage.pose_hand(pose, 1, (100, 100, 3)) == pytest.approx(0.4)
    points[18, 0] = 120.0  # right pinky outside a 100 px wide image
    assert stage.pose_hand(pose, 1, (100, 100, 3)) == 0.0
    with pytest.raises(ValueError, match="min_pose_hand_visibility"):
        kpm.KeypointsConfig(min_pose_hand_visibility=1.5)


def test_mirrored_image_gives_mirrored_keypoints(stage):
    grace = example("grace_hopper.jpg")
    coco = example("coco_000000000785.jpg")
    width = coco.shape[1]
    mirrored_box = np.array([width - COCO785_BOX[2], COCO785_BOX[1], width - COCO785_BOX[0], COCO785_BOX[3]])
    out = stage(make_batch([coco[:, ::-1], grace[:, ::-1]], [mirrored_box, [0, 0, 512, 600]]))
    ref = stage(make_batch([coco, grace], [COCO785_BOX, [0, 0, 512, 600]]))["kp2d_wholebody"]
    back = wb.flip_keypoints(out["kp2d_wholebody"], width)
    body_err = np.linalg.norm(back[0, wb.BODY, :2] - ref[0, wb.BODY, :2], axis=1) / metrics.box_size(COCO785_BOX)
    assert np.median(body_err) < 0.03 and back[0, 5, 0] > back[0, 6, 0]
    back_face = wb.flip_keypoints(out["kp2d_wholebody"][1:], 512)[0, wb.FACE]
    face_err = np.linalg.norm(back_face[:, :2] - ref[1, wb.FACE, :2], axis=1) / metrics.interocular(ref[1, wb.FACE])
    assert face_err.mean() < 0.06, face_err.round(3)  # the 68-point mapping is left/right symmetric


def test_image_without_a_person_gives_placeholders_not_errors(stage):
    out = stage(make_batch([np.full((96, 128, 3), 127, np.uint8)], [[10, 10, 100, 90]]))
    assert out[ERROR_STAGE][0] == ""
    assert not out["has_kp_body"][0] and not out["has_face"][0] and not out["has_hands"][0].any()
    assert not out["kp2d_wholebody"].any()


def test_bad_rows_are_quarantined_not_dropped():
    stage = kpm.KeypointsStage(policy=ErrorPolicy.QUARANTINE)
    good = np.zeros((32, 32, 3), np.uint8)
    batch = make_batch(
        [np.zeros((32, 32), np.uint8), good, good, good.astype(np.float32)],
        [[0, 0, 10, 10], [0, 0, np.nan, 10], [5, 5, 5, 9], [0, 0, 10, 10]],
    )
    out = stage(batch)
    assert list(out[ERROR_STAGE]) == ["keypoints"] * 4
    reasons = list(out[ERROR_REASON])
    assert "'image'" in reasons[0] and "'image'" in reasons[3]
    assert "'bbox_xyxy'" in reasons[1] and "empty" in reasons[2]
    assert out["kp2d_wholebody"].shape == (4, 133, 3) and not out["has_kp_body"].any()
    with pytest.raises(ValueError, match="RGB uint8"):
        kpm.KeypointsStage(policy=ErrorPolicy.RAISE)(make_batch([np.zeros((8, 8), np.uint8)], [[0, 0, 4, 4]]))
    with pytest.raises(KeyError, match="bbox_xyxy"):
        stage({"image": batch["image"]})


def test_config_is_checked():
    with pytest.raises(ValueError, match="isolate"):
        kpm.KeypointsConfig(isolate="maybe")
    with pytest.raises(ValueError, match="hand_passes"):
        kpm.KeypointsConfig(hand_passes=0)
    with pytest.raises(ValueError, match="crop_scales"):
        kpm.KeypointsConfig(crop_scales=(1.25, 0.0))
    with pytest.raises(ValueError, match="crop_scales"):
        kpm.KeypointsConfig(crop_scales=())
    assert kpm.KeypointsConfig(crop_scales=[1.5]).crop_scales == (1.5,)  # lists from YAML become tuples


def test_stage_pickles_before_and_after_use(stage, annotated):
    fresh = pickle.loads(pickle.dumps(kpm.KeypointsStage()))
    assert "models" not in fresh.__dict__
    used = pickle.loads(pickle.dumps(stage))  # the MediaPipe graphs are left behind and rebuilt lazily
    assert "models" not in used.__dict__ and used.config == stage.config


def test_latency_is_logged_per_row(stage, caplog):
    with caplog.at_level(logging.DEBUG, logger="annotators.keypoints"):
        stage(make_batch([example("astronaut.png")], [[0, 0, 512, 512]]))
    lines = [r.getMessage() for r in caplog.records if r.name == "annotators.keypoints"]
    assert any("s0/p00" in m and "pose" in m and "ms" in m for m in lines), lines
    latency = stage.latency_ms()
    assert set(latency) == {"pose", "face", "hands", "total"} and latency["pose"] > 0


# --------------------------------------------------------------------------------------------------
# Real hands (read-only evaluation data; skipped where it is absent)
# --------------------------------------------------------------------------------------------------


def _evaldata_json(rel: str) -> dict:
    path = EVALDATA / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def test_hand_found_from_the_pose_wrist_on_a_real_person(stage):
    data = _evaldata_json("coco_wholebody/annotations/test_coco_wholebody.json")
    ann = next(a for a in data["annotations"] if a["image_id"] == 197388 and a["bbox"][0] > 500)
    image = np.asarray(Image.open(EVALDATA / "coco_wholebody/images/000000197388.jpg").convert("RGB"))
    x, y, w, h = ann["bbox"]
    out = stage(make_batch([image], [[x, y, x + w, y + h]]))
    kp = out["kp2d_wholebody"][0]
    # only the right hand is visible and large enough for the hand model; the left arm leaves the frame,
    # where BlazePose still places a hand (visibility > 0.75): kept as a pose-only hand, labelled as such
    assert list(out["has_hand_landmarks"][0]) == [False, True]
    assert out["has_hands"][0, 1]
    hand = kp[wb.RIGHT_HAND]
    forearm = np.linalg.norm(kp[10, :2] - kp[8, :2])
    assert np.linalg.norm(hand[0, :2] - kp[10, :2]) < 0.5 * forearm  # hand root near the pose wrist
    gt = np.asarray(ann["righthand_kpts"], np.float32).reshape(21, 3)
    hx, hy, hw, hh = ann["righthand_box"]
    assert metrics.pck(hand[None], gt[None], gt[None, :, 2] > 0, np.array([max(hw, hh)]), 0.2) >= 0.8
    # 3D landmarks: metres, axes aligned with the image (their x, y follow the 2D landmarks)
    world = out["mp_hand_landmarks_3d"][0, 1]
    assert 0.03 < np.ptp(world[:, :2], axis=0).max() < 0.3
    a, b = world[:, :2] - world[:, :2].mean(0), hand[:, :2] - hand[:, :2].mean(0)
    assert (a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()) > 0.9


def test_hand_landmarks_in_a_hand_box(stage):
    data = _evaldata_json("hands/onehand10k/test_onehand10k.json")
    files = {im["id"]: im["file_name"] for im in data["images"]}
    pred, gt, norm = [], [], []
    for ann in data["annotations"]:
        image = np.asarray(Image.open(EVALDATA / "hands/onehand10k" / files[ann["image_id"]]).convert("RGB"))
        x, y, w, h = ann["bbox"]
        hand = kpm.hand_landmarks_in(stage.models.hand, image, images.Roi.from_box([x, y, x + w, y + h], 2.0), 2)
        assert hand.presence > 0.5
        pred.append(hand.points)
        gt.append(np.asarray(ann["keypoints"], np.float32).reshape(21, 3))
        norm.append(max(w, h))
    gt = np.stack(gt)
    assert metrics.pck(np.stack(pred), gt, gt[..., 2] > 0, np.array(norm), 0.2) >= 0.9


# --------------------------------------------------------------------------------------------------
# Geometry of the regions of interest (pure numpy)
# --------------------------------------------------------------------------------------------------


def test_mediapipe_normalised_coordinates_to_px():
    assert np.allclose(kpm.normalized_to_px(np.array([[0.0, 1.0]]), 120, 120), [[0.0, 120.0]])


def test_roi_angles_and_landmark_regions():
    # up along +x: the crop's "up" (0, -1) points right in the image
    roi = images.Roi(0.0, 0.0, 1.0, images.angle_up_along(np.array([1.0, 0.0])))
    assert np.allclose(roi.rotation() @ [0.0, -1.0], [1.0, 0.0])
    assert images.angle_x_along(np.array([0.0, 1.0])) == pytest.approx(math.pi / 2)
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [0.0, 20.0]])
    r = images.roi_around(square, 0.0, 1.5, shift_y=-0.1)
    assert (r.cx, r.cy, r.size) == pytest.approx((5.0, 8.0, 30.0))
    # a hand pointing right: wrist at the origin, knuckles at x = 10
    hand = np.zeros((21, 2))
    hand[1:, 0] = np.linspace(4, 20, 20)
    hand[1:, 1] = np.tile([-3.0, 3.0], 10)
    hand[9] = [12.0, 0.0]  # middle finger base straight ahead
    hr = kpm.hand_roi_from_landmarks(hand)
    assert hr.angle == pytest.approx(math.pi / 2)
    assert hr.cx > 0  # shifted towards the fingers


def test_select_skeleton_outvotes_a_misfire():
    box = np.array([0.0, 0.0, 100.0, 200.0])
    rng = np.random.default_rng(0)
    base = np.concatenate([rng.uniform([0, 0], [100, 200], size=(33, 2)), np.zeros((33, 1))], axis=1)

    def cand(shift: float, score: float) -> kpm.PoseLandmarks:
        return kpm.PoseLandmarks((base + [shift, 0.0, 0.0]).astype(np.float32), np.ones(33), score, False)

    agreeing = [cand(0.0, 0.6), cand(2.0, 0.7), cand(-2.0, 0.65)]
    misfire = cand(60.0, 0.9)  # scores best, but disagrees with every other run
    chosen = kpm.select_skeleton(agreeing + [misfire], box)
    assert chosen is agreeing[0]  # the one in the middle of the agreeing runs
    assert kpm.select_skeleton([agreeing[0], misfire], box) is misfire  # two: best score
    assert kpm.select_skeleton([], box) is None


def test_pose_box_score_prefers_the_boxed_person():
    box = np.array([0.0, 0.0, 100.0, 200.0])
    inside = np.tile([[50.0, 100.0]], (33, 1))
    outside = inside + [300.0, 0.0]
    vis = np.full(33, 0.8)
    assert kpm.pose_box_score(inside, vis, box) == pytest.approx(0.8)
    assert kpm.pose_box_score(outside, vis, box) == 0.0
    half = np.concatenate([inside[:16], outside[16:]])
    assert kpm.pose_box_score(half, vis, box) == pytest.approx(0.8 * 16 / 33)
