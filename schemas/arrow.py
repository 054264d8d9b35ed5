"""The Arrow / Parquet form of the record, derived from :data:`schemas.ehm_v1.FIELDS`.

Layout: one row per person; one column per field in :data:`FIELDS` order. Scalars are plain columns
(``float``, ``int32``, ``bool``, ``string``); arrays are **nested fixed-size lists** with the field's
shape (``float32[133, 3]`` -> ``fixed_size_list<element: fixed_size_list<element: float, 3>, 133>``; the
item name ``element`` and non-null items are what Parquet's LIST convention reads back), so every reader sees
the shape without pearl. Parquet has no fixed-size list: the Arrow schema stored in the file restores
it for pyarrow / pandas; DuckDB and other Parquet readers see nested lists of the same lengths.
Every column is non-null. Field metadata carries ``unit``, ``frame``, ``part``, ``dtype``, ``shape``
(JSON) and ``doc``; the schema metadata carries ``schema_version``.

pyarrow is imported inside the functions so that ``import schemas`` stays light.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.ehm_v1 import FIELDS, SCHEMA_VERSION, Field, SchemaError, check_version

if TYPE_CHECKING:
    import pyarrow as pa

CROP_COLUMN = "crop_jpeg"
"""Optional binary column holding the crop's JPEG bytes (only when a writer is asked for images)."""

SCHEMA_VERSION_KEY = b"schema_version"
"""Key of the schema metadata entry that names the record schema version."""


def _arrow_type(f: Field, *, leaf: bool = False) -> pa.DataType:
    """Arrow type of a field's value (of one element if ``leaf``)."""
    import pyarrow as pa

    base = {"float32": pa.float32(), "int32": pa.int32(), "bool": pa.bool_(), "str": pa.string()}[f.dtype]
    for size in () if leaf else reversed(f.shape):
        base = pa.list_(pa.field("element", base, nullable=False), size)
    return base


def _field_metadata(f: Field) -> dict[bytes, bytes]:
    meta = {"unit": f.unit, "frame": f.frame, "part": f.part, "dtype": f.dtype, "shape": json.dumps(list(f.shape)),
            "doc": f.doc}
    return {k.encode(): v.encode() for k, v in meta.items()}


def arrow_schema(*, with_images: bool = False) -> pa.Schema:
    """The Arrow schema of a shard's Parquet file (plus a ``crop_jpeg`` binary column if ``with_images``)."""
    import pyarrow as pa

    fields = [pa.field(f.name, _arrow_type(f), nullable=False, metadata=_field_metadata(f)) for f in FIELDS]
    if with_images:
        fields.append(pa.field(CROP_COLUMN, pa.binary(), nullable=True,
                               metadata={b"doc": b"JPEG bytes of the person crop (null: no crop stored)"}))
    return pa.schema(fields, metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


def _nested_array(values: np.ndarray, f: Field) -> pa.Array:
    """Rows ``values  # [N, *f.shape]`` as a (nested) fixed-size-list array of the field's type."""
    import pyarrow as pa

    arr: pa.Array = pa.array(np.ascontiguousarray(values).reshape(-1), type=_arrow_type(f, leaf=True))
    for size in reversed(f.shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, type=pa.list_(pa.field("element", arr.type, nullable=False), size))
    return arr


def records_to_arrow(records: Sequence[Mapping[str, Any]], crops: Sequence[bytes | None] | None = None) -> pa.Table:
    """A table of canonical records (from :func:`schemas.validate`), in the order given.

    ``crops``: one JPEG ``bytes`` (or ``None``) per record, stored in a ``crop_jpeg`` column; leave it
    ``None`` for no image column.
    """
    import pyarrow as pa

    schema = arrow_schema(with_images=crops is not None)
    columns = []
    for f in FIELDS:
        values = [r[f.name] for r in records]
        if f.dtype == "str":
            columns.append(pa.array(values, type=pa.string()))
        else:
            stacked = np.stack(values) if values else np.zeros((0, *f.shape), dtype=f.dtype)
            columns.append(_nested_array(stacked.astype(f.dtype, copy=False), f))
    if crops is not None:
        if len(crops) != len(records):
            raise ValueError(f"crops has {len(crops)} entries for {len(records)} records")
        columns.append(pa.array(list(crops), type=pa.binary()))
    return pa.Table.from_arrays(columns, schema=schema)


def arrow_to_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns of a shard table as numpy: ``[N, *shape]`` arrays of the field dtype, object arrays of ``str``.

    Checks the table's ``schema_version`` metadata; columns that are not schema fields (``crop_jpeg``)
    come back as object arrays. Raises :class:`SchemaError` naming a missing column or one with nulls.
    """
    import pyarrow as pa

    meta = table.schema.metadata or {}
    version = meta.get(SCHEMA_VERSION_KEY)
    if version is None:
        raise SchemaError("table has no schema_version metadata; it was not written by pearl's shard writer")
    check_version(version.decode(), source="table")
    n = table.num_rows
    out: dict[str, np.ndarray] = {}
    known = {f.name: f for f in FIELDS}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if col.null_count and name in known:
            raise SchemaError(f"column {name!r} holds {col.null_count} null value(s)")
        f = known.get(name)
        if f is None or f.dtype == "str":
            out[name] = np.array(col.to_pylist(), dtype=object)
            continue
        leaf = col
        for _ in f.shape:
            if not pa.types.is_fixed_size_list(leaf.type):
                raise SchemaError(f"column {name!r} has type {col.type}, expected {_arrow_type(f)}")
            leaf = leaf.flatten()
        out[name] = leaf.to_numpy(zero_copy_only=False).astype(f.dtype, copy=False).reshape((n, *f.shape))
    missing = [f.name for f in FIELDS if f.name not in out]
    if missing:
        raise SchemaError(f"table is missing column {missing[0]!r}")
    return out
