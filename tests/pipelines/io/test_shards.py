"""Paired shard I/O: round trips, plain readers, atomic commit, determinism, fsspec, safe decoding."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

import schemas
from pipelines.io import shards
from pipelines.io.shards import ShardWriter


def _records(n: int, split: str = "train", offset: int = 0) -> list[dict]:
    return [schemas.random_record(seed, sample_key=f"dir.v1/img_{seed}.jpg", split=split)
            for seed in range(offset, offset + n)]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write(out, records, crops=None, index=0, **kw) -> shards.ShardPaths:
    with ShardWriter(out, "train", index, **kw) as writer:
        for i, record in enumerate(records):
            writer.add(record, None if crops is None else crops[i])
        return writer.commit({"errors": 0, "timings_s": {"total": 0.5}})


def _assert_same(got: dict, want: dict) -> None:
    canonical = schemas.validate(want)
    for f in schemas.FIELDS:
        if f.dtype == "str":
            assert got[f.name] == canonical[f.name], f.name
        else:
            assert np.asarray(got[f.name]).dtype == np.dtype(f.dtype), f.name
            np.testing.assert_array_equal(got[f.name], canonical[f.name], err_msg=f.name)


def _visible(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_shard_name_and_paths():
    assert shards.shard_name("train", 7) == "train-000007"
    for bad_split in ("", "tr-ain", "a.b", "ü"):
        with pytest.raises(ValueError, match="split"):
            shards.shard_name(bad_split, 0)
    with pytest.raises(ValueError, match="index"):
        shards.shard_name("train", -1)
    paths = shards.shard_paths("memory://b/run", "val", 3)
    assert paths.tar.endswith("/b/run/wds/val-000003.tar") and paths.tar.startswith("memory://")
    assert paths.stats.endswith("/b/run/stats/val-000003.json")


def test_round_trip_through_tar_and_parquet(tmp_path):
    records = _records(5)
    crops = [_jpeg(i) for i in range(4)] + [None]
    paths = _write(tmp_path, records, crops)
    assert _visible(tmp_path) == ["parquet/train-000000.parquet", "stats/train-000000.json", "wds/train-000000.tar"]

    samples = list(shards.iter_wds(paths.tar))
    assert [s["meta.json"]["key"] for s in samples] == [r["key"] for r in records]
    for sample, record, crop in zip(samples, records, crops):
        assert "." not in sample["__key__"]
        _assert_same(schemas.members_to_record(sample), record)
        assert sample.get("crop.jpg") == crop
    rgb = next(shards.iter_wds([paths.tar], rgb=True))["crop.jpg"]
    assert rgb.shape == (12, 8, 3) and rgb.dtype == np.uint8

    table = shards.read_parquet(tmp_path)
    assert table.num_rows == 5 and schemas.CROP_COLUMN not in table.column_names
    columns = schemas.arrow_to_columns(table)
    for i, record in enumerate(records):
        _assert_same({k: v[i] for k, v in columns.items()}, record)

    stats = json.loads(Path(paths.stats).read_text())
    assert stats["rows"] == 5 and stats["shard"] == "train-000000" and stats["errors"] == 0
    assert stats["schema_version"] == schemas.SCHEMA_VERSION and stats["timings_s"] == {"total": 0.5}
    for kind in ("tar", "parquet"):
        data = Path(getattr(paths, kind)).read_bytes()
        assert stats["files"][kind]["sha256"] == hashlib.sha256(data).hexdigest()
        assert stats["files"][kind]["bytes"] == len(data)


def test_tar_members_have_fixed_metadata(tmp_path):
    paths = _write(tmp_path, _records(2), [_jpeg(0), _jpeg(1)])
    with tarfile.open(paths.tar) as tar:
        members = tar.getmembers()
    assert [m.name.split(".", 1)[1] for m in members] == ["crop.jpg", "ehm.npz", "meta.json"] * 2
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}


def test_parquet_images_column(tmp_path):
    crops = [_jpeg(0), None]
    _write(tmp_path, _records(2), crops, parquet_images=True)
    table = shards.read_parquet(tmp_path)
    assert table.column(schemas.CROP_COLUMN).to_pylist() == crops


PLAIN_READER = r"""
import importlib.abc, json, sys

class NoPearl(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"schemas", "model", "annotators", "fitting", "pipelines"}:
            raise ImportError("pearl must not be imported here: " + name)

sys.meta_path.insert(0, NoPearl())
import duckdb, pandas, pyarrow as pa, pyarrow.parquet as pq

