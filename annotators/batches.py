"""Batches: ``dict[str, np.ndarray]`` whose columns share their length along axis 0.

The helpers every stage and every driver uses to measure, slice, join, split and pad batches; they know
nothing of stages, errors or Ray (those are in :mod:`annotators.base` and :mod:`pipelines`).
Variable-size things (images, crops) travel as ``dtype=object`` columns holding one ``np.ndarray`` per
row; every helper keeps object columns as object arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]
"""A batch of rows: column name -> array with one entry per row along axis 0."""


def batch_len(batch: Mapping[str, np.ndarray]) -> int:
    """Number of rows of a batch; raises ``ValueError`` naming the column whose length disagrees."""
    n = None
    for key, col in batch.items():
        length = len(col)
        if n is None:
            n = length
        elif length != n:
            raise ValueError(f"batch column {key!r} has {length} rows, expected {n}")
    return 0 if n is None else n


def take_rows(batch: Mapping[str, np.ndarray], rows: np.ndarray) -> Batch:
    """Rows ``rows  # [K]`` (indices) of every column."""
    return {k: v[rows] for k, v in batch.items()}


def concat_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> Batch:
    """Concatenate batches with the same columns (object columns stay object arrays)."""
    if not batches:
        return {}
    filled = [b for b in batches if batch_len(b)] or [batches[0]]
    return {key: np.concatenate([b[key] for b in filled]) for key in filled[0]}


def split_batch(batch: Mapping[str, np.ndarray], size: int) -> Iterator[Batch]:
    """Consecutive slices of at most ``size`` rows."""
    n = batch_len(batch)
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in batch.items()}


def explode(batch: Mapping[str, np.ndarray]) -> Iterator[Batch]:
    """One-row batches of ``batch`` (dtypes and trailing shapes kept, so batches re-form exactly)."""
    for i in range(batch_len(batch)):
        yield {k: v[i : i + 1] for k, v in batch.items()}


def placeholder_rows(like: Mapping[str, np.ndarray], n: int) -> Batch:
    """``n`` filler rows with the columns, dtypes and shapes of ``like``: zeros; in object columns ``""``
    (strings), an empty array of the same rank (arrays) or ``None``."""
    out: Batch = {}
    for key, col in like.items():
        if col.dtype == object:
            first = col[0] if len(col) else None
            filler: Any = "" if isinstance(first, str) else None
            if isinstance(first, np.ndarray):
                filler = np.zeros((0,) * first.ndim, dtype=first.dtype)
            out[key] = np.empty(n, dtype=object)
            for i in range(n):
                out[key][i] = filler
        else:
            out[key] = np.zeros((n, *col.shape[1:]), dtype=col.dtype)
    return out


def repeat_rows(values: Mapping[str, Any], n: int) -> Batch:
    """A batch of ``n`` rows each holding ``values`` (name -> one row's value, e.g. the schema's fill
    values): numeric values become arrays ``[n, *shape]``, strings object columns."""
    out: Batch = {}
    for key, value in values.items():
        if isinstance(value, str):
            column = np.empty(n, dtype=object)
            column[:] = value
            out[key] = column
        else:
            arr = np.asarray(value)
            out[key] = np.repeat(arr[None], n, axis=0)
    return out


def stack_column(values: list[Any], like: Any) -> np.ndarray:
    """Stack per-row values into one column; object dtype for strings and ragged arrays."""
    if isinstance(like, str) or any(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    try:
        arr = np.stack([np.asarray(v) for v in values]) if values else np.zeros((0,) + np.shape(like))
    except ValueError:  # ragged
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
    return arr


def stack_rows(batch: Mapping[str, Any], name: str, rows: Sequence[int] | np.ndarray, *, dtype: Any = np.float32,
               needed_by: str = "this step") -> np.ndarray:
    """Rows ``rows  # [K]`` of column ``name`` stacked into one array ``[K, ...]`` of ``dtype`` (object columns
    of per-row arrays included); a ``KeyError`` naming the column and ``needed_by`` when the batch lacks it."""
    if name not in batch:
        raise KeyError(f"{needed_by} needs a {name!r} column; got {sorted(batch)}")
    column = batch[name]
    return np.stack([np.asarray(column[int(i)], dtype=dtype) for i in rows]) if len(rows) else np.zeros((0,), dtype)
