"""Batch helpers: slicing, joining, splitting and padding ``dict[str, np.ndarray]`` batches."""

from __future__ import annotations

import numpy as np
import pytest

from annotators.batches import batch_len, concat_batches, explode, placeholder_rows, split_batch, take_rows


def make_batch(n: int = 7) -> dict[str, np.ndarray]:
    """``n`` rows: a float column ``[n, 2, 3]``, ints, bools, strings and ragged arrays (object columns)."""
    crops = np.empty(n, dtype=object)
    for i in range(n):
        crops[i] = np.full((i + 1, 2), i, dtype=np.float32)  # a different shape per row
    return {"kp": np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3), "index": np.arange(n, dtype=np.int32),
            "ok": np.arange(n) % 2 == 0, "key": np.array([f"k{i}" for i in range(n)], dtype=object), "crop": crops}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        if a[key].dtype == object:
            assert all(np.array_equal(x, y) for x, y in zip(a[key], b[key])), key
        else:
            np.testing.assert_array_equal(a[key], b[key])


def test_explode_rows_reform_the_batch() -> None:
    batch = {"kp": np.arange(24, dtype=np.float32).reshape(4, 2, 3), "key": np.array(list("abcd"), dtype=object),
             "ok": np.array([True, False, True, True])}
    rows = list(explode(batch))
    assert len(rows) == 4 and rows[1]["kp"].shape == (1, 2, 3)
    again = concat_batches(rows)
    for key, col in batch.items():
        assert again[key].dtype == col.dtype and np.array_equal(again[key], col)


def test_split_then_concat_gives_the_batch_back() -> None:
    batch = make_batch(7)
    parts = list(split_batch(batch, 3))
    assert [batch_len(p) for p in parts] == [3, 3, 1]
    assert [list(p["index"]) for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert_same(concat_batches(parts), batch)
    assert_same(concat_batches(list(split_batch(batch, 100))), batch)
    assert list(split_batch({k: v[:0] for k, v in batch.items()}, 3)) == []


def test_concat_skips_empty_batches_and_keeps_object_columns() -> None:
    batch = make_batch(4)
    empty = {k: v[:0] for k, v in batch.items()}
    shapeless = {k: np.array([]) for k in batch}  # an empty batch built from empty lists: float64 [0]
    joined = concat_batches([shapeless, batch, empty])
    assert_same(joined, batch)
    assert joined["crop"].dtype == object and joined["crop"][3].shape == (4, 2)
    assert concat_batches([]) == {}
    only_empty = concat_batches([empty, shapeless])
    assert batch_len(only_empty) == 0 and only_empty["kp"].shape == (0, 2, 3)


def test_take_rows_picks_repeats_and_reorders() -> None:
    batch = make_batch(5)
    picked = take_rows(batch, np.array([4, 0, 4]))
    assert list(picked["index"]) == [4, 0, 4] and list(picked["key"]) == ["k4", "k0", "k4"]
    np.testing.assert_array_equal(picked["kp"][1], batch["kp"][0])
    assert picked["crop"][0].shape == (5, 2)
    none = take_rows(batch, np.array([], dtype=np.int64))
    assert batch_len(none) == 0 and none["kp"].shape == (0, 2, 3) and none["key"].dtype == object


def test_placeholder_rows_match_columns_dtypes_and_shapes() -> None:
    batch = make_batch(3)
    batch["note"] = np.array([None, None, None], dtype=object)
    filler = placeholder_rows(batch, 2)
    assert list(filler) == list(batch) and batch_len(filler) == 2
    assert filler["kp"].shape == (2, 2, 3) and filler["kp"].dtype == np.float32 and not filler["kp"].any()
    assert filler["index"].dtype == np.int32 and filler["ok"].dtype == bool and not filler["ok"].any()
    assert list(filler["key"]) == ["", ""] and list(filler["note"]) == [None, None]
    assert all(c.shape == (0, 0) and c.dtype == np.float32 for c in filler["crop"])  # empty, same rank and dtype
    padded = concat_batches([batch, filler])
    assert batch_len(padded) == 5 and all(padded[k].dtype == batch[k].dtype for k in batch)
    assert_same(take_rows(padded, np.arange(3)), batch)
    assert batch_len(placeholder_rows(batch, 0)) == 0


def test_batch_len_names_a_column_of_another_length() -> None:
    assert batch_len({}) == 0 and batch_len(make_batch(6)) == 6
    with pytest.raises(ValueError, match="'short' has 2 rows, expected 3"):
        batch_len({"kp": np.zeros((3, 2)), "short": np.zeros(2)})
