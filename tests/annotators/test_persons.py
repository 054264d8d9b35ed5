"""The persons stage: detection on the shipped examples and on an overlapping group composed from them, label
boxes, no-person and failed rows, the exploded batch layout, deterministic order; its box and skeleton
geometry (regions, seed grouping, suppression by skeleton), the BlazePose graphs against MediaPipe's own
landmarker, and the in-memory MediaPipe bundle."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from annotators.base import ERROR_REASON, ERROR_STAGE, STAGES
from annotators.batches import batch_len
from annotators.images import decode_image
from annotators.persons import (
    BUNDLE_MEMBERS,
    FACE_TO_HIPS,
    FACE_TO_RADIUS,
    LIMBS,
    MediaPipeCrowdDetector,
    MediaPipePoseDetector,
    PersonsConfig,
    PersonsStage,
    YoloxOnnxDetector,
    YoloxPersonsConfig,
    YoloxPersonsStage,
    alignment_roi,
    box_iou,
    cluster_seeds,
    distance_to_segments,
    face_seed_roi,
    head_centres_sizes,
    landmarks_to_box,
    limb_fraction,
    nms,
    person_order,
    pose_landmarker_bundle,
    suppress_skeletons,
    tile_windows,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
COCO_JSON = ROOT.parent / "shared" / "evaldata" / "coco_wholebody" / "annotations" / "test_coco.json"

# Approximate person boxes drawn by hand on the shipped examples (whole visible body, xyxy px).
HAND_BOXES = {
    "astronaut.png": [18, 12, 365, 512],
    "cameraman.png": [0, 62, 335, 512],
    "coco_000000000785.jpg": [281, 45, 500, 392],
    "grace_hopper.jpg": [15, 20, 512, 600],
}


def _image_batch(images: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None = None) -> dict:
    n = len(images)
    image_col = np.empty(n, dtype=object)
    label_col = np.empty(n, dtype=object)
    for i, (key, image) in enumerate(images.items()):
        image_col[i] = image
        label_col[i] = np.asarray((labels or {}).get(key, np.zeros((0, 4))), np.float32).reshape(-1, 4)
    return {
        "sample_key": np.array(list(images), dtype=object),
        "source": np.array([f"src/{k}" for k in images], dtype=object),
        "frame_index": np.full(n, -1, np.int32),
        "image": image_col,
        "label_boxes": label_col,
        ERROR_STAGE: np.array([""] * n, dtype=object),
        ERROR_REASON: np.array([""] * n, dtype=object),
    }


@pytest.fixture(scope="module")
def stage() -> PersonsStage:
    return PersonsStage(PersonsConfig())


@pytest.fixture(scope="module")
def examples() -> dict[str, np.ndarray]:
    return {name: decode_image((EXAMPLES / name).read_bytes(), source=name) for name in HAND_BOXES}


@pytest.fixture(scope="module")
def detected(stage, examples) -> tuple[dict, dict]:
    """(input batch, output batch) of the stage on the four examples, no labels."""
    batch = _image_batch(examples)
    return batch, stage(dict(batch))


def test_registered_with_its_config():
    assert STAGES.get("persons/mediapipe") is PersonsStage
    assert PersonsStage.config_class is PersonsConfig
    assert PersonsStage.version.startswith("0.10.21+pose_full")
    assert PersonsConfig().detector == "mediapipe_crowd"
    assert isinstance(PersonsStage(PersonsConfig()).detector, MediaPipeCrowdDetector)


def test_each_example_yields_one_person_over_it(detected):
    _, out = detected
    assert list(out["sample_key"]) == list(HAND_BOXES)
    assert list(out["key"]) == [f"{k}/p00" for k in HAND_BOXES]
    assert (out["person_index"] == 0).all() and (out[ERROR_STAGE] == "").all()
    assert set(out["bbox_source"]) == {"detector"}
    for i, name in enumerate(HAND_BOXES):
        iou = box_iou(out["bbox_xyxy"][i][None], np.array([HAND_BOXES[name]]))[0, 0]
        assert iou >= 0.5, (name, out["bbox_xyxy"][i], iou)
        assert 0 < out["bbox_score"][i] <= 1


@pytest.mark.skipif(not COCO_JSON.exists(), reason="shared evaldata not present")
def test_coco_785_box_matches_its_coco_annotation(detected):
    coco = json.loads(COCO_JSON.read_text())
    (ann,) = [a for a in coco["annotations"] if a["image_id"] == 785]
    x, y, w, h = ann["bbox"]
    _, out = detected
    i = list(out["sample_key"]).index("coco_000000000785.jpg")
    assert box_iou(out["bbox_xyxy"][i][None], np.array([[x, y, x + w, y + h]]))[0, 0] >= 0.5


def test_exploded_columns_carry_the_inputs(detected):
    batch, out = detected
    n = batch_len(out)  # raises if any column disagrees
    assert n == 4
    assert out["bbox_xyxy"].dtype == np.float32 and out["bbox_xyxy"].shape == (n, 4)
    assert out["bbox_score"].dtype == np.float32 and out["person_index"].dtype == np.int32
    assert out["image_width"].dtype == np.int32 and out["image_height"].dtype == np.int32
    for i in range(n):
        assert out["image"][i] is batch["image"][i]  # shared, not copied
        assert (out["image_height"][i], out["image_width"][i]) == batch["image"][i].shape[:2]
    assert list(out["source"]) == list(batch["source"]) and (out["frame_index"] == -1).all()


def test_two_people_side_by_side_are_both_found(stage, examples):
    pair = np.hstack([examples["astronaut.png"], examples["cameraman.png"]])
    out = stage(_image_batch({"pair": pair}))
    assert list(out["key"]) == ["pair/p00", "pair/p01"]
    expected = np.array([HAND_BOXES["astronaut.png"], np.add(HAND_BOXES["cameraman.png"], [512, 0, 512, 0])])
    iou = box_iou(out["bbox_xyxy"], expected)
    assert iou.max(axis=0).min() >= 0.5  # each person matched by a box
    assert out["image"][0] is out["image"][1]


def _cut_out(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, alpha) of the person in a portrait, cut out by MediaPipe's selfie segmentation."""
    import mediapipe

    with mediapipe.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as model:
        alpha = (model.process(image).segmentation_mask > 0.5).astype(np.float32)
    ys, xs = np.nonzero(alpha)
    return image[ys.min():ys.max() + 1, xs.min():xs.max() + 1], alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def test_overlapping_group_finds_each_person_once(stage, examples):
    """Three portraits pasted side by side, each partly hiding the next, standing on the bottom edge: the default
    detector finds each of them once (the old ``mediapipe_pose`` default misses the cameraman there)."""
    import cv2

    canvas = np.zeros((480, 900, 3), np.float32) + np.linspace(60, 200, 900, dtype=np.float32)[None, :, None]
    truth = []
    for name, x, height in (("grace_hopper.jpg", 20, 400), ("astronaut.png", 240, 420), ("cameraman.png", 520, 400)):
        rgb, alpha = _cut_out(examples[name])
        width = round(alpha.shape[1] * height / alpha.shape[0])
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA)[..., None]
        region = canvas[480 - height:, x:x + width]
        region[:] = alpha * rgb[:, :region.shape[1]] + (1 - alpha) * region
        truth.append([x, 480 - height, min(x + width, 900), 480])
    out = stage(_image_batch({"group": canvas.astype(np.uint8)}))
    assert list(out["key"]) == ["group/p00", "group/p01", "group/p02"]
    iou = box_iou(out["bbox_xyxy"], np.array(truth))
    assert sorted(iou.argmax(axis=1).tolist()) == [0, 1, 2]  # one detection per person
    assert iou.max(axis=0).min() >= 0.5, iou


