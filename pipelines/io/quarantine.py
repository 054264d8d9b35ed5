"""The quarantine table: samples and persons that failed a stage, with the stage and the reason.

One Parquet file per shard, ``OUT/quarantine/{split}-{index:06d}.parquet`` (an empty table when nothing in the
shard failed), written before the shard's stats file (so it is committed with the shard), rows sorted by
``key``:

| column | meaning |
| --- | --- |
| ``key`` | the person key ``"{sample_key}/pNN"``, or the sample key when the whole sample failed |
| ``sample_key`` | the sample (image or video frame) it belongs to |
| ``source`` | where the sample came from (its file path or URL) |
| ``stage`` | the stage that failed it (``source``, ``load``, ``persons``, ``keypoints``, ..., ``sink``) |
| ``reason`` | one line: exception type and message, plus a digest of the traceback |

Readers: ``pandas.read_parquet("OUT/quarantine")``, DuckDB ``read_parquet('OUT/quarantine/*.parquet')``,
or :func:`read_quarantine`.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from pipelines.io.shards import TMP_PREFIX, shard_name

if TYPE_CHECKING:
    import pyarrow as pa
    from fsspec import AbstractFileSystem

QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True, order=True)
class QuarantineRow:
    """One failed sample or person (the columns of the table, in order)."""

    key: str
    """Person key, or the sample key when the whole sample failed."""
    sample_key: str
    """Key of the sample the row belongs to."""
    source: str
    """The sample's file path or URL."""
    stage: str
    """Stage that failed it."""
    reason: str
    """Why (one line)."""


COLUMNS = tuple(f.name for f in fields(QuarantineRow))


def quarantine_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(c, pa.string(), nullable=False) for c in COLUMNS])


def quarantine_path(root: str, split: str, index: int) -> str:
    """Path of shard ``(split, index)``'s quarantine file under ``root`` (a path on the output filesystem)."""
    return f"{root}/{QUARANTINE_DIR}/{shard_name(split, index)}.parquet"


def quarantine_table(rows: Sequence[QuarantineRow]) -> pa.Table:
    """The rows, sorted by key, as an Arrow table of :func:`quarantine_schema`."""
    import pyarrow as pa

    ordered = sorted(rows)
    return pa.Table.from_arrays(
        [pa.array([getattr(r, c) for r in ordered], type=pa.string()) for c in COLUMNS], schema=quarantine_schema()
    )


def write_quarantine(fs: AbstractFileSystem, root: str, split: str, index: int, rows: Sequence[QuarantineRow]) -> str:
    """Write shard ``index``'s quarantine file (through a temporary name, replacing any older one); returns its
    path. A shard with no failure gets an empty table of the same schema, so that every committed shard has one
    and ``SELECT ... FROM 'OUT/quarantine/*.parquet'`` works on a clean run too."""
    import pyarrow.parquet as pq

    path = quarantine_path(root, split, index)
    buf = io.BytesIO()
    pq.write_table(quarantine_table(rows), buf, compression="zstd")
    folder, base = path.rsplit("/", 1)
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{base}"
    fs.pipe_file(tmp, buf.getvalue())
    fs.mv(tmp, path)
    return path


def clean_quarantine_temporaries(fs: AbstractFileSystem, root: str) -> None:
    """Remove temporary quarantine files left by a writer that died (only while holding OUT's lock)."""
    folder = f"{root}/{QUARANTINE_DIR}"
    if fs.exists(folder):
        for path in fs.ls(folder, detail=False):
            if path.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                fs.rm_file(path)


def read_quarantine(out: str, *, filesystem: AbstractFileSystem | None = None, limit: int | None = None) -> pa.Table:
    """Every quarantine row of ``out`` (a local path or fsspec URL), ordered by file then key (the first
    ``limit`` rows only, reading no more files than needed, when given)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = (filesystem, out.rstrip("/")) if filesystem is not None else fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{QUARANTINE_DIR}"
    if not fs.exists(folder):
        return quarantine_schema().empty_table()
    paths = sorted(p for p in fs.ls(folder, detail=False)
                   if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(TMP_PREFIX))
    tables, rows = [], 0
    for path in paths:
        if limit is not None and rows >= limit:
            break
        # ParquetFile, not read_table: pyarrow 21 aborts at exit after read_table on an in-memory file
        tables.append(pq.ParquetFile(io.BytesIO(fs.cat_file(path))).read())
        rows += tables[-1].num_rows
    table = pa.concat_tables(tables) if tables else quarantine_schema().empty_table()
    return table if limit is None else table.slice(0, limit)

