"""The EHM v1 record definition, validate() and the generated docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import schemas
from schemas import FIELDS, SchemaError, validate
from schemas.docs import render

ROOT = Path(__file__).resolve().parents[2]

BRIEF_FIELDS = {
    "provenance": "key sample_key source split person_index track_id frame_index image_width image_height "
                  "schema_version code_version config_hash body_model_kit asset_hashes backends",
    "camera": "bbox_xyxy bbox_score bbox_source cam_intrinsics",
    "keypoints": "kp2d_wholebody mp_face_landmarks mp_hand_landmarks_3d has_kp_body has_face has_hands conf_body "
                 "conf_face conf_hands",
    "body": "has_body smplx_betas smplx_global_orient smplx_body_pose smplx_transl smplx_left_hand_pose "
            "smplx_right_hand_pose smplx_jaw_pose smplx_leye_pose smplx_reye_pose smplx_expression has_smpl_label "
            "smpl_global_orient smpl_body_pose smpl_betas",
    "hands": "mano_global_orient mano_hand_pose mano_betas hand_scale",
    "face": "flame_shape flame_expression flame_jaw_pose flame_eye_pose flame_eyelids head_scale",
}


def test_fields_carry_the_brief_names_shapes_and_parts():
    for part, names in BRIEF_FIELDS.items():
        for name in names.split():
            assert schemas.field(name).part == part, name
    assert schemas.field("kp2d_wholebody").shape == (133, 3)
    assert schemas.field("mp_face_landmarks").shape == (478, 3)
    assert schemas.field("mp_hand_landmarks_3d").shape == (2, 21, 3)
    assert schemas.field("smplx_body_pose").shape == (21, 3)
    assert schemas.field("smpl_body_pose").shape == (23, 3)
    assert schemas.field("mano_hand_pose").shape == (2, 15, 3)
    assert schemas.field("flame_shape").shape == (300,)
    assert schemas.field("flame_expression").shape == (100,)
    assert schemas.field("cam_intrinsics").shape == (3, 3)
    assert schemas.field("person_index").dtype == "int32"
    assert schemas.field("has_hands").dtype == "bool" and schemas.field("has_hands").shape == (2,)
    quality = schemas.fields_of_part("quality")
    assert quality and all(f.name.startswith("quality_") for f in quality)


def test_every_field_is_fully_described():
    assert len({f.name for f in FIELDS}) == len(FIELDS)
    for f in FIELDS:
        assert f.dtype in schemas.DTYPES, f.name
        assert f.part in schemas.PARTS, f.name
        assert f.frame in schemas.FRAMES, f.name
        assert f.unit and f.doc, f.name
        if f.mask:
            gate = schemas.field(f.mask)
            assert gate.dtype == "bool" and gate.name.startswith("has_"), f.name
            assert f.shape[: len(gate.shape)] == gate.shape, f"{f.name} is not indexed like {gate.name}"
        if not f.required and f.dtype != "str":
            fill = f.fill_value()
            assert fill.dtype == np.dtype(f.dtype) and fill.shape == f.shape


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="smplx_pose"):
        schemas.field("smplx_pose")
    with pytest.raises(KeyError, match="legs"):
        schemas.fields_of_part("legs")


def test_random_records_validate_into_exact_dtypes():
    for seed in range(5):
        record = validate(schemas.random_record(seed))
        assert list(record) == list(schemas.FIELD_NAMES)
        for f in FIELDS:
            value = record[f.name]
            if f.dtype == "str":
                assert isinstance(value, str)
            else:
                assert value.dtype == np.dtype(f.dtype) and value.shape == f.shape, f.name


def _required_values() -> dict:
    return dict(key="a.jpg/p01", sample_key="a.jpg", source="folder", split="train", person_index=1,
                image_width=640, image_height=480, code_version="0.1.0+abc", config_hash="c0ffee",
                body_model_kit="synthetic", asset_hashes=json.dumps({"smplx/SMPLX_NEUTRAL.npz": "00"}),
                backends=json.dumps({"keypoints": "mediapipe@0.10.21"}),
                bbox_xyxy=np.array([1, 2, 30, 40], np.float32), bbox_score=1.0, bbox_source="label",
                cam_intrinsics=np.eye(3, dtype=np.float32))


def test_empty_record_has_every_part_missing():
    record = validate(schemas.empty_record(**_required_values()))
    assert not record["has_body"] and not record["has_face"] and not record["has_hands"].any()
    assert not record["has_smpl_label"] and not record["has_kp_body"]
    assert np.isnan(record["quality_reproj_px_body"]) and record["quality_flags"] == 0
    assert record["frame_index"] == -1 and record["track_id"] == ""
    np.testing.assert_array_equal(record["hand_scale"], [1.0, 1.0])
    assert record["schema_version"] == schemas.SCHEMA_VERSION


def test_empty_record_names_missing_required_and_unknown_fields():
    values = _required_values()
    del values["config_hash"]
    with pytest.raises(SchemaError, match="config_hash"):
        schemas.empty_record(**values)
    with pytest.raises(SchemaError, match="smplx_pose"):
        schemas.empty_record(**_required_values(), smplx_pose=np.zeros(3, np.float32))


def test_fill_values_serve_as_stage_placeholders():
    fills = schemas.fill_values([f.name for f in schemas.fields_of_part("hands")])
    assert set(fills) == {"mano_global_orient", "mano_hand_pose", "mano_betas", "hand_scale"}
    assert fills["mano_hand_pose"].shape == (2, 15, 3) and fills["mano_hand_pose"].dtype == np.float32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"smplx_betas": None}, "missing field 'smplx_betas'"),
        ({"smplx_body_pose": np.zeros((22, 3), np.float32)},
         r"'smplx_body_pose' has shape \(22, 3\), expected \(21, 3\)"),
        ({"smplx_betas": np.zeros(10)}, "'smplx_betas' has dtype float64, expected float32"),
        ({"bbox_score": np.float64(0.5)}, "'bbox_score' has dtype float64"),
        ({"has_hands": np.zeros(2, np.int32)}, "'has_hands' has dtype int32, expected bool"),
        ({"flame_shape": np.full(300, np.nan, np.float32)}, "'flame_shape' holds NaN/inf at index \\[0\\]"),
        ({"smplx_transl": np.array([0, np.inf, 0], np.float32)}, "'smplx_transl' holds NaN/inf at index \\[1\\]"),
        ({"quality_reproj_px_hands": np.array([np.nan, np.inf], np.float32)}, "'quality_reproj_px_hands' holds inf"),
        ({"conf_hands": np.array([0.5, 1.5], np.float32)}, "'conf_hands' holds 1.5 at index \\[1\\], outside"),
        ({"body_model_kit": "smplx"}, "'body_model_kit' is 'smplx'; allowed values: 'synthetic', 'official'"),
        ({"bbox_source": "guess"}, "'bbox_source' is 'guess'"),
        ({"schema_version": "ehm-v2"}, "'schema_version' is 'ehm-v2'"),
        ({"split": "train-a"}, "'split' is 'train-a'"),
        ({"backends": "[1, 2]"}, "'backends' must hold a JSON object"),
        ({"asset_hashes": "{oops"}, "'asset_hashes' is not valid JSON"),
        ({"key": "a.jpg/p02"}, "'key' is 'a.jpg/p02'; .* must be 'a.jpg/p01'"),
        ({"person_index": 2**40}, "'person_index' is 1099511627776, outside int32"),
        ({"person_index": -1}, "'person_index' holds -1, outside"),
        ({"person_index": 1.0}, "'person_index' must be an int"),
        ({"has_body": 1}, "'has_body' must be a bool"),
        ({"source": b"bytes"}, "'source' must be a str"),
        ({"kp2d_wholebody": [[0.0, 0.0, 0.0]] * 133}, "'kp2d_wholebody' must be a numpy array of float32"),
        ({"smplx_pose": np.zeros(3, np.float32)}, "'smplx_pose', which schema ehm-v1 does not define"),
    ],
)
def test_validate_names_the_field(change, message):
    record = schemas.empty_record(**_required_values())
    for name, value in change.items():
        if value is None:
            del record[name]
        else:
            record[name] = value
    with pytest.raises(SchemaError, match=message):
        validate(record)


def test_validate_accepts_python_scalars_and_drops_extras_when_asked():
    record = schemas.empty_record(**_required_values())
    record.update(bbox_score=1, conf_body=0.25, has_body=True, frame_index=7, error_stage="")
    out = validate(record, allow_extra=True)
    assert "error_stage" not in out
    assert out["bbox_score"].dtype == np.float32 and out["bbox_score"] == 1.0
    assert out["frame_index"].dtype == np.int32 and out["has_body"].dtype == np.bool_
    with pytest.raises(SchemaError, match="a mapping"):
        validate([("key", "x")])


def test_check_version_refuses_other_versions():
    schemas.check_version(schemas.SCHEMA_VERSION)
    with pytest.raises(SchemaError, match="'ehm-v2'.*reads 'ehm-v1'"):
        schemas.check_version("ehm-v2", source="shard x")


def test_quality_flags_are_distinct_bits_with_docs():
    values = [flag.value for flag in schemas.QualityFlag]
    assert all(v & (v - 1) == 0 for v in values) and len(set(values)) == len(values)
    assert set(schemas.QUALITY_FLAG_DOCS) == set(schemas.QualityFlag)


def test_docs_schema_md_lists_every_field_and_is_current():
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    for f in FIELDS:
        assert f"| `{f.name}` |" in text, f.name
    assert render(text) == text, "docs/schema.md is stale: run `python -m schemas.docs docs/schema.md`"


def test_import_schemas_stays_light():
    code = "import sys, schemas; assert not {'pyarrow', 'torch'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
