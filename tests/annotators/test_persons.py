"""The persons stage: detection on the shipped examples, label boxes, no-person and failed rows, the
exploded batch layout, deterministic order; plus its box geometry and the in-memory MediaPipe bundle."""

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
    PersonsConfig,
    PersonsStage,
    box_iou,
    landmarks_to_box,
    nms,
    person_order,
    pose_landmarker_bundle,
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


def test_unknown_detector_is_named():
    fresh = PersonsStage(PersonsConfig(detector="yolo"), policy="raise")
    with pytest.raises(KeyError, match="unknown person detector 'yolo'; known: mediapipe_pose"):
        fresh(_image_batch({"x": np.zeros((20, 20, 3), np.uint8)}))


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
