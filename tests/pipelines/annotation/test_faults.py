"""Faults: bad files and labels, stage exceptions, odd image formats, a killed actor, the run lock."""

from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from annotators.images import crop_person
from pipelines.annotation import config as cfg
from pipelines.annotation.job import run_job
from pipelines.io.quarantine import read_quarantine
from pipelines.io.runlock import LOCK_NAME, LockedError, RunLock
from pipelines.io.shards import iter_wds, read_parquet


def _quarantine(out: Path) -> dict[str, tuple[str, str]]:
    return {r["key"]: (r["stage"], r["reason"]) for r in read_quarantine(str(out)).to_pylist()}


@pytest.fixture(scope="module")
def portrait(examples_dir) -> Image.Image:
    """An example image with one clearly visible person."""
    return Image.open(examples_dir / "grace_hopper.jpg").convert("RGB")


def test_bad_files_and_labels_are_quarantined_and_the_job_goes_on(portrait, tmp_path: Path, job_config) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = io.BytesIO()
    portrait.save(good, format="JPEG")
    (folder / "good.jpg").write_bytes(good.getvalue())
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[:2000])
    (folder / "text.png").write_text("definitely not a PNG")
    bomb = io.BytesIO()
    Image.new("L", (3000, 2000)).save(bomb, format="PNG")  # 6 Mpx, tiny file
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    w, h = portrait.size
    coco = {"images": [{"id": i, "file_name": "good.jpg"} for i in (1, 2, 3)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, w, h]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, float("nan"), w, h]},
                            {"id": 3, "image_id": 3, "category_id": 1}],
            "categories": [{"id": 1, "name": "person"}]}
    # three entries for one file: key clash unless they are distinct names, so give each its own copy
    for i in (1, 2, 3):
        (folder / f"c{i}.jpg").write_bytes(good.getvalue())
        coco["images"][i - 1]["file_name"] = f"c{i}.jpg"
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "coco.json").write_text(json.dumps(coco))
    config = job_config([folder / n for n in ("good.jpg", "zero.jpg", "truncated.jpg", "text.png", "bomb.png")]
                        + [tmp_path / "labels" / "coco.json"], tmp_path / "out", stages=["persons"],
                        images_per_shard=3)
    config.source.image_root = str(folder)
    config.source.max_pixels = 4_000_000
    report = run_job(config)

    q = _quarantine(tmp_path / "out")
    assert {k: v[0] for k, v in q.items()} == {
        "zero.jpg": "load", "truncated.jpg": "load", "text.png": "load", "bomb.png": "load",
        "coco/c2.jpg": "source", "coco/c3.jpg": "source"}
    assert "NaN" in q["coco/c2.jpg"][1] and "no bbox" in q["coco/c3.jpg"][1]
    assert "4000000" in q["bomb.png"][1] or "max_pixels" in q["bomb.png"][1] or "pixels" in q["bomb.png"][1]
    persons = read_parquet(tmp_path / "out").to_pylist()
    assert sorted({p["sample_key"] for p in persons}) == ["coco/c1.jpg", "good.jpg"]
    labelled = [p for p in persons if p["sample_key"] == "coco/c1.jpg"]
    assert len(labelled) == 1 and labelled[0]["bbox_source"] == "label"
    np.testing.assert_allclose(labelled[0]["bbox_xyxy"], [0, 0, w, h])
    totals = report["totals"]
    assert totals["samples"] == 8 and totals["quarantined"] == 6 and totals["persons"] == len(persons)
    assert totals["quarantined_by_reason"]["source: bad label"] == 2
    assert sum(v for k, v in totals["quarantined_by_reason"].items() if k.startswith("load:")) == 4


@pytest.mark.parametrize("option", ["raise_for", "batch_raise_for"])
def test_stage_exceptions_quarantine_only_the_failing_rows(labelled_examples, tmp_path: Path, job_config,
                                                           option: str) -> None:
    config = job_config([labelled_examples], tmp_path / "out", images_per_shard=4)
    config.stages = [cfg.StageSpec("persons"), cfg.StageSpec("quality/fault", options={option: "grace_hopper"})]
    report = run_job(config)
    q = _quarantine(tmp_path / "out")
    assert list(q) == ["labels/grace_hopper.jpg/p00"]
    stage, reason = q["labels/grace_hopper.jpg/p00"]
    assert stage == "quality/fault" and reason.startswith("RuntimeError: injected")
    written = {p["sample_key"] for p in read_parquet(tmp_path / "out").to_pylist()}
    assert "labels/grace_hopper.jpg" not in written and len(written) == report["totals"]["samples"] - 1
    assert report["totals"]["quarantined_by_reason"] == {"quality/fault: RuntimeError": 1}


