"""Readers of SMPL-labelled sources: 4D-Humans-style WebDataset tars and SPIN/HMR npz files."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from annotators.body import label_entry
from pipelines.io.samples import SourceError
from pipelines.io.smpl_sources import (
    box_from_center_scale,
    person_entry,
    smpl_source_samples,
    spin_npz_samples,
    wds_smpl_samples,
)

H36M_NAMES = ("S1_Directions_1.54138969_000001.jpg", "S5_SittingDown.54138969_002061.jpg")
"""Image names of the H36M-style npz (SPIN's eval file layout: dots inside the name, images under images/)."""


def _person(seed: int, center=(200.0, 150.0), scale=1.2) -> dict:
    rng = np.random.default_rng(seed)
    return {"body_pose": rng.normal(0, 0.2, 72).astype(np.float32), "betas": rng.normal(0, 1, 10).astype(np.float32),
            "has_body_pose": np.array(1.0), "has_betas": np.array(1.0),
            "keypoints_2d": np.concatenate([rng.uniform(0, 300, (44, 2)), np.ones((44, 1))], 1).astype(np.float32),
            "keypoints_3d": np.zeros((44, 4), np.float32), "center": np.array(center, np.float32),
            "scale": np.array([scale, scale], np.float32), "extra_info": {"fitting_loss": np.array(1.5)}}


class _Exploit:
    """Pickles to a call of ``os.system`` (a global the restricted unpickler must refuse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_4dhumans_tar(path: Path, jpeg: bytes, marker: Path) -> Path:
    """A WebDataset tar like 4D-Humans': two images with data.pyd, one with a forbidden global, one without labels."""
    with tarfile.open(path, "w") as tar:
        _add(tar, "000/a.jpg", jpeg)
        _add(tar, "000/a.data.pyd", pickle.dumps([_person(0), _person(1, center=(400.0, 300.0), scale=1.5)]))
        _add(tar, "000/b.jpg", jpeg)
        _add(tar, "000/b.data.pyd", pickle.dumps([_person(2) | {"has_body_pose": np.array(0.0)}]))
        _add(tar, "000/evil.jpg", jpeg)
        _add(tar, "000/evil.data.pyd", pickle.dumps([{"center": np.zeros(2), "scale": 1.0, "x": _Exploit(marker)}]))
        _add(tar, "000/nolabel.jpg", jpeg)
    return path


def make_h36m_npz(folder: Path, jpeg: bytes) -> Path:
    """An npz laid out like SPIN's H36M eval file ``h36m_smpl_j24.npz`` (float64 ``center``, ``scale``,
    ``pose`` [N, 72], ``shape`` [N, 10], ``part`` [N, 24, 3], plus ``S`` and ``iuv_names`` that pearl
    ignores), one person per image, the images in ``folder/images``."""
    (folder / "images").mkdir(parents=True)
    for name in H36M_NAMES:
        (folder / "images" / name).write_bytes(jpeg)
    rng = np.random.default_rng(7)
    n = len(H36M_NAMES)
    part = np.concatenate([rng.uniform(150, 450, (n, 24, 2)), np.ones((n, 24, 1))], axis=2)
    path = folder / "h36m_smpl_j24.npz"
    np.savez(path, imgname=np.array(H36M_NAMES), center=np.array([[320.0, 240.0], [300.5, 260.25]]),
             scale=np.array([2.0, 1.45]), pose=rng.normal(0, 0.2, (n, 72)), shape=rng.normal(0, 1, (n, 10)),
             part=part, S=np.zeros((n, 24, 4)), iuv_names=np.array([f"{i}.png" for i in range(n)]))
    return path


@pytest.fixture()
def jpeg() -> bytes:
    """A 640x480 JPEG made here: a colour gradient with a person-sized block."""
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([x * 255 // 639, y * 255 // 479, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    rgb[60:420, 260:380] = (200, 120, 90)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_4dhumans_tar_is_parsed_and_a_forbidden_pickle_refused(tmp_path: Path, jpeg: bytes) -> None:
    marker = tmp_path / "pwned"
    url = str(make_4dhumans_tar(tmp_path / "shard-000.tar", jpeg, marker))
    samples = {s.sample_key: s for s in wds_smpl_samples(url)}
    assert sorted(samples) == ["shard-000/000/a", "shard-000/000/b", "shard-000/000/evil", "shard-000/000/nolabel"]
    assert not marker.exists()  # nothing in the forbidden pickle ran
    evil = samples["shard-000/000/evil"]
    assert "refused label pickle" in evil.error_reason and "posix.system" in evil.error_reason and evil.labels == ""
    assert "no 000/nolabel.data.pyd" in samples["shard-000/000/nolabel"].error_reason
    a = samples["shard-000/000/a"]
    assert a.uri == f"tar://000/a.jpg::{url}" and not a.error_reason
    import fsspec

    with fsspec.open(a.uri, "rb") as fh:
        assert fh.read() == jpeg
    entries = json.loads(a.labels)
    np.testing.assert_allclose([e["box"] for e in entries], [[80, 30, 320, 270], [250, 150, 550, 450]], atol=1e-4)
    person = _person(0)
    np.testing.assert_allclose(entries[0]["smpl"]["global_orient"], person["body_pose"][:3], atol=1e-6)
    np.testing.assert_allclose(entries[0]["smpl"]["body_pose"], person["body_pose"][3:], atol=1e-6)
    np.testing.assert_allclose(entries[0]["smpl"]["betas"], person["betas"], atol=1e-6)
    assert entries[0]["keypoints_2d"]["layout"] == "openpose25+19" and len(entries[0]["keypoints_2d"]["points"]) == 44
    b = json.loads(samples["shard-000/000/b"].labels)[0]
    assert b["smpl"]["has_body_pose"] == 0 and b["smpl"]["has_betas"] == 1
    assert label_entry(a.labels, np.float32(entries[1]["box"])) == entries[1]  # float32 boxes still match
    assert label_entry(a.labels, [0, 0, 1, 1]) is None and label_entry("", [0, 0, 1, 1]) is None
    assert smpl_source_samples(url)[0].sample_key == "shard-000/000/a"


def test_person_entries_are_checked() -> None:
    assert box_from_center_scale([100, 100], 0.5) == [50.0, 50.0, 150.0, 150.0]
    with pytest.raises(ValueError, match="scale"):
        box_from_center_scale([100, 100], -1)
    with pytest.raises(ValueError, match="body_pose has 60"):
        person_entry({"center": [0, 0], "scale": 1.0, "body_pose": np.zeros(60)})
    with pytest.raises(ValueError, match="NaN"):
        person_entry({"center": [0, 0], "scale": 1.0, "body_pose": np.full(72, np.nan)})
    entry = person_entry({"center": [0, 0], "scale": 1.0, "body_pose": np.zeros(69), "global_orient": [1, 2, 3],
                          "trans": [0, 0, 5], "cam_int": np.eye(3)})
    assert entry["smpl"]["global_orient"] == [1.0, 2.0, 3.0] and entry["smpl"]["transl"] == [0.0, 0.0, 5.0]
    assert entry["cam_intrinsics"] == np.eye(3).tolist() and entry["smpl"]["has_betas"] == 0


def test_spin_npz_groups_persons_and_finds_images(tmp_path: Path, jpeg: bytes) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.jpg").write_bytes(jpeg)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", imgname=np.array(["x.jpg", "x.jpg", "y.jpg"]), center=rng.uniform(100, 200, (3, 2)),
             scale=np.array([1.0, 0.8, 1.2]), pose=rng.normal(0, 0.1, (3, 72)), shape=rng.normal(0, 1, (3, 10)),
             part=np.ones((3, 24, 3)), S=np.zeros((3, 24, 4)), has_smpl=np.array([1, 0, 1]))
    samples = spin_npz_samples(str(tmp_path / "set.npz"))
    assert [s.sample_key for s in samples] == ["set/x.jpg", "set/y.jpg"]
    assert samples[0].uri == f"{tmp_path}/images/x.jpg"
    entries = json.loads(samples[0].labels)
    assert len(entries) == 2 and "smpl" in entries[0] and "smpl" not in entries[1]
    assert entries[0]["keypoints_2d"]["layout"] == "spin24"
    np.savez(tmp_path / "objects.npz", imgname=np.array([{"a": 1}], dtype=object), center=np.zeros((1, 2)),
             scale=np.ones(1))
    with pytest.raises(SourceError, match="pickle"):
        spin_npz_samples(str(tmp_path / "objects.npz"))
    np.savez(tmp_path / "partial.npz", imgname=np.array(["x.jpg"]))
    with pytest.raises(SourceError, match="center"):
        spin_npz_samples(str(tmp_path / "partial.npz"))


def test_h36m_style_npz_is_parsed(tmp_path: Path, jpeg: bytes) -> None:
    npz = make_h36m_npz(tmp_path / "h36m", jpeg)
    data = np.load(npz)
    samples = spin_npz_samples(str(npz))
    assert [s.sample_key for s in samples] == [f"h36m_smpl_j24/{n}" for n in H36M_NAMES]
    for s, pose, shape, center, scale in zip(samples, data["pose"], data["shape"], data["center"], data["scale"]):
        assert s.uri == str(tmp_path / "h36m" / "images" / s.sample_key.split("/", 1)[1])
        assert Path(s.uri).read_bytes() == jpeg and not s.error_reason
        (entry,) = json.loads(s.labels)
        np.testing.assert_allclose(entry["smpl"]["global_orient"], pose[:3])
        np.testing.assert_allclose(entry["smpl"]["body_pose"], pose[3:])
        np.testing.assert_allclose(entry["smpl"]["betas"], shape)
        np.testing.assert_allclose(entry["box"], [*(center - 100 * scale), *(center + 100 * scale)])
        assert entry["keypoints_2d"]["layout"] == "spin24" and len(entry["keypoints_2d"]["points"]) == 24
    np.testing.assert_allclose(json.loads(samples[0].labels)[0]["box"], [120.0, 40.0, 520.0, 440.0])


@pytest.mark.slow
def test_pipeline_annotates_a_4dhumans_tar_and_h36m(tmp_path: Path, jpeg: bytes, job_config, pearl_cache) -> None:
    """End to end with the plain-loop runner: persons (label boxes) then body (SMPL -> SMPL-X)."""
    from pipelines.annotation.job import run_job
    from pipelines.io import sources
    from pipelines.io.shards import read_parquet

    tar = make_4dhumans_tar(tmp_path / "shard-000.tar", jpeg, tmp_path / "pwned")
    inputs = [str(tar), str(make_h36m_npz(tmp_path / "h36m", jpeg))]
    found = sources.discover_samples(inputs)
    assert [s.sample_key for s in found] == [*(f"h36m_smpl_j24/{n}" for n in H36M_NAMES), "shard-000/000/a",
                                             "shard-000/000/b", "shard-000/000/evil", "shard-000/000/nolabel"]
    config = job_config(inputs, tmp_path / "out", stages=["persons", "body"], images_per_shard=4)
    config.stages[1].options = {"cache_dir": str(tmp_path / "calibration"), "device": "cpu"}
    report = run_job(config)
    table = read_parquet(tmp_path / "out").to_pandas()
    labelled = table[table["sample_key"].str.startswith("shard-000/000/a")]
    assert len(labelled) == 2 and labelled["has_body"].all() and labelled["has_smpl_label"].all()
    assert (labelled["quality_transfer_vertex_mm"] < 20).all()
    unlabelled = table[table["sample_key"] == "shard-000/000/b"]
    assert len(unlabelled) == 1 and not unlabelled["has_smpl_label"].any()
    assert report["totals"]["quarantined"] >= 2  # the refused pickle and the image without labels
    h36m = table[table["sample_key"].str.startswith("h36m_smpl_j24/")]
    assert len(h36m) == 2 and h36m["has_body"].all() and h36m["has_smpl_label"].all()