path = sys.argv[1]
table = pq.read_table(path)
kp = table.schema.field("kp2d_wholebody")
frame = pandas.read_parquet(path)
con = duckdb.connect()
row = con.execute(
    "SELECT key, typeof(kp2d_wholebody), len(kp2d_wholebody), kp2d_wholebody[2][3], smplx_betas[1], "
    "person_index, has_hands[2], bbox_score FROM read_parquet(?) ORDER BY key LIMIT 1", [path]).fetchone()
meta = dict(con.execute("SELECT key::VARCHAR, value::VARCHAR FROM parquet_kv_metadata(?)", [path]).fetchall())
print(json.dumps({
    "arrow_type": str(kp.type), "unit": kp.metadata[b"unit"].decode(), "frame": kp.metadata[b"frame"].decode(),
    "version": table.schema.metadata[b"schema_version"].decode(),
    "pandas_keys": frame["key"].tolist(),
    "pandas_kp": [list(map(float, point)) for point in frame["kp2d_wholebody"].iloc[0]][:2],
    "pandas_dtype": str(frame["kp2d_wholebody"].iloc[0][0].dtype),
    "duck": [row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]],
    "duck_version": meta.get("schema_version"),
    "pearl_loaded": sorted(m for m in sys.modules if m.split(".")[0] in {"schemas", "pipelines"}),
}))
"""


def test_plain_pyarrow_pandas_duckdb_read_the_parquet_without_pearl(tmp_path):
    records = sorted(_records(3), key=lambda r: r["key"])
    paths = _write(tmp_path / "out", records)
    done = subprocess.run([sys.executable, "-I", "-c", PLAIN_READER, paths.parquet], cwd=tmp_path,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["pearl_loaded"] == []
    assert got["arrow_type"] == str(schemas.arrow_schema().field("kp2d_wholebody").type)
    assert got["arrow_type"].startswith("fixed_size_list<element: fixed_size_list<element: float")
    assert (got["unit"], got["frame"], got["version"]) == ("px", "image", schemas.SCHEMA_VERSION)
    assert got["pandas_keys"] == [r["key"] for r in records]
    np.testing.assert_array_equal(got["pandas_kp"], records[0]["kp2d_wholebody"][:2])
    assert got["pandas_dtype"] == "float32"
    first = schemas.validate(records[0])
    key, duck_type, length, kp_value, beta, person, has_right, score = got["duck"]
    assert key == first["key"] and length == 133 and "FLOAT" in duck_type
    assert kp_value == pytest.approx(float(first["kp2d_wholebody"][1, 2]))
    assert beta == pytest.approx(float(first["smplx_betas"][0]))
    assert person == int(first["person_index"]) and has_right == bool(first["has_hands"][1])
    assert score == pytest.approx(float(first["bbox_score"]))
    assert got["duck_version"] == schemas.SCHEMA_VERSION


def test_exception_inside_the_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="stage blew up"):
        with ShardWriter(tmp_path, "train", 0) as writer:
            for record in _records(3):
                writer.add(record, _jpeg(0))
            raise RuntimeError("stage blew up")
    assert _visible(tmp_path) == []
    assert not shards.is_committed(tmp_path, "train", 0)
    assert shards.committed_shards(tmp_path) == set()
    assert shards.read_parquet(tmp_path).num_rows == 0


def test_leaving_the_block_without_commit_aborts_loudly(tmp_path):
    with pytest.raises(RuntimeError, match="without commit"):
        with ShardWriter(tmp_path, "train", 0) as writer:
            writer.add(_records(1)[0])
    assert _visible(tmp_path) == []


def test_crash_before_commit_leaves_only_temporaries(tmp_path):
    writer = ShardWriter(tmp_path, "train", 0)  # the process "dies" after adding: no commit, no abort
    for record in _records(3):
        writer.add(record)
    writer._tar_file.flush()
    visible = _visible(tmp_path)
    assert visible and all(Path(p).name.startswith(shards.TMP_PREFIX) for p in visible)
    assert not shards.is_committed(tmp_path, "train", 0) and shards.committed_shards(tmp_path) == set()
    assert shards.read_parquet(tmp_path).num_rows == 0
    assert list(shards.iter_wds(sorted(str(p) for p in (tmp_path / "wds").glob("*.tar")))) == []

    removed = shards.clean_temporaries(tmp_path)
    assert len(removed) == len(visible) and _visible(tmp_path) == []
    _write(tmp_path, _records(3))
    assert shards.committed_shards(tmp_path) == {"train-000000"}


def test_crash_during_commit_is_not_committed_and_rewrites_cleanly(tmp_path, monkeypatch):
    _write(tmp_path, _records(2))
    assert shards.is_committed(tmp_path, "train", 0)
    real_pipe = fsspec.implementations.local.LocalFileSystem.pipe_file

    def dying_pipe(self, path, value, **kw):
        if "/stats/" in path:
            raise KeyboardInterrupt("killed before the stats file")
        return real_pipe(self, path, value, **kw)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "pipe_file", dying_pipe)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, _records(3, offset=10))
    monkeypatch.undo()
    assert not shards.is_committed(tmp_path, "train", 0)  # the old stats went first
    assert not any(Path(p).name.startswith(shards.TMP_PREFIX) for p in _visible(tmp_path))
    _write(tmp_path, _records(3, offset=10))
    assert shards.read_parquet(tmp_path).column("key").to_pylist() == [r["key"] for r in _records(3, offset=10)]


def test_same_records_give_identical_bytes(tmp_path):
    records, crops = _records(4), [_jpeg(i) for i in range(4)]
    first = _write(tmp_path / "a", records, crops)
    second = _write(tmp_path / "b", [dict(r) for r in records], crops)
    for kind in ("tar", "parquet"):
        assert Path(getattr(first, kind)).read_bytes() == Path(getattr(second, kind)).read_bytes(), kind
    before = Path(first.tar).read_bytes()
    _write(tmp_path / "a", records, crops)  # rewrite in place
    assert Path(first.tar).read_bytes() == before
    stats = [json.loads(Path(p.stats).read_text())["files"] for p in (first, second)]
    assert stats[0] == stats[1]


def test_bad_records_are_refused_and_the_writer_goes_on(tmp_path):
    good, other = _records(2)
    with ShardWriter(tmp_path, "train", 0) as writer:
        bad = dict(good, smplx_betas=np.zeros(10))
        with pytest.raises(schemas.SchemaError, match="smplx_betas"):
            writer.add(bad)
        with pytest.raises(schemas.SchemaError, match="'split' is 'val'"):
            writer.add(_records(1, split="val")[0])
        writer.add(good)
        with pytest.raises(ValueError, match="already added"):
            writer.add(good)
        with pytest.raises(TypeError, match="JPEG bytes"):
            writer.add(other, crop_jpeg=np.zeros(3))
        with pytest.raises(ValueError, match="own key"):
            writer.commit({"rows": 3})
        writer.commit({})
    assert shards.read_parquet(tmp_path).num_rows == 1
    assert len(list(shards.iter_wds(shards.shard_paths(tmp_path, "train", 0).tar))) == 1
    with pytest.raises(RuntimeError, match="already committed"):
        writer.add(other)


def test_empty_shard_commits(tmp_path):
    paths = _write(tmp_path, [])
    assert shards.committed_shards(tmp_path) == {"train-000000"}
    assert json.loads(Path(paths.stats).read_text())["rows"] == 0
    assert shards.read_parquet(tmp_path).num_rows == 0
    assert list(shards.iter_wds(paths.tar)) == []


def test_many_shards_brace_urls_and_path_lists(tmp_path):
    for index in range(3):
        _write(tmp_path, _records(2, offset=10 * index), index=index)
    assert shards.committed_shards(tmp_path) == {f"train-{i:06d}" for i in range(3)}
    keys = [s["meta.json"]["key"] for s in shards.iter_wds(f"{tmp_path}/wds/train-{{000000..000002}}.tar")]
    assert keys == [r["key"] for i in range(3) for r in _records(2, offset=10 * i)]
    table = shards.read_parquet([str(tmp_path / "parquet" / "train-000002.parquet")], columns=["key"])
    assert table.column_names == ["key"] and table.num_rows == 2
    assert shards.read_parquet(tmp_path / "parquet" / "train-000001.parquet").num_rows == 2
    assert len(list(shards.iter_wds(tmp_path / "wds" / "train-000001.tar"))) == 2


def test_read_parquet_refuses_other_schema_versions(tmp_path):
    import pyarrow.parquet as pq

    table = schemas.records_to_arrow([schemas.validate(r) for r in _records(1)])
    pq.write_table(table.replace_schema_metadata({b"schema_version": b"ehm-v9"}), tmp_path / "x.parquet")
    with pytest.raises(schemas.SchemaError, match="'ehm-v9'"):
        shards.read_parquet([str(tmp_path / "x.parquet")])


def test_fsspec_memory_filesystem(tmp_path):
    out = f"memory://pearl-test-{uuid.uuid4().hex[:8]}/run"
    fs, root = fsspec.core.url_to_fs(out)
    try:
        records = _records(3)
        paths = _write(out, records, [_jpeg(0), None, _jpeg(2)])
        assert paths.tar.startswith("memory://")
        assert shards.committed_shards(out) == {"train-000000"}
        assert shards.is_committed(root, "train", 0, filesystem=fs)
        assert shards.read_parquet(out).column("key").to_pylist() == [r["key"] for r in records]
        samples = list(shards.iter_wds(paths.tar))
        assert [s["meta.json"]["key"] for s in samples] == [r["key"] for r in records]
        assert samples[0]["crop.jpg"] == _jpeg(0) and "crop.jpg" not in samples[1]
        local = _write(tmp_path, records, [_jpeg(0), None, _jpeg(2)])
        assert fs.cat_file(f"{root}/wds/train-000000.tar") == Path(local.tar).read_bytes()
        assert not any(shards.TMP_PREFIX in p for p in fs.find(root))
    finally:
        fs.rm(root.split("/run")[0], recursive=True)


class _Payload:
    """Pickles as a call of ``os.system``: a forbidden global."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _foreign_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_iter_wds_refuses_a_pickle_member_with_a_forbidden_global(tmp_path):
    marker = tmp_path / "pwned"
    benign = {"pose": np.arange(6, dtype=np.float32).reshape(2, 3), "name": "ok"}
    _foreign_tar(tmp_path / "foreign.tar", {"s0.txt": b"hello", "s0.pyd": pickle.dumps(benign),
                                            "s1.txt": b"bye", "s1.pyd": pickle.dumps(_Payload(marker))})
    raw = list(shards.iter_wds(str(tmp_path / "foreign.tar"), decode=False))
    assert raw[1]["pyd"] == pickle.dumps(_Payload(marker))
    samples = shards.iter_wds(str(tmp_path / "foreign.tar"))
    first = next(samples)
    assert first["txt"] == "hello" and first["pyd"]["name"] == "ok"
    np.testing.assert_array_equal(first["pyd"]["pose"], benign["pose"])
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global '(posix|os)\.system' in .*foreign\.tar:s1\.pyd"):
        next(samples)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        shards.safe_pickle_decoder(".pyd", pickle.dumps(_Payload(marker)))
    assert not marker.exists()


