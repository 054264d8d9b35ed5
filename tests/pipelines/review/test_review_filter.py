"""``pearl filter``: the chosen persons, a valid shard set, decisions applied, byte-identical reruns, a
manifest naming the parent and the filter, user SQL confined to a condition."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import schemas
from pipelines.io.shards import committed_shards, iter_wds, read_parquet
from pipelines.review.data import ReviewRun
from pipelines.review.filter import FilterError, filter_run
from pipelines.review.query import PersonQuery

WHERE = "has_body AND NOT isnan(quality_reproj_px_body) AND quality_reproj_px_body < 6"


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_selects_what_pandas_selects_and_writes_a_valid_shard_set(sample_run, tmp_path):
    result = filter_run(str(sample_run.out), str(tmp_path / "new"), WHERE, persons_per_shard=2)
    df = pd.read_parquet(sample_run.out / "parquet")
    expected = df[df.has_body & (df.quality_reproj_px_body < 6)]
    assert result.persons == len(expected) > 2
    table = read_parquet(tmp_path / "new")  # committed shards only, schema version checked
    assert sorted(table.column("key").to_pylist()) == sorted(expected.key)
    assert committed_shards(tmp_path / "new") == {f"{s}-{i:06d}" for s, n in result.shards.items() for i in range(n)}
    assert all(len(list(iter_wds([str(p)]))) <= 2 for p in (tmp_path / "new" / "wds").glob("*.tar"))
    parent = {r["key"]: r for r in df.to_dict("records")}
    copied = 0
    for tar in sorted((tmp_path / "new" / "wds").glob("*.tar")):
        for sample in iter_wds([str(tar)]):
            record = schemas.members_to_record(sample)
            assert record["split"] == tar.name.split("-")[0]
            np.testing.assert_array_equal(record["kp2d_wholebody"], np.stack(parent[record["key"]]["kp2d_wholebody"]))
            assert sample["crop.jpg"][:2] == b"\xff\xd8"
            copied += 1
    assert copied == result.persons
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["parent"]["out"] == str(sample_run.out) and manifest["parent"]["persons"] == 12
    assert manifest["filter"] == {"where": WHERE, "decisions": None, "persons_per_shard": 2}
    assert manifest["persons"] == result.persons
    assert sum(s["persons"] for s in manifest["splits"].values()) == result.persons
    assert manifest["splits"]["train"]["body_model_kit"] == "synthetic"
    # the result is a run the review opens
    again = ReviewRun(tmp_path / "new")
    assert again.count() == result.persons and again.quarantine_count() == 0
    again.close()


def test_same_input_and_filter_give_identical_bytes(sample_run, tmp_path):
    filter_run(str(sample_run.out), str(tmp_path / "a"), WHERE, persons_per_shard=2)
    filter_run(str(sample_run.out), str(tmp_path / "b"), WHERE, persons_per_shard=2)
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert a == b and "manifest.json" in a and any(k.startswith("stats/") for k in a)
    filter_run(str(sample_run.out), str(tmp_path / "c"), WHERE, persons_per_shard=3)
    assert _hashes(tmp_path / "c") != a


def test_nan_is_seen_as_duckdb_defines_it(sample_run, tmp_path):
    # DuckDB's Parquet statistics leave NaN out; the filter must still find every not-measured value
    result = filter_run(str(sample_run.out), str(tmp_path / "nan"), "isnan(quality_reproj_px_face)")
    df = pd.read_parquet(sample_run.out / "parquet")
    assert result.persons == int(df.quality_reproj_px_face.isna().sum()) > 0


def test_decisions_are_applied(run_copy, tmp_path):
    review = ReviewRun(run_copy)
    keys = [r["key"] for r in review.page(PersonQuery(), limit=4)["rows"]]
    review.decide(keys[0], "accept")
    review.decide(keys[1], "accept")
    review.decide(keys[2], "reject")
    review.decide(keys[3], "flag")
    review.close()
    assert filter_run(str(run_copy), str(tmp_path / "acc"), None, decisions="accepted").persons == 2
    assert sorted(read_parquet(tmp_path / "acc").column("key").to_pylist()) == sorted(keys[:2])
    kept = filter_run(str(run_copy), str(tmp_path / "kept"), None, decisions="not-rejected")
    assert kept.persons == 11 and keys[2] not in read_parquet(tmp_path / "kept").column("key").to_pylist()
    both = filter_run(str(run_copy), str(tmp_path / "both"), f"key = '{keys[1]}'", decisions="accepted")
    assert both.persons == 1


@pytest.mark.parametrize("where,error", [
    ("1=1; DROP TABLE persons", "not valid SQL|must be one SQL condition"),
    ("no_such_column > 1", "no_such_column"),
    ("  ", "empty"),
    ("true) UNION SELECT 1 AS k; SELECT (1", "not valid SQL|must be one SQL condition"),
])
def test_bad_conditions_are_refused(sample_run, tmp_path, where, error):
    with pytest.raises(FilterError, match=error):
        filter_run(str(sample_run.out), str(tmp_path / "x"), where)
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_refuses_an_existing_run_as_output_and_decisions_without_any(sample_run, tmp_path):
    with pytest.raises(FilterError, match="another folder"):
        filter_run(str(sample_run.out), str(sample_run.out), "true")
    filter_run(str(sample_run.out), str(tmp_path / "once"), "true")
    with pytest.raises(FilterError, match="already holds a run"):
        filter_run(str(sample_run.out), str(tmp_path / "once"), "true")
    with pytest.raises(FilterError, match="no decisions"):
        filter_run(str(sample_run.out), str(tmp_path / "dec"), None, decisions="accepted")