def _exif_rotated(image: Image.Image) -> bytes:
    """The image stored rotated, with EXIF orientation 6 (display: rotate 90 degrees clockwise)."""
    stored = image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_odd_formats_are_decoded_and_annotated(portrait, tmp_path: Path, job_config) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    rgb = np.asarray(portrait)
    gray = portrait.convert("L")
    gray.save(folder / "gray.png")
    Image.fromarray((np.asarray(gray).astype(np.uint16) * 257)).save(folder / "deep16.png")
    portrait.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    (folder / "exif.jpg").write_bytes(_exif_rotated(portrait))
    h, w = rgb.shape[:2]
    box = [0.1 * w, 0.05 * h, 0.9 * w, 0.95 * h]
    names = ["cmyk.jpg", "deep16.png", "exif.jpg", "gray.png"]
    coco = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [box[0], box[1], box[2] - box[0],
                                                                                 box[3] - box[1]]}
                            for i in range(len(names))]}
    (folder / "labels.json").write_text(json.dumps(coco))
    report = run_job(job_config([folder / "labels.json"], tmp_path / "out", stages=["persons"], images_per_shard=4))
    assert report["totals"]["quarantined"] == 0 and report["totals"]["persons"] == 4
    gray_rgb = np.repeat(np.asarray(gray)[..., None], 3, axis=2)
    expected = {"cmyk.jpg": rgb, "exif.jpg": rgb, "deep16.png": gray_rgb, "gray.png": gray_rgb}
    samples = list(iter_wds([str(p) for p in sorted((tmp_path / "out" / "wds").glob("*.tar"))]))
    assert len(samples) == 4
    for sample in samples:
        meta = sample["meta.json"]
        name = meta["sample_key"].split("/", 1)[1]
        # displayed size and orientation: the EXIF image is upright again, like the others
        assert (meta["image_width"], meta["image_height"]) == (w, h), name
        want, _ = crop_person(expected[name], np.array(box), scale=2.0, out_size=384)  # the sink's defaults
        got = np.asarray(Image.open(io.BytesIO(sample["crop.jpg"])).convert("RGB"))
        assert got.shape == want.shape and np.abs(got.astype(int) - want).mean() < 6, name


@pytest.mark.slow
def test_a_killed_actor_loses_and_duplicates_nothing(labelled_examples, ray_local, tmp_path: Path, job_config,
                                                     file_hashes) -> None:
    flag = tmp_path / "killed-once"
    outs = {}
    for name in ("calm", "killed"):  # same options (same config hash); the flag exists only for the calm run
        if name == "calm":
            flag.write_text("0")
        else:
            flag.unlink()
        config = job_config([labelled_examples], tmp_path / name, stages=["persons", "quality/fault"],
                            runner="ray", images_per_shard=1)
        config.stages[1] = cfg.StageSpec("quality/fault", options={"kill_flag": str(flag)},
                                         resources=cfg.StageResources(num_cpus=0.25, num_actors=1))
        outs[name] = run_job(config)
    assert flag.exists() and int(flag.read_text()) > 0  # an actor really died
    calm, killed = outs["calm"]["totals"], outs["killed"]["totals"]
    assert killed["persons"] == calm["persons"] and killed["samples"] == calm["samples"]
    assert killed["duplicates_dropped"] == 0 and killed["quarantined"] == 0
    assert file_hashes(tmp_path / "killed") == file_hashes(tmp_path / "calm")