def test_blank_image_becomes_a_no_person_error_row(stage):
    out = stage(_image_batch({"blank": np.full((240, 320, 3), 128, np.uint8)}))
    assert batch_len(out) == 1
    assert out[ERROR_STAGE][0] == "persons" and out[ERROR_REASON][0].startswith("no person found")
    assert out["person_index"][0] == -1 and out["key"][0] == "blank"
    assert out["bbox_source"][0] == "" and (out["bbox_xyxy"][0] == 0).all()
    assert (out["image_width"][0], out["image_height"][0]) == (320, 240)


def test_label_boxes_pass_through_in_person_order_without_a_detector():
    fresh = PersonsStage(PersonsConfig(min_box_size=16))
    image = np.zeros((100, 200, 3), np.uint8)
    labels = np.array([[10, 10, 30, 40], [50, 5, 150, 95], [0, 0, 8, 8], [160, 10, 190, 40]], np.float32)
    out = fresh(_image_batch({"img": image}, {"img": labels}))
    assert "detector" not in fresh.__dict__  # labelled images never build the detector
    assert list(out["key"]) == ["img/p00", "img/p01", "img/p02"]
    np.testing.assert_array_equal(out["bbox_xyxy"], labels[[1, 3, 0]])  # area, then top, then left; 8 px dropped
    assert set(out["bbox_source"]) == {"label"} and (out["bbox_score"] == 1).all()
    assert (out[ERROR_STAGE] == "").all()


