"""docs/review.md stays true: its DuckDB and pandas examples run on a run with decisions and quarantine, and
each pair gives the same rows."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "review.md"


def _pairs() -> list[tuple[str, str]]:
    text = DOC.read_text()
    section = text.split("## The same queries in DuckDB and pandas", 1)[1].split("\n## ", 1)[0]
    sql = re.findall(r"```sql\n(.*?)```", section, re.S)
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(sql) == len(python) >= 4
    return list(zip(sql, python))


@pytest.fixture(scope="module")
def decided_run(sample_run, tmp_path_factory):
    import shutil

    from pipelines.review.data import ReviewRun
    from pipelines.review.query import PersonQuery

    out = tmp_path_factory.mktemp("docs") / "run"
    shutil.copytree(sample_run.out, out)
    review = ReviewRun(out)
    keys = [r["key"] for r in review.page(PersonQuery(), limit=3)["rows"]]
    review.decide(keys[0], "accept", "fine")
    review.decide(keys[1], "accept")
    review.decide(keys[2], "reject")
    review.close()
    return out


@pytest.mark.parametrize("index", range(4))
def test_sql_and_pandas_examples_agree(decided_run, index):
    sql, python = _pairs()[index]
    con = duckdb.connect()
    rows = con.execute(sql.replace("OUT/", f"{decided_run}/")).fetchall()
    namespace: dict = {}
    exec("import numpy as np, pandas as pd", namespace)  # the first example's imports serve them all
    exec(python.replace('"OUT/', f'"{decided_run}/').replace('"OUT"', f'"{decided_run}"'), namespace)
    last = re.findall(r"^(\w+) = ", python, re.M)[-1]
    result = namespace[last]
    assert len(rows) == len(result) > 0
    if index == 0:  # same persons
        assert [r[0] for r in rows] == list(result.key)
    if index == 3:  # same kept shares by source
        assert {r[0]: r[3] for r in rows} == {s: pytest.approx(v) for s, v in result.kept_pct.items()}
