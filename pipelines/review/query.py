"""Filters and sort orders of the review, turned into DuckDB SQL with bound parameters.

A :class:`PersonQuery` is what the grid asks for: conditions on :mod:`pipelines.review.fields` figures,
a source substring, splits, decisions, and a sort field. :func:`where_clause` turns it into a ``WHERE``
text whose every user value is a ``?`` parameter; field names are looked up in the field registry and
refused when unknown, so nothing the page sends is pasted into SQL.

NaN means "not measured" in the quality fields. DuckDB orders NaN above every number, so comparisons
exclude NaN explicitly (``x >= 5`` never matches a NaN), ``nan`` / ``notnan`` test for it, and sorting
puts NaN last in both directions (:func:`pipelines.review.fields.isnan_sql`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipelines.review.fields import isnan_sql, review_field

FLOAT_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "=", "ne": "<>"}
"""Comparison operators of float figures (name in the API -> SQL)."""
NAN_OPS = ("nan", "notnan")
"""Tests for "not measured"."""
BOOL_OPS = ("true", "false")
"""Tests of flags."""
DECISIONS = ("accept", "reject", "flag")
"""Decisions a reviewer records."""
UNDECIDED = "undecided"
"""The decision filter value of persons without a decision."""
FIXED_SORTS = {"key": "p.key", "source": "p.source", "split": "p.split", "decision_time": "d.time"}
"""Sort keys besides the figures."""


class QueryError(ValueError):
    """A filter or sort the review cannot run; the message names it."""


@dataclass(frozen=True)
class Condition:
    """``field op value`` (value unused by ``nan``, ``notnan``, ``true``, ``false``)."""

    field: str
    op: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Condition:
        """``"field:op"`` or ``"field:op:value"`` (the page's ``f`` parameter)."""
        parts = text.split(":", 2)
        if len(parts) < 2:
            raise QueryError(f"filter {text!r}: expected FIELD:OP[:VALUE], e.g. quality_reproj_px_body:lt:20")
        value = None
        if len(parts) == 3 and parts[2] != "":
            try:
                value = float(parts[2])
            except ValueError:
                raise QueryError(f"filter {text!r}: value {parts[2]!r} is not a number") from None
        return cls(parts[0], parts[1], value)

    def sql(self) -> tuple[str, list[object]]:
        try:
            f = review_field(self.field)
        except KeyError as exc:
            raise QueryError(str(exc.args[0])) from None
        expr = f"({f.sql})"
        if f.kind == "bool":
            if self.op not in BOOL_OPS:
                raise QueryError(f"filter on {self.field!r} (a flag): op must be one of {', '.join(BOOL_OPS)}, "
                                 f"got {self.op!r}")
            return (expr if self.op == "true" else f"NOT {expr}"), []
        if self.op == "nan":
            return isnan_sql(expr), []
        if self.op == "notnan":
            return f"NOT {isnan_sql(expr)}", []
        if self.op not in FLOAT_OPS:
            raise QueryError(f"filter on {self.field!r}: op must be one of {', '.join([*FLOAT_OPS, *NAN_OPS])}, "
                             f"got {self.op!r}")
        if self.value is None or self.value != self.value:
            raise QueryError(f"filter on {self.field!r} {self.op}: give a number")
        return f"(NOT {isnan_sql(expr)} AND {expr} {FLOAT_OPS[self.op]} ?)", [self.value]


@dataclass(frozen=True)
class PersonQuery:
    """What the grid shows: conditions (all must hold), then the order."""

    conditions: tuple[Condition, ...] = ()
    source: str = ""
    """Case-insensitive substring of ``source`` (empty: any)."""
    splits: tuple[str, ...] = ()
    """Splits to show (empty: all)."""
    decisions: tuple[str, ...] = ()
    """Decisions to show: ``accept``, ``reject``, ``flag``, ``undecided`` (empty: all)."""
    sort: str = "key"
    """A figure name or one of :data:`FIXED_SORTS`."""
    descending: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Sequence[str]]) -> PersonQuery:
        """From the page's query parameters (each a list of values): ``f`` (repeated
        :meth:`Condition.parse`), ``source``, ``split`` (repeated), ``decision`` (repeated), ``sort``,
        ``order`` (``asc`` / ``desc``)."""
        def one(name: str, default: str = "") -> str:
            values = params.get(name) or [default]
            return values[-1]

        decisions = tuple(d for d in params.get("decision", []) if d)
        bad = [d for d in decisions if d not in (*DECISIONS, UNDECIDED)]
        if bad:
            raise QueryError(f"decision {bad[0]!r}: expected one of {', '.join([*DECISIONS, UNDECIDED])}")
        order = one("order", "asc")
        if order not in ("asc", "desc"):
            raise QueryError(f"order {order!r}: expected asc or desc")
        return cls(
            conditions=tuple(Condition.parse(t) for t in params.get("f", []) if t),
            source=one("source"),
            splits=tuple(s for s in params.get("split", []) if s),
            decisions=decisions,
            sort=one("sort", "key") or "key",
            descending=order == "desc",
        )