def test_labelled_image_without_boxes_and_bad_labels_fail():
    fresh = PersonsStage()
    image = np.zeros((50, 60, 3), np.uint8)
    batch = _image_batch({"none": image, "nan": image, "empty": image, "outside": image},
                         {"nan": [[1, 2, np.nan, 9]], "empty": [[5, 5, 5, 9]], "outside": [[70, 1, 90, 20]]})
    batch["has_label_boxes"] = np.array([True, True, True, True])
    out = fresh(batch)
    assert "detector" not in fresh.__dict__
    assert list(out[ERROR_STAGE]) == ["persons"] * 4
    reasons = list(out[ERROR_REASON])
    assert reasons[0].startswith("no person found (the source labels 0 person box(es))")
    assert "label box 0" in reasons[1] and "is not finite" in reasons[1]
    assert "is empty" in reasons[2] and "lies outside the 60x50 image" in reasons[3]
    assert (out["person_index"] == -1).all() and list(out["key"]) == ["none", "nan", "empty", "outside"]


def test_failed_rows_pass_through_once(stage):
    good = np.zeros((40, 40, 3), np.uint8)
    batch = _image_batch({"bad": np.zeros((0, 0, 3), np.uint8), "ok": good}, {"ok": [[1, 1, 30, 30]]})
    batch[ERROR_STAGE][0], batch[ERROR_REASON][0] = "load", "ImageDecodeError: x: empty file"
    out = stage(batch)
    assert list(out["sample_key"]) == ["bad", "ok"]
    assert out[ERROR_STAGE][0] == "load" and out[ERROR_REASON][0] == "ImageDecodeError: x: empty file"
    assert out["person_index"][0] == -1 and out["key"][0] == "bad" and out["image_width"][0] == 0
    assert out[ERROR_STAGE][1] == "" and out["key"][1] == "ok/p00"


def test_bad_image_is_quarantined_or_raised():
    batch = _image_batch({"gray": np.zeros((10, 10), np.uint8)})
    out = PersonsStage()(dict(batch))
    assert out[ERROR_STAGE][0] == "persons" and "image must be uint8 [H, W, 3]" in out[ERROR_REASON][0]
    with pytest.raises(ValueError, match="image must be uint8"):
        PersonsStage(PersonsConfig(), policy="raise")(dict(batch))


def test_detection_is_deterministic(stage, examples, detected):
    _, out = detected
    names = ["coco_000000000785.jpg", "astronaut.png"]  # another batch, another order
    again = stage(_image_batch({name: examples[name] for name in names}))
    rows = [list(out["sample_key"]).index(name) for name in names]
    np.testing.assert_array_equal(again["bbox_xyxy"], out["bbox_xyxy"][rows])
    np.testing.assert_array_equal(again["bbox_score"], out["bbox_score"][rows])
    assert list(again["key"]) == [out["key"][i] for i in rows]


def test_stage_pickles_without_its_detector(stage, detected):
    clone = pickle.loads(pickle.dumps(stage))
    assert clone.config == stage.config and "detector" not in clone.__dict__


# --------------------------------------------------------------------------------------------------
# Config and pure geometry
# --------------------------------------------------------------------------------------------------


def test_config_coerces_lists_and_names_bad_fields():
    cfg = PersonsConfig(tile_fractions=[1.0, 0.5], verify_scales=[1.25])
    assert cfg.tile_fractions == (1.0, 0.5) and cfg.verify_scales == (1.25,)
    with pytest.raises(ValueError, match=r"tile_overlap=1\.0.*max_persons=0"):
        PersonsConfig(tile_overlap=1.0, max_persons=0)
    with pytest.raises(ValueError, match=r"landmark_passes=0.*seed_scale=1\.0.*part_fraction=0"):
        PersonsConfig(landmark_passes=0, seed_scale=1.0, part_fraction=0)
    assert PersonsConfig(face_tile_fractions=[0.5, 0.3]).face_tile_fractions == (0.5, 0.3)


