"""The versioned EHM record schema. Imports nothing of the project.

The record is defined once, in :mod:`schemas.ehm_v1` (:data:`FIELDS`); the Arrow/Parquet schema
(:mod:`schemas.arrow`) and the WebDataset member/codec map (:mod:`schemas.wds`) are derived from it.
pyarrow is only imported when an Arrow function is called. The keypoint layouts of the record are in
:mod:`schemas.keypoints`; :mod:`schemas.docs` writes the field tables of ``docs/schema.md``.
"""

from schemas.arrow import CROP_COLUMN, SCHEMA_VERSION_KEY, arrow_schema, arrow_to_columns, records_to_arrow
from schemas.ehm_v1 import (
    DTYPES,
    FIELD_NAMES,
    FIELDS,
    FRAMES,
    PARTS,
    QUALITY_FLAG_DOCS,
    SCHEMA_VERSION,
    Field,
    QualityFlag,
    SchemaError,
    check_version,
    empty_record,
    field,
    fields_of_part,
    fill_values,
    person_key,
    random_record,
    validate,
)
from schemas.wds import (
    CROP_MEMBER,
    META_MEMBER,
    NPZ_MEMBER,
    WdsCodec,
    decode_json,
    decode_npz,
    decode_npz_reference,
    encode_json,
    encode_npz,
    members_to_record,
    record_to_members,
    wds_codecs,
    wds_key,
)

__all__ = [
    "CROP_COLUMN",
    "CROP_MEMBER",
    "DTYPES",
    "FIELDS",
    "FIELD_NAMES",
    "FRAMES",
    "META_MEMBER",
    "NPZ_MEMBER",
    "PARTS",
    "QUALITY_FLAG_DOCS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_KEY",
    "Field",
    "QualityFlag",
    "SchemaError",
    "WdsCodec",
    "arrow_schema",
    "arrow_to_columns",
    "check_version",
    "decode_json",
    "decode_npz",
    "decode_npz_reference",
    "empty_record",
    "encode_json",
    "encode_npz",
    "field",
    "fields_of_part",
    "fill_values",
    "members_to_record",
    "person_key",
    "random_record",
    "record_to_members",
    "records_to_arrow",
    "validate",
    "wds_codecs",
    "wds_key",
]
