"""Hostile inputs: each bad file or frame becomes a fault sample with its reason (never a crash, a refusal of
the whole job, a hang or a silent loss), and files that are not inputs are listed, not dropped."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.io.samples import SourceError
from pipelines.io.sources import discover, load_batch, samples_to_batch, scan_video_frames


def _jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (200, 120, 40)).save(path, format="JPEG")
    return path


def _faults(found) -> dict[str, str]:
    return {s.sample_key: s.error_reason for s in found.samples if s.error_reason}


def _video(path: Path, frames: int = 8, fourcc: str = "MJPG") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
    for i in range(frames):
        frame = np.full((48, 64, 3), 20 * i, np.uint8)
        cv2.putText(frame, str(i), (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


def _corrupt_mjpeg_frame(path: Path, frame: int) -> None:
    """Overwrite the start of the ``frame``-th JPEG of an MJPEG AVI with zeros."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for k in range(starts[frame] + 2, starts[frame] + 400):
        data[k] = 0
    path.write_bytes(bytes(data))


def test_a_non_utf8_file_name_is_a_fault_with_a_printable_key(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _jpeg(folder / "good.jpg")
    with open(os.path.join(os.fsencode(folder), b"bad\xff\xfe.jpg"), "wb") as fh:
        fh.write((folder / "good.jpg").read_bytes())
    found = discover([str(folder)])
    faults = _faults(found)
    (key,) = faults
    key.encode("utf-8")  # valid UTF-8: it reaches Parquet, the quarantine table and keys_sha256
    assert key.startswith("in/bad\\udcff") and "not valid UTF-8" in faults[key]
    assert [s.sample_key for s in found.samples if not s.error_reason] == ["in/good.jpg"]


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _jpeg(folder / "good.jpg")
    os.mkfifo(folder / "pipe.jpg")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(found=discover([str(folder)])), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "discovery blocked on the FIFO"
    assert "a FIFO, not a regular file" in _faults(result["found"])["in/pipe.jpg"]
    # the loader refuses it too (a file replaced by a FIFO after discovery): a load error, no hang
    from pipelines.io.samples import Sample

    batch = samples_to_batch([Sample(sample_key="x", source=str(folder / "pipe.jpg"), uri=str(folder / "pipe.jpg"))])
    out = load_batch(batch, max_pixels=10**7)
    assert out["error_stage"][0] == "load" and "not a regular file" in out["error_reason"][0]


def test_broken_videos_and_a_corrupt_frame_are_accounted_for(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _jpeg(folder / "good.jpg")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 255, 5000, np.uint8).tobytes())
    full = _video(tmp_path / "full.mp4", fourcc="mp4v").read_bytes()
    (folder / "truncated.mp4").write_bytes(full[: len(full) // 3])
    _corrupt_mjpeg_frame(_video(folder / "clip.avi"), 3)
    found = discover([str(folder)])
    faults = _faults(found)
    assert "in/random.mp4" in faults and "cannot be opened" in faults["in/random.mp4"]
    clip = [s for s in found.samples if s.sample_key.startswith("in/clip.avi/")]
    assert [s.frame_index for s in clip] == list(range(8))  # all eight frames accounted for
    assert [bool(s.error_reason) for s in clip] == [False] * 3 + [True] + [False] * 4
    assert "frame 3 cannot be decoded" in clip[3].error_reason
    truncated = [s for s in found.samples if s.sample_key.startswith("in/truncated.mp4")]
    assert truncated and all(s.kind in ("video", "fault") for s in truncated)  # frames or one fault, never a crash
    # the frames after the corrupt one load as they are
    out = load_batch(samples_to_batch([s for s in clip if not s.error_reason]), max_pixels=10**7)
    assert list(out["error_stage"]) == [""] * 7
    means = [float(img.mean()) for img in out["image"]]
    assert means == sorted(means) and means[3] > means[2] + 20  # frame 4 comes after frame 2, nothing shifted
    assert scan_video_frames(str(folder / "clip.avi")) == ([True] * 3 + [False] + [True] * 4, 8)


def test_long_clips_are_cut_into_segments_with_their_own_track_keys(tmp_path):
    _video(tmp_path / "long.avi", frames=10)
    found = discover([str(tmp_path / "long.avi")], max_clip_frames=4)
    assert [s.track_id for s in found.samples] == ["long.avi#s0"] * 3 + ["long.avi#s1"] * 4 + ["long.avi#s2"] * 3
    assert {s.track_id for s in discover([str(tmp_path / "long.avi")]).samples} == {"long.avi"}


def test_files_skipped_for_their_extension_are_listed(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _jpeg(folder / "good.jpg")
    (folder / "notes.txt").write_text("hello")
    (folder / "README").write_text("x")
    found = discover([str(folder)])
    assert sorted(found.skipped) == [(str(folder / "README"), "not an image or video (no extension)"),
                                     (str(folder / "notes.txt"), "not an image or video (.txt)")]


def test_a_coco_file_name_outside_the_image_root_is_not_read(tmp_path):
    _jpeg(tmp_path / "ok.jpg")
    secret = tmp_path.parent / f"{tmp_path.name}-secret.jpg"
    secret.write_bytes(b"TOP SECRET CONTENT")
    coco = {"images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": f"../{secret.name}"},
                       {"id": 3, "file_name": "/etc/passwd"}, {"id": 4}, "not an image entry"],
            "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    found = discover([str(tmp_path / "labels.json")])
    faults = _faults(found)
    assert "leaves the image root" in faults[f"labels/../{secret.name}"]
    assert "absolute" in faults["labels//etc/passwd"]
    assert "has no file_name" in faults["labels/#image3"] and "has no file_name" in faults["labels/#image4"]
    assert [s.sample_key for s in found.samples if not s.error_reason] == ["labels/ok.jpg"]
    assert all(s.uri == "" for s in found.samples if s.error_reason)  # never read


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_hostile_smpl_sources_become_faults(tmp_path):
    jpg = _jpeg(tmp_path / "img.jpg").read_bytes()
    deep = b"\x80\x02" + b"]" * 20_000 + b"a" * 19_999 + b"."
    person = {"center": np.array([32.0, 24.0]), "scale": 0.2, "body_pose": np.zeros(72), "betas": np.zeros(10)}
    empty_flag = pickle.dumps([{**person, "has_body_pose": np.array([])}], protocol=4)
    good = pickle.dumps([person], protocol=4)
    _tar(tmp_path / "shard.tar", {"a.jpg": jpg, "a.data.pyd": deep, "b.jpg": jpg, "b.data.pyd": empty_flag,
                                  "c.jpg": jpg, "c.data.pyd": good})
    (tmp_path / "notatar.tar").write_bytes(b"this is not a tar archive at all" * 10)
    np.savez(tmp_path / "objects.npz", imgname=np.array(["img.jpg"]), center=np.array([{"x": 1}], dtype=object),
             scale=np.array([0.2]))
    np.savez(tmp_path / "ragged.npz", imgname=np.array(["img.jpg", "img.jpg"]), center=np.zeros((3, 2)) + 30,
             scale=np.full(2, 0.2), pose=np.zeros((2, 72)), shape=np.zeros((2, 10)))
    found = discover([str(tmp_path / n) for n in ("shard.tar", "notatar.tar", "objects.npz", "ragged.npz")])
    faults = _faults(found)
    assert "nested too deeply" in faults["shard/a"]
    assert "has_body_pose must be one finite number" in faults["shard/b"]
    assert "shard/c" not in faults
    assert "cannot be read as a tar file" in faults["notatar.tar"]
    assert "needs pickle" in faults["objects.npz"]
    assert "different row counts" in faults["ragged.npz"] and "center 3" in faults["ragged.npz"]


def test_a_missing_input_still_stops_the_job(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        discover([str(tmp_path / "typo")])