def test_unknown_detector_is_named():
    fresh = PersonsStage(PersonsConfig(detector="yolo"), policy="raise")
    with pytest.raises(KeyError, match="unknown person detector 'yolo'; known: mediapipe_crowd, mediapipe_pose, yolox_onnx"):
        fresh(_image_batch({"x": np.zeros((20, 20, 3), np.uint8)}))


def test_yolox_detector_finds_the_persons_of_its_graph(yolox_onnx):
    # the fixture graph's one person, at (24, 24, 56, 88) of a 128x128 image, score 0.72; wider images keep
    # the letterbox ratio 0.5, and a box leaving the image is clipped to it
    stage = STAGES.get("persons/yolox-onnx")(YoloxPersonsConfig(detector_model=yolox_onnx, detector_device="cpu"),
                                             policy="raise")
    assert isinstance(stage, YoloxPersonsStage) and stage.weight_options == ("detector_model",)
    out = stage(_image_batch({"a": np.zeros((128, 128, 3), np.uint8), "b": np.zeros((128, 40, 3), np.uint8)}))
    assert list(out["key"]) == ["a/p00", "b/p00"] and list(out["bbox_source"]) == ["detector"] * 2
    np.testing.assert_allclose(out["bbox_xyxy"], [[24, 24, 56, 88], [24, 24, 40, 88]], atol=1e-4)
    np.testing.assert_allclose(out["bbox_score"], [0.72, 0.72], atol=1e-6)
    strict = PersonsConfig(detector="yolox_onnx", detector_model=yolox_onnx, detector_device="cpu", detector_score=0.8)
    boxes, _ = YoloxOnnxDetector(strict)(np.zeros((128, 128, 3), np.uint8))
    assert boxes.shape == (0, 4)
    assert YoloxPersonsStage.version != PersonsStage.version and not YoloxPersonsStage.default_backend


def test_yolox_detector_needs_its_weights(tmp_path):
    with pytest.raises(ValueError, match="detector 'yolox_onnx' needs detector_model"):
        YoloxPersonsConfig()
    stage = PersonsStage(PersonsConfig(detector="yolox_onnx", detector_model=str(tmp_path / "none.onnx")))
    out = stage(_image_batch({"a": np.zeros((64, 64, 3), np.uint8)}))
    assert out[ERROR_STAGE][0] == "persons" and "none.onnx: no such ONNX file" in out[ERROR_REASON][0]


def test_box_iou_nms_and_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 10], [1, 0, 11, 10]], np.float32)
    np.testing.assert_allclose(box_iou(boxes[:1], boxes)[0], [1, 0.5, 0, 9 / 11])
    assert nms(boxes, np.array([0.9, 0.95, 0.5, 0.8]), 0.6).tolist() == [1, 0, 2]
    assert person_order(boxes).tolist() == [0, 3, 2, 1]  # equal areas: top, then left


def test_landmarks_to_box_takes_in_the_head_top():
    points = np.zeros((33, 2))
    points[:11] = [[50, 20], [48, 18], [46, 18], [44, 18], [52, 18], [54, 18], [56, 18], [40, 20], [60, 20],
                   [47, 24], [53, 24]]
    points[11:] = [[40, 40], [60, 40]] + [[50, 100]] * 20
    box = landmarks_to_box(points, head_margin=0.5, box_margin=0.0)
    head_centre_y = points[:11, 1].mean()
    np.testing.assert_allclose(box, [40, head_centre_y - 0.5 * 20, 60, 100])  # head size = ear to ear = 20
    padded = landmarks_to_box(points, head_margin=0.5, box_margin=0.1)
    np.testing.assert_allclose(padded, box + np.array([-2, -0.1 * (100 - box[1]), 2, 0.1 * (100 - box[1])]))