def where_clause(query: PersonQuery) -> tuple[str, list[object]]:
    """``(sql, params)``: the ``WHERE`` condition over ``persons p LEFT JOIN decisions d`` (``TRUE`` when
    nothing is asked)."""
    parts: list[str] = []
    params: list[object] = []
    for cond in query.conditions:
        sql, values = cond.sql()
        parts.append(sql)
        params += values
    if query.source:
        parts.append("contains(lower(p.source), lower(?))")
        params.append(query.source)
    if query.splits:
        parts.append(f"p.split IN ({', '.join('?' for _ in query.splits)})")
        params += list(query.splits)
    if query.decisions:
        named = [d for d in query.decisions if d != UNDECIDED]
        terms = []
        if named:
            terms.append(f"d.decision IN ({', '.join('?' for _ in named)})")
            params += named
        if UNDECIDED in query.decisions:
            terms.append("d.decision IS NULL")
        parts.append("(" + " OR ".join(terms) + ")")
    return (" AND ".join(parts) if parts else "TRUE"), params


def order_clause(query: PersonQuery) -> str:
    """``ORDER BY`` text: the sort figure (NaN and NULL last), then ``key`` so pages are stable."""
    direction = "DESC" if query.descending else "ASC"
    if query.sort in FIXED_SORTS:
        expr = FIXED_SORTS[query.sort]
        return f"{expr} {direction} NULLS LAST, p.key ASC"
    try:
        f = review_field(query.sort)
    except KeyError as exc:
        raise QueryError(str(exc.args[0])) from None
    expr = f"({f.sql})"
    if f.kind == "float":
        return f"{isnan_sql(expr)} ASC, {expr} {direction} NULLS LAST, p.key ASC"
    return f"{expr} {direction}, p.key ASC"


@dataclass(frozen=True)
class QuarantineQuery:
    """What the quarantine view shows."""

    stage: str = ""
    """Exact stage (empty: any)."""
    reason: str = ""
    """Case-insensitive substring of the reason (empty: any)."""
    source: str = ""
    """Case-insensitive substring of the source (empty: any)."""
    splits: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_params(cls, params: Mapping[str, Sequence[str]]) -> QuarantineQuery:
        def one(name: str) -> str:
            return (params.get(name) or [""])[-1]

        return cls(stage=one("stage"), reason=one("reason"), source=one("source"),
                   splits=tuple(s for s in params.get("split", []) if s))

    def where(self) -> tuple[str, list[object]]:
        parts, params = [], []
        if self.stage:
            parts.append("q.stage = ?")
            params.append(self.stage)
        if self.reason:
            parts.append("contains(lower(q.reason), lower(?))")
            params.append(self.reason)
        if self.source:
            parts.append("contains(lower(q.source), lower(?))")
            params.append(self.source)
        if self.splits:
            parts.append(f"q.split IN ({', '.join('?' for _ in self.splits)})")
            params += list(self.splits)
        return (" AND ".join(parts) if parts else "TRUE"), params
