"""The review's figures and filters: the field registry follows the schema, filters become parameterised
SQL, NaN never matches a comparison and sorts last, paging is stable."""

from __future__ import annotations

import numpy as np
import pytest

import schemas
from pipelines.io.shards import ShardWriter
from pipelines.review.fields import review_field, review_fields
from pipelines.review.query import Condition, PersonQuery, QueryError, order_clause, where_clause

BODY_PX = [3.0, np.nan, 9.0, 1.0, np.nan, 5.0, 7.0]
"""quality_reproj_px_body of the table's persons, in key order."""


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A run of 7 random persons with chosen body errors, sources and flags (no crops)."""
    from pipelines.review.data import ReviewRun

    out = tmp_path_factory.mktemp("query") / "run"
    with ShardWriter(out, "train", 0) as writer:
        for i, px in enumerate(BODY_PX):
            writer.add(schemas.random_record(
                i, split="train", sample_key=f"{'ab'[i % 2]}/img{i}.jpg", person_index=0, source=f"set_{'ab'[i % 2]}",
                quality_reproj_px_body=np.float32(px), has_face=i < 3, has_body=True,
                quality_flags=np.int32(int(schemas.QualityFlag.NOT_CONVERGED) if i in (1, 2) else 0)))
        writer.commit({})
    run = ReviewRun(out)
    yield run
    run.close()


def test_registry_covers_the_schema():
    fields = review_fields()
    for f in schemas.FIELDS:
        if f.part == "quality" and f.dtype == "float32":
            if f.shape == ():
                assert fields[f.name].kind == "float" and fields[f.name].sql == f.name
            else:
                assert fields[f"{f.name}.left"].sql == f"{f.name}[1]"
                assert fields[f"{f.name}.right"].sql == f"{f.name}[2]"
    for bit in schemas.QualityFlag:
        assert fields[f"flag.{bit.name}"].kind == "bool"
    assert fields["has_hands.right"].sql == "has_hands[2]"
    assert fields["norm.mano_hand_pose.left"].part == "hands"
    with pytest.raises(KeyError, match="unknown field 'nope'"):
        review_field("nope")


def test_every_figure_evaluates_in_duckdb(table_run):
    fields = review_fields()
    values = table_run.values(f"SELECT {', '.join(f'({f.sql})' for f in fields.values())} FROM persons")
    assert len(values) == len(BODY_PX) and len(values[0]) == len(fields)


def test_user_values_are_bound_never_pasted():
    evil = "x'); DROP TABLE persons; --"
    query = PersonQuery(conditions=(Condition("conf_body", "ge", 0.5),), source=evil, splits=("train",),
                        decisions=("accept", "undecided"))
    sql, params = where_clause(query)
    assert evil not in sql and "DROP" not in sql
    assert params == [0.5, evil, "train", "accept"]
    assert sql.count("?") == len(params)


@pytest.mark.parametrize("text,error", [
    ("conf_body", "FIELD:OP"), ("conf_body:ge:abc", "not a number"), ("nosuch:ge:1", "unknown field"),
    ("has_body:ge:1", "a flag"), ("conf_body:true", "op must be"), ("conf_body:ge", "give a number"),
])
def test_bad_filters_are_refused_with_their_reason(text, error):
    with pytest.raises(QueryError, match=error):
        where_clause(PersonQuery(conditions=(Condition.parse(text),)))


def test_bad_sort_and_decision_are_refused():
    with pytest.raises(QueryError, match="unknown field"):
        order_clause(PersonQuery(sort="quality_reproj_px_body; DROP"))
    with pytest.raises(QueryError, match="decision"):
        PersonQuery.from_params({"decision": ["maybe"]})
    with pytest.raises(QueryError, match="order"):
        PersonQuery.from_params({"order": ["sideways"]})


def _keys(run, query, **kw):
    return [r["key"] for r in run.page(query, **kw)["rows"]]


def test_comparisons_never_match_nan(table_run):
    measured = [px for px in BODY_PX if px == px]
    for op, test in (("lt", lambda v: v < 5), ("ge", lambda v: v >= 5), ("ne", lambda v: v != 5)):
        page = table_run.page(PersonQuery(conditions=(Condition("quality_reproj_px_body", op, 5.0),)))
        assert page["total"] == sum(test(v) for v in measured)
    assert table_run.page(PersonQuery(conditions=(Condition("quality_reproj_px_body", "nan"),)))["total"] == 2
    assert table_run.page(PersonQuery(conditions=(Condition("quality_reproj_px_body", "notnan"),)))["total"] == 5


def test_flags_sources_and_combined_filters(table_run):
    assert table_run.page(PersonQuery(conditions=(Condition("flag.NOT_CONVERGED", "true"),)))["total"] == 2
    assert table_run.page(PersonQuery(conditions=(Condition("has_face", "false"),)))["total"] == 4
    assert table_run.page(PersonQuery(source="SET_B"))["total"] == 3  # case-insensitive substring
    both = PersonQuery(conditions=(Condition("has_face", "true"), Condition("quality_reproj_px_body", "gt", 2.0)))
    assert table_run.page(both)["total"] == 2  # persons 0 (3 px) and 2 (9 px)


@pytest.mark.parametrize("descending", [False, True])
def test_sorting_puts_nan_last_and_pages_are_stable(table_run, descending):
    query = PersonQuery(sort="quality_reproj_px_body", descending=descending)
    keys = _keys(table_run, query)
    by_key = {f"{'ab'[i % 2]}/img{i}.jpg/p00": px for i, px in enumerate(BODY_PX)}
    values = [by_key[k] for k in keys]
    measured = [v for v in values if v == v]
    assert measured == sorted(measured, reverse=descending)
    assert all(v != v for v in values[len(measured):])  # NaN at the end either way
    paged = _keys(table_run, query, offset=0, limit=3) + _keys(table_run, query, offset=3, limit=3) \
        + _keys(table_run, query, offset=6, limit=3)
    assert paged == keys
    assert table_run.position(query, keys[4]) == 4
    assert table_run.position(PersonQuery(source="nothing"), keys[0]) is None