@pytest.mark.parametrize("size", [(640, 425), (1000, 1000), (300, 900)])
def test_tile_windows_cover_the_image(size):
    width, height = size
    windows = tile_windows(width, height, (1.0, 0.6), 0.4)
    covered = np.zeros((height, width), bool)
    for x0, y0, side in windows:
        assert 0 <= x0 and x0 + side <= width and 0 <= y0 and y0 + side <= height
        if side == round(0.6 * min(size)):
            covered[y0:y0 + side, x0:x0 + side] = True
    assert covered.all()
    assert all(side < max(size) for _, _, side in windows)
    assert windows == tile_windows(width, height, (1.0, 0.6), 0.4)


def test_bundle_holds_the_members_the_task_graph_reads():
    with zipfile.ZipFile(io.BytesIO(pose_landmarker_bundle())) as zf:
        assert sorted(zf.namelist()) == sorted(BUNDLE_MEMBERS)
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


# --------------------------------------------------------------------------------------------------
# Crowd detector: regions, seeds, suppression by skeleton, graphs
# --------------------------------------------------------------------------------------------------


def _standing(cx: float, top: float, height: float) -> np.ndarray:
    """A standing BlazePose skeleton ``[33, 2]`` px, arms held out, ``height`` px tall from ``top``."""
    rel = {0: (0, .06), 1: (-.02, .05), 2: (-.03, .05), 3: (-.04, .05), 4: (.02, .05), 5: (.03, .05), 6: (.04, .05),
           7: (-.05, .06), 8: (.05, .06), 9: (-.015, .08), 10: (.015, .08), 11: (-.1, .17), 12: (.1, .17),
           13: (-.18, .3), 14: (.18, .3), 15: (-.22, .42), 16: (.22, .42), 17: (-.23, .45), 18: (.23, .45),
           19: (-.22, .46), 20: (.22, .46), 21: (-.21, .44), 22: (.21, .44), 23: (-.06, .52), 24: (.06, .52),
           25: (-.06, .73), 26: (.06, .73), 27: (-.06, .94), 28: (.06, .94), 29: (-.06, .96), 30: (.06, .96),
           31: (-.08, .97), 32: (.08, .97)}
    return np.array([[cx + dx * height, top + dy * height] for dx, dy in (rel[k] for k in range(33))])


def _boxes(skeletons: list[np.ndarray]) -> np.ndarray:
    return np.array([landmarks_to_box(p, head_margin=0.8, box_margin=0.05) for p in skeletons])


def test_alignment_roi_follows_mediapipes_rule():
    upright = alignment_roi([100, 200], [100, 100])
    assert (upright.cx, upright.cy, upright.angle) == (100, 200, 0) and upright.size == pytest.approx(250)
    assert alignment_roi([100, 200], [200, 200]).angle == pytest.approx(np.pi / 2)  # leaning right: clockwise
    rng = np.random.default_rng(0)
    for centre, end in rng.uniform(0, 500, (20, 2, 2)):
        x0, y0, x1, y1 = *centre, *end
        rule = np.pi / 2 - np.arctan2(-(y1 - y0), x1 - x0)  # AlignmentPointsRectsCalculator, target 90 degrees
        roi = alignment_roi(centre, end)
        assert np.cos(roi.angle - rule) == pytest.approx(1.0)
        assert roi.size == pytest.approx(2.5 * np.hypot(x1 - x0, y1 - y0))
    face = face_seed_roi([100, 100], 10)
    assert (face.cx, face.cy, face.angle) == (100, 100 + 10 * FACE_TO_HIPS, 0)
    assert face.size == pytest.approx(2.5 * 10 * FACE_TO_RADIUS)


