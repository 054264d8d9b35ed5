"""The Arrow and WebDataset forms derived from the record definition."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pyarrow as pa
import pytest

import schemas
from schemas import FIELDS, SchemaError


def _records(n: int) -> list[dict]:
    return [schemas.validate(schemas.random_record(seed, sample_key=f"img_{seed}.jpg", split="train"))
            for seed in range(n)]


def _assert_records_equal(got: dict, want: dict) -> None:
    for f in FIELDS:
        if f.dtype == "str":
            assert got[f.name] == want[f.name], f.name
        else:
            assert np.asarray(got[f.name]).dtype == np.dtype(f.dtype), f.name
            np.testing.assert_array_equal(got[f.name], want[f.name], err_msg=f.name)


def test_arrow_schema_types_and_metadata():
    schema = schemas.arrow_schema()
    assert schema.names == list(schemas.FIELD_NAMES)
    assert schema.metadata[schemas.SCHEMA_VERSION_KEY] == schemas.SCHEMA_VERSION.encode()
    kp = schema.field("kp2d_wholebody")
    assert pa.types.is_fixed_size_list(kp.type) and kp.type.list_size == 133 and not kp.nullable
    assert kp.type.value_type.list_size == 3 and kp.type.value_type.value_type == pa.float32()
    assert kp.metadata[b"unit"] == b"px" and kp.metadata[b"frame"] == b"image"
    assert json.loads(kp.metadata[b"shape"]) == [133, 3] and kp.metadata[b"doc"]
    assert schema.field("bbox_score").type == pa.float32()
    assert schema.field("person_index").type == pa.int32()
    assert schema.field("has_hands").type.value_type == pa.bool_()
    assert schema.field("key").type == pa.string()
    assert schemas.arrow_schema(with_images=True).field(schemas.CROP_COLUMN).type == pa.binary()


def test_arrow_round_trip_keeps_values_and_dtypes():
    records = _records(4)
    table = schemas.records_to_arrow(records)
    assert table.schema.equals(schemas.arrow_schema(), check_metadata=True)
    columns = schemas.arrow_to_columns(table)
    for i, record in enumerate(records):
        _assert_records_equal({name: col[i] for name, col in columns.items()}, record)
    assert columns["kp2d_wholebody"].shape == (4, 133, 3)


def test_parquet_reads_back_the_exact_schema(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(schemas.records_to_arrow(_records(2)), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").schema.equals(schemas.arrow_schema(), check_metadata=True)


def test_arrow_round_trip_of_no_records_and_sliced_tables():
    empty = schemas.arrow_to_columns(schemas.records_to_arrow([]))
    assert empty["mano_hand_pose"].shape == (0, 2, 15, 3)
    records = _records(5)
    sliced = schemas.arrow_to_columns(schemas.records_to_arrow(records).slice(2, 2))
    np.testing.assert_array_equal(sliced["smplx_body_pose"][0], records[2]["smplx_body_pose"])


def test_arrow_to_columns_refuses_foreign_tables():
    table = schemas.records_to_arrow(_records(1))
    with pytest.raises(SchemaError, match="no schema_version"):
        schemas.arrow_to_columns(table.replace_schema_metadata({}))
    with pytest.raises(SchemaError, match="'ehm-v9'"):
        schemas.arrow_to_columns(table.replace_schema_metadata({b"schema_version": b"ehm-v9"}))
    with pytest.raises(SchemaError, match="missing column 'smplx_betas'"):
        schemas.arrow_to_columns(table.drop_columns(["smplx_betas"]))


def test_crops_column():
    records = _records(2)
    table = schemas.records_to_arrow(records, [b"\xff\xd8a", None])
    assert table.column(schemas.CROP_COLUMN).to_pylist() == [b"\xff\xd8a", None]
    with pytest.raises(ValueError, match="crops has 1 entries for 2 records"):
        schemas.records_to_arrow(records, [None])


def test_wds_codecs_cover_every_field_once():
    codecs = schemas.wds_codecs()
    assert set(codecs) == {schemas.NPZ_MEMBER, schemas.META_MEMBER}
    covered = [name for codec in codecs.values() for name in codec.fields]
    assert sorted(covered) == sorted(schemas.FIELD_NAMES)
    assert "key" in codecs[schemas.META_MEMBER].fields and "bbox_score" in codecs[schemas.NPZ_MEMBER].fields


def test_members_round_trip_and_are_deterministic():
    record = _records(1)[0]
    members = schemas.record_to_members(record)
    assert members == schemas.record_to_members(dict(record))
    decoded = {m: schemas.wds_codecs()[m].decode(data) for m, data in members.items()}
    _assert_records_equal(schemas.members_to_record(decoded), record)
    meta = json.loads(members[schemas.META_MEMBER])
    assert meta["key"] == record["key"] and list(meta) == sorted(meta)


def test_npz_has_fixed_timestamps_and_no_pickles():
    data = schemas.encode_npz({"a": np.arange(3, dtype=np.float32), "s": np.float32(2.0)})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert [i.date_time for i in zf.infolist()] == [(1980, 1, 1, 0, 0, 0)] * 2
    assert schemas.decode_npz(data)["s"].shape == ()
    with pytest.raises(ValueError, match="pickle"):
        schemas.encode_npz({"o": np.array([{"x": 1}], dtype=object)})
    buf = io.BytesIO()
    np.savez(buf, o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        schemas.decode_npz(buf.getvalue())


def test_wds_key_is_safe_and_unique():
    keys = ["a/b.c.jpg/p00", "a_b_c_jpg/p00", "x" * 500 + "/p01", "ä/ö.png/p00", "../../etc/p00"]
    wkeys = [schemas.wds_key(k) for k in keys]
    assert len(set(wkeys)) == len(keys)
    for w in wkeys:
        assert "." not in w and "/" not in w and len(w) <= 77 and w.isascii()
    assert schemas.wds_key(keys[0]) == schemas.wds_key(keys[0])


def test_members_to_record_names_missing_member():
    with pytest.raises(SchemaError, match="no ehm.npz member"):
        schemas.members_to_record({"__key__": "k", "meta.json": {}})


def test_npz_decoder_matches_numpy_and_refuses_objects():
    for seed in range(3):  # every member of records, NaN and empty arrays included
        data = schemas.record_to_members(schemas.random_record(seed))[schemas.NPZ_MEMBER]
        fast, reference = schemas.decode_npz(data), schemas.decode_npz_reference(data)
        assert fast.keys() == reference.keys() and len(fast) > 40
        for name in fast:
            assert fast[name].dtype == reference[name].dtype and fast[name].shape == reference[name].shape
            assert np.array_equal(fast[name], reference[name], equal_nan=True), name
    buf = io.BytesIO()
    np.savez_compressed(buf, f=np.asfortranarray(np.arange(6.0).reshape(2, 3)), s=np.float64(2.0))
    for name, value in schemas.decode_npz_reference(buf.getvalue()).items():
        assert np.array_equal(schemas.decode_npz(buf.getvalue())[name], value)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        entry = io.BytesIO()
        np.lib.format.write_array(entry, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
        zf.writestr("smplx_betas.npy", entry.getvalue())
    with pytest.raises(ValueError, match="Python objects"):
        schemas.decode_npz(buf.getvalue())
    with pytest.raises(ValueError, match="not a valid .npz"):
        schemas.decode_npz(b"not a zip")