def test_a_second_job_on_the_same_out_is_refused(labelled_examples, tmp_path: Path, job_config) -> None:
    out = tmp_path / "out"
    fs = fsspec.filesystem("file")
    holder = RunLock(fs, str(out), stale_after_s=60)
    with holder:
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(LockedError, match=f"pid {os.getpid()} on host") as err:
            run_job(job_config([labelled_examples], out, stages=["persons"]))
        assert "is in use by another pearl job" in str(err.value)
        assert not (out / "manifest.json").exists()  # refused before touching anything
    assert not (out / LOCK_NAME).exists()


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    lock_path = tmp_path / LOCK_NAME
    dead = {"token": "x", "host": socket.gethostname(), "pid": 2**22 + 12345, "started": time.time(),
            "heartbeat": time.time()}
    lock_path.write_text(json.dumps(dead))
    with RunLock(fs, str(tmp_path)) as lock:  # owner process is gone
        assert json.loads(lock_path.read_text())["token"] == lock.token
    old = {**dead, "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 1000}
    lock_path.write_text(json.dumps(old))
    with RunLock(fs, str(tmp_path), stale_after_s=100):  # heartbeat too old
        pass
    alive = {**old, "heartbeat": time.time()}
    lock_path.write_text(json.dumps(alive))
    with pytest.raises(LockedError, match="host elsewhere"):
        RunLock(fs, str(tmp_path), stale_after_s=100).acquire()


def test_heartbeat_refreshes_and_detects_a_takeover(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    lock = RunLock(fs, str(tmp_path), stale_after_s=1.2, heartbeat_s=0.2)
    lock.acquire()
    first = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
    time.sleep(0.7)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] > first
    (tmp_path / LOCK_NAME).write_text(json.dumps({"token": "other", "host": "h", "pid": 1,
                                                  "heartbeat": time.time(), "started": time.time()}))
    time.sleep(0.6)
    assert lock.lost
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "other"  # not ours to remove


@pytest.mark.slow
def test_one_bad_file_never_stops_or_shrinks_the_job(portrait, tmp_path: Path) -> None:
    """Every hostile input of the issue beside one good image, through the command line (so a hang is a
    timeout, not a stuck suite): the job runs to the end, the good image is annotated, every other file or
    frame is a quarantine row with its reason or a skipped file in the report, and the lock is released."""
    import subprocess
    import sys
    import tarfile

    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    good = io.BytesIO()
    portrait.save(good, format="JPEG")
    (folder / "good.jpg").write_bytes(good.getvalue())
    with open(os.path.join(os.fsencode(folder), b"na\xefve\xff.jpg"), "wb") as fh:  # not UTF-8
        fh.write(good.getvalue())
    os.mkfifo(folder / "pipe.jpg")
    (folder / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 255, 4000, np.uint8).tobytes())
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(8):
        writer.write(np.full((48, 64, 3), 25 * i, np.uint8))
    writer.release()
    data = bytearray((folder / "clip.avi").read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[3] + 2:starts[3] + 300] = bytes(298)  # the 4th of 8 frames is corrupt
    (folder / "clip.avi").write_bytes(bytes(data))
    (folder / "notes.txt").write_text("not an input")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "notatar.tar").write_bytes(b"not a tar" * 50)
    deep = b"\x80\x02" + b"]" * 20_000 + b"a" * 19_999 + b"."
    with tarfile.open(labels / "deep.tar", "w") as tar:
        for name, payload in (("x.jpg", good.getvalue()), ("x.data.pyd", deep)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    np.savez(labels / "ragged.npz", imgname=np.array(["a.jpg", "a.jpg"]), center=np.zeros((3, 2)), scale=np.ones(2))
    np.savez(labels / "objects.npz", imgname=np.array(["a.jpg"]), center=np.array([{}], dtype=object),
             scale=np.ones(1))
    (labels / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "../../../../etc/passwd"}],
                                                  "annotations": []}))
    out = tmp_path / "out"
    inputs = [str(folder)] + [str(labels / n) for n in ("notatar.tar", "deep.tar", "ragged.npz", "objects.npz",
                                                        "coco.json")]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[3] / "pipelines" / "annotate.py"),
                           "--input", *inputs, "--out", str(out), "--runner", "loop", "--stages", "persons",
                           "--images-per-shard", "4", "--no-progress"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = _quarantine(out)
    reasons = {k: r for k, (_, r) in q.items()}
    assert any("not valid UTF-8" in r for k, r in reasons.items() if k.startswith("in/na"))
    assert "a FIFO" in reasons["in/pipe.jpg"] and "cannot be opened" in reasons["in/random.mp4"]
    assert "frame 3 cannot be decoded" in reasons["in/clip.avi/f000003"]
    assert "tar file" in reasons["notatar.tar"] and "nested too deeply" in reasons["deep/x"]
    assert "different row counts" in reasons["ragged.npz"] and "needs pickle" in reasons["objects.npz"]
    assert "leaves the image root" in reasons["coco/../../../../etc/passwd"]
    assert not any("root:" in r for r in reasons.values())  # /etc/passwd was never read
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_files"]["count"] == 1 and report["skipped_files"]["files"][0]["path"].endswith("notes.txt")
    written = {p["sample_key"] for p in read_parquet(out).to_pylist()}
    assert "in/good.jpg" in written
    # every frame of the clip is a record, a no-person sample or a quarantine row: none vanished
    clip_rows = {k for k in q if k.startswith("in/clip.avi/")} | {k for k in written if k.startswith("in/clip.avi/")}
    no_person = report["totals"]["samples_without_persons"]
    assert len(clip_rows) + no_person >= 8 and "in/clip.avi/f000003" in q
    assert not (out / LOCK_NAME).exists()


def test_a_job_that_dies_silently_with_its_cluster_is_told_apart_from_a_failure(monkeypatch, caplog) -> None:
    """The core worker may end the job's process as the cluster goes, before anything says why: the parent
    asks the head itself (a closed port is a lost cluster, exit status 3; an open one leaves the status)."""
    from pipelines.annotation.job import CLUSTER_LOST, cluster_reachable, supervise

    monkeypatch.setattr("sys.argv", ["-c", "import sys; sys.exit(1)"])  # the child: dies, says nothing
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert cluster_reachable(address, wait_s=0.01)
        assert cluster_reachable(f"ray://{address}", wait_s=0.01)
        assert supervise(address) == 1
    assert not cluster_reachable(address, wait_s=0.01)
    with caplog.at_level("ERROR"):
        assert supervise(address) == CLUSTER_LOST
    assert "lost the Ray cluster at" in caplog.text
    assert cluster_reachable("auto")  # nothing to check: not called lost