def test_head_centre_size_and_distance_to_limbs():
    skeleton = _standing(100, 0, 300)
    centre, size = head_centres_sizes(skeleton)
    np.testing.assert_allclose(centre, skeleton[:11].mean(axis=0))
    assert size == pytest.approx(0.1 * 300)  # ear to ear
    centres, sizes = head_centres_sizes(np.stack([skeleton, skeleton + 5]))
    assert centres.shape == (2, 2) and sizes.shape == (2,)
    np.testing.assert_allclose(distance_to_segments(np.array([[0, 1], [3, 0], [0.5, -2]]), np.array([[-1, 0]]),
                                                    np.array([[1, 0]])), [1, 2, 2])
    rng = np.random.default_rng(1)
    points, starts, ends = rng.uniform(0, 10, (30, 2)), rng.uniform(0, 10, (5, 2)), rng.uniform(0, 10, (5, 2))
    t = np.linspace(0, 1, 20001)[:, None, None]
    dense = (starts + t * (ends - starts)).reshape(-1, 2)  # brute force: many points along each segment
    reference = np.linalg.norm(points[:, None] - dense[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(distance_to_segments(points, starts, ends), reference, atol=1e-3)
    on_arm = skeleton.copy()
    on_arm[:17] = np.linspace(skeleton[11], skeleton[13], 17)  # 17 of 33 points along the left upper arm
    on_arm[17:] += [1000, 0]
    assert limb_fraction(on_arm, skeleton, 1.0) == pytest.approx(17 / 33)
    assert all(0 <= i < 33 and 0 <= j < 33 for i, j in LIMBS)


def test_skeletons_are_suppressed_by_head_and_limbs_not_by_box_overlap():
    a = _standing(200, 50, 300)
    again = a + [3, -2]  # the same person from another window
    behind = _standing(225, 75, 300)  # another person, half hidden: heads apart, boxes overlapping
    part = _standing(0, 0, 100)
    # A's right arm read as a small whole person, its head at A's hand
    part[:] = np.concatenate([np.linspace(a[16], a[14], 17), np.linspace(a[14], a[12], 16)])
    child = _standing(265, 250, 100)  # a small person beside A's legs
    skeletons = [a, again, behind, part, child]
    boxes = _boxes(skeletons)
    assert box_iou(boxes[:1], boxes[2:3])[0, 0] > 0.5
    assert 2 not in nms(boxes, np.array([5, 4, 3, 2, 1.0]), 0.5).tolist()  # box overlap would lose the second person
    keep = suppress_skeletons(np.stack(skeletons), boxes, same_head=1.0, part_fraction=0.5, limb_distance=0.08)
    assert keep.tolist() == [0, 2, 4]
    everyone = suppress_skeletons(np.stack(skeletons), boxes, same_head=0.0, part_fraction=1.0, limb_distance=0.0)
    assert everyone.tolist() == [0, 1, 2, 3, 4]
    assert suppress_skeletons(np.zeros((0, 33, 2)), np.zeros((0, 4)), same_head=1, part_fraction=0.5,
                              limb_distance=0.08).tolist() == []


def test_seeds_from_several_windows_group_by_hips_and_size():
    centres = np.array([[100, 100], [105, 102], [300, 100], [100, 100], [101, 100]])
    radii = np.array([50, 55, 50, 120, 50])
    scores = np.array([0.9, 0.5, 0.8, 0.7, 0.4])
    windows = np.array([0, 1, 0, 2, 0])
    groups = cluster_seeds(centres, radii, scores, windows, distance=0.3, scale=1.4)
    assert groups == [(0, 2), (2, 1), (3, 1)]  # the same window twice counts once; a 2.4x larger body is another
    assert cluster_seeds(np.zeros((0, 2)), [], [], [], distance=0.3, scale=1.4) == []


def test_blazepose_graphs_agree_with_mediapipes_landmarker(examples):
    """The landmark graph on the region the detector graph aligns gives MediaPipe's Tasks PoseLandmarker's
    landmarks (the ``mediapipe_pose`` detector's), to about a pixel."""
    image = examples["coco_000000000785.jpg"]
    old = MediaPipePoseDetector(PersonsConfig(detector="mediapipe_pose"))
    (reference, _), = old._skeletons(old._verify, image)
    new = MediaPipeCrowdDetector(PersonsConfig(landmark_passes=1, face_seeds=False))
    keypoints, scores, windows = new.seeds(image)
    assert len(scores) >= 1 and (windows == 0).sum() == 1  # one person in the whole image
    best = int(np.argmax(np.where(windows == 0, scores, -1)))
    landmarks, presence = new.skeleton(new.graphs.image_packet(image), image.shape[1], image.shape[0],
                                       alignment_roi(*keypoints[best]))
    assert landmarks.shape == (39, 3) and presence > 0.9
    error = np.linalg.norm(landmarks[:33, :2] - reference, axis=1)
    height = np.ptp(reference[:, 1])
    assert error.mean() < 0.01 * height and error.max() < 0.03 * height, (error.mean(), error.max(), height)
