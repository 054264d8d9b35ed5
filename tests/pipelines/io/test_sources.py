"""Sources: discovery, stable keys, videos, COCO labels, loading and load failures."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
from PIL import Image

from pipelines.io import sources
from pipelines.io.samples import Sample, SourceError
from pipelines.io.sources import discover_samples, load_batch, samples_to_batch


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _image(h: int = 24, w: int = 32, value: int = 100) -> np.ndarray:
    img = np.full((h, w, 3), value, dtype=np.uint8)
    img[: h // 2, : w // 2, 0] = 255  # top-left red: orientation is visible
    return img


def _write_video(path: Path, frames: int, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 10 * i, dtype=np.uint8))
    writer.release()


def test_folder_keys_are_relative_recursive_and_sorted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("b.JPG", "a.png", "sub/c.jpeg", "sub/deeper/d.WebP", "notes.txt", "sub/x.gif"):
        (root / rel).write_bytes(b"x")
    samples = discover_samples([str(root)])
    assert [s.sample_key for s in samples] == ["data/a.png", "data/b.JPG", "data/sub/c.jpeg", "data/sub/deeper/d.WebP"]
    assert all(s.kind == "image" and s.frame_index == -1 and s.track_id == "" for s in samples)
    assert samples[2].uri == str(root / "sub" / "c.jpeg")
    # the same folder reached through another path gives the same keys
    other = discover_samples([str(tmp_path / "." / "data") + "/"])
    assert [s.sample_key for s in other] == [s.sample_key for s in samples]
    single = discover_samples([str(root / "a.png")])
    assert [s.sample_key for s in single] == ["a.png"]


def test_clashing_keys_and_bad_inputs_are_refused(tmp_path: Path) -> None:
    for parent in ("one", "two"):
        (tmp_path / parent / "imgs").mkdir(parents=True)
        (tmp_path / parent / "imgs" / "a.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="data/imgs|key 'imgs/a.jpg'"):
        discover_samples([str(tmp_path / "one" / "imgs"), str(tmp_path / "two" / "imgs")])
    with pytest.raises(SourceError, match="does not exist"):
        discover_samples([str(tmp_path / "missing")])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SourceError, match="not a folder, an image"):
        discover_samples([str(tmp_path / "file.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images or videos"):
        discover_samples([str(tmp_path / "empty")])


def test_video_frames_by_stride_with_track_and_index(tmp_path: Path) -> None:
    _write_video(tmp_path / "clip.avi", frames=10)
    samples = discover_samples([str(tmp_path / "clip.avi")], video_stride=3)
    assert [s.sample_key for s in samples] == [f"clip.avi/f{i:06d}" for i in (0, 3, 6, 9)]
    assert {s.track_id for s in samples} == {"clip.avi"} and [s.frame_index for s in samples] == [0, 3, 6, 9]
    batch = load_batch(samples_to_batch(samples[1:]), max_pixels=10_000)
    assert list(batch["error_stage"]) == ["", "", ""]
    for img, index in zip(batch["image"], (3, 6, 9)):
        assert img.shape == (48, 64, 3) and abs(float(img.mean()) - 10 * index) < 3  # the right frame
    assert list(batch["image_width"]) == [64] * 3 and list(batch["frame_index"]) == [3, 6, 9]
    small = load_batch(samples_to_batch(samples[:1]), max_pixels=100)
    assert small["error_stage"][0] == "load" and "max_pixels" in small["error_reason"][0]


def test_videos_inside_folders(tmp_path: Path) -> None:
    (tmp_path / "d" / "v").mkdir(parents=True)
    _write_video(tmp_path / "d" / "v" / "walk.avi", frames=4)
    (tmp_path / "d" / "img.png").write_bytes(_png(_image()))
    keys = [s.sample_key for s in discover_samples([str(tmp_path / "d")], video_stride=2)]
    assert keys == ["d/img.png", "d/v/walk.avi/f000000", "d/v/walk.avi/f000002"]


def _coco(tmp_path: Path, annotations: list[dict]) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes(_png(_image()))
    data = {"images": [{"id": 1, "file_name": "images/a.png"}, {"id": 2, "file_name": "images/b.png"}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}], "annotations": annotations}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON literals
    return path


def test_coco_boxes_become_xyxy_labels(tmp_path: Path) -> None:
    path = _coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5]},  # a dog
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [3, 4, 5.5, 6]},
    ])
    a, b = discover_samples([str(path)])
    assert (a.sample_key, b.sample_key) == ("labels/images/a.png", "labels/images/b.png")
    assert json.loads(a.labels) == [[1.0, 2.0, 11.0, 22.0], [3.0, 4.0, 8.5, 10.0]]
    assert json.loads(b.labels) == []  # labelled: no person in it
    batch = load_batch(samples_to_batch([a, b]), max_pixels=10_000)
    np.testing.assert_array_equal(batch["label_boxes"][0], [[1, 2, 11, 22], [3, 4, 8.5, 10]])
    assert batch["label_boxes"][1].shape == (0, 4) and list(batch["has_label_boxes"]) == [True, True]
    assert batch["image"][0].shape == (24, 32, 3)


def test_coco_image_root(tmp_path: Path) -> None:
    path = _coco(tmp_path, [])
    moved = tmp_path / "json"
    moved.mkdir()
    (moved / "labels.json").write_bytes(path.read_bytes())
    (a, _) = discover_samples([str(moved / "labels.json")], image_root=str(tmp_path))
    assert a.uri == str(tmp_path / "images" / "a.png")
    assert load_batch(samples_to_batch([a]), max_pixels=10_000)["error_stage"][0] == ""


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [(None, "has no bbox"), ([1, 2, math.nan, 4], "NaN or inf"), ([1, 2, math.inf, 4], "NaN or inf"),
     ([1, 2, None, 4], "missing or non-numeric"), ([1, 2, 3], "is not"), ([1, 2, 0, 4], "non-positive")],
)
def test_bad_coco_labels_mark_the_sample(tmp_path: Path, bbox, reason: str) -> None:
    ann = {"id": 7, "image_id": 1, "category_id": 1}
    if bbox is not None:
        ann["bbox"] = bbox
    a, b = discover_samples([str(_coco(tmp_path, [ann]))])
    assert a.error_reason.startswith("bad label: annotation 7") and reason in a.error_reason and a.labels == ""
    assert b.error_reason == ""
    batch = load_batch(samples_to_batch([a, b]), max_pixels=10_000)
    assert list(batch["error_stage"]) == ["source", ""] and reason in batch["error_reason"][0]
    assert batch["image"][0].size == 0  # never read


def test_load_failures_are_rows_not_exceptions(tmp_path: Path) -> None:
    good = _png(_image())
    files = {"good.png": good, "zero.jpg": b"", "truncated.png": good[: len(good) // 2],
             "text.jpg": b"this is not an image", "big.png": _png(_image(200, 300))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    samples = discover_samples([str(tmp_path)])
    batch = load_batch(samples_to_batch(samples), max_pixels=20_000)
    by_key = {k.split("/")[-1]: i for i, k in enumerate(batch["sample_key"])}
    assert batch["error_stage"][by_key["good.png"]] == "" and batch["image"][by_key["good.png"]].shape == (24, 32, 3)
    for name in ("zero.jpg", "truncated.png", "text.jpg", "big.png"):
        assert batch["error_stage"][by_key[name]] == "load", name
        assert batch["error_reason"][by_key[name]], name
        assert batch["image"][by_key[name]].size == 0
    assert "60000" in batch["error_reason"][by_key["big.png"]] or "pixel" in batch["error_reason"][by_key["big.png"]]


def test_fsspec_folder_input(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/pearl-src/imgs/x/one.png", _png(_image(value=7)))
    fs.pipe("/pearl-src/imgs/two.jpg", b"garbage")
    samples = discover_samples(["memory://pearl-src/imgs"])
    assert [s.sample_key for s in samples] == ["imgs/two.jpg", "imgs/x/one.png"]
    assert samples[1].uri == "memory://pearl-src/imgs/x/one.png"
    batch = load_batch(samples_to_batch(samples), max_pixels=10_000)
    assert list(batch["error_stage"]) == ["load", ""] and batch["image"][1][-1, -1, 0] == 7


def test_samples_to_batch_columns() -> None:
    s = Sample(sample_key="k", source="src", uri="u", labels="[[0, 0, 1, 1]]")
    batch = samples_to_batch([s, Sample(sample_key="k2", source="s", uri="u", error_reason="bad label: x")])
    assert set(sources.SAMPLE_COLUMNS) <= set(batch) and batch["frame_index"].dtype == np.int32
    assert list(batch["error_stage"]) == ["", "source"]