def test_safe_pickle_decoder_ignores_other_members():
    assert shards.safe_pickle_decoder(".json", b"{}") is None
    assert shards.safe_pickle_decoder("ehm.npz", b"PK") is None


def test_decode_sample_formats():
    arr = np.arange(4, dtype=np.float32)
    npy = io.BytesIO()
    np.save(npy, arr)
    sample = {"__key__": "k", "x.npy": npy.getvalue(), "info.json": b"[1, 2]", "cap.txt": "é".encode(),
              "blob.bin": b"\x00\x01", "ehm.npz": schemas.encode_npz({"a": arr})}
    out = shards.decode_sample(sample)
    np.testing.assert_array_equal(out["x.npy"], arr)
    assert out["info.json"] == [1, 2] and out["cap.txt"] == "é" and out["blob.bin"] == b"\x00\x01"
    np.testing.assert_array_equal(out["ehm.npz"]["a"], arr)
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        shards.decode_sample({"o.npy": obj.getvalue()})


def test_parquet_leaves_nan_columns_without_statistics_so_duckdb_finds_nan(tmp_path: Path) -> None:
    import duckdb
    import pyarrow.parquet as pq

    from pipelines.io.shards import STATISTICS_COLUMNS

    records = _records(4)
    for i, r in enumerate(records):
        r["quality_reproj_px_body"] = np.float32(np.nan if i % 2 else 3.0 + i)
    _write(tmp_path, records)
    path = tmp_path / "parquet" / "train-000000.parquet"
    meta = pq.ParquetFile(path).metadata.row_group(0)
    stats = {meta.column(i).path_in_schema: meta.column(i).is_stats_set for i in range(meta.num_columns)}
    assert stats["quality_reproj_px_body"] is False and stats["person_index"] is True
    assert "quality_reproj_px_body" not in STATISTICS_COLUMNS and "key" in STATISTICS_COLUMNS
    count = duckdb.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE isnan(quality_reproj_px_body)").fetchone()
    assert count == (2,)
