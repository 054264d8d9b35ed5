"""The per-person figures the review sorts, filters and plots, each a DuckDB expression over the Parquet.

Derived from the record schema (:data:`schemas.FIELDS`), so a new quality field shows up by itself:

| group | figures |
| --- | --- |
| ``quality`` | every float field of the ``quality`` part; a ``[2]`` field gives ``NAME.left`` and ``NAME.right`` |
| ``confidence`` | ``bbox_score``, ``conf_body``, ``conf_face``, ``conf_hands.left/right``; ``kp_conf.PART``: mean |
| | keypoint confidence of each COCO-WholeBody part |
| ``flags`` | every ``has_*`` mask (``has_hands.left``...) and ``flag.BIT`` for each :class:`schemas.QualityFlag` bit |
| ``parameters`` | ``norm.FIELD``: norm of each body, hand and face parameter field (per hand if ``[2, ...]``) |

Each :class:`ReviewField`'s ``sql`` is built here from schema names, never from user input; user values
reach the queries only as bound parameters (:mod:`pipelines.review.query`). DuckDB lists are 1-based:
``quality_reproj_px_hands[1]`` is the left hand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import schemas
from schemas import keypoints as kp_layout

SIDES = ("left", "right")
"""Names of the ``[2]`` hand axis, in order."""
GROUPS = ("quality", "confidence", "flags", "parameters")
"""Field groups, in display order."""


@dataclass(frozen=True)
class ReviewField:
    """One sortable, filterable figure of a person."""

    name: str
    """Identifier in the API, the page and ``pearl stats`` (``quality_reproj_px_hands.left``)."""
    sql: str
    """DuckDB expression over the persons view (trusted: built from schema names)."""
    kind: str
    """``float`` or ``bool``."""
    group: str
    """One of :data:`GROUPS`."""
    part: str
    """``body``, ``face``, ``hands`` or ``person`` (what the figure is about)."""
    doc: str
    """One line for tooltips and tables."""


def _part_of(name: str, default: str) -> str:
    for part in ("face", "hand", "body"):
        if part in name:
            return "hands" if part == "hand" else part
    return default


def _doc(f: schemas.Field) -> str:
    """The first sentence of a field's documentation."""
    return f.doc.split(". ")[0]


def _elements(f: schemas.Field) -> list[tuple[str, str, str]]:
    """``(name, sql, side doc)`` for a scalar or a ``[2]`` per-hand field."""
    if f.shape == ():
        return [(f.name, f.name, "")]
    if f.shape == (2,):
        return [(f"{f.name}.{side}", f"{f.name}[{i + 1}]", f" ({side})") for i, side in enumerate(SIDES)]
    return []


def _norm_sql(column: str, ndim: int) -> str:
    """Euclidean norm of a nested list column of ``ndim`` dimensions."""
    flat = column
    for _ in range(ndim - 1):
        flat = f"flatten({flat})"
    return f"sqrt(list_inner_product({flat}, {flat}))"


def isnan_sql(expr: str) -> str:
    """``expr`` is NaN. (pearl's shards carry no min/max statistics for the columns that may hold NaN,
    :data:`pipelines.io.shards.STATISTICS_COLUMNS`, so DuckDB cannot fold the test away.)"""
    return f"isnan({expr})"


def _masked(sql: str, mask: str) -> str:
    """``sql`` where the part's mask holds, NaN (not measured) elsewhere."""
    return f"CASE WHEN {mask} THEN {sql} ELSE 'NaN'::DOUBLE END" if mask else sql


@functools.lru_cache(maxsize=1)
def review_fields() -> dict[str, ReviewField]:
    """Every figure by name, in display order (see the module docstring)."""
    out: list[ReviewField] = []
    for f in schemas.FIELDS:
        if f.part == "quality" and f.dtype == "float32":
            for name, sql, side in _elements(f):
                out.append(ReviewField(name, sql, "float", "quality", _part_of(f.name, "body"), _doc(f) + side))
    for name in ("bbox_score", "conf_body", "conf_face", "conf_hands"):
        f = schemas.field(name)
        for fname, sql, side in _elements(f):
            out.append(ReviewField(fname, sql, "float", "confidence", _part_of(f.name, "person"), _doc(f) + side))
    for part, sl in kp_layout.PARTS.items():
        sql = f"list_avg(list_transform(kp2d_wholebody[{sl.start + 1}:{sl.stop}], lambda p: p[3]))"
        out.append(ReviewField(f"kp_conf.{part}", sql, "float", "confidence", _part_of(part, "body"),
                               f"mean confidence of the {part.replace('_', ' ')} keypoints (kp2d_wholebody)"))
    for f in schemas.FIELDS:
        if f.dtype == "bool":
            for name, sql, side in _elements(f):
                out.append(ReviewField(name, sql, "bool", "flags", _part_of(f.name, "person"), _doc(f) + side))
    for bit in schemas.QualityFlag:
        out.append(ReviewField(f"flag.{bit.name}", f"(quality_flags & {int(bit)}) != 0", "bool", "flags",
                               _part_of(bit.name.lower(), "body"), schemas.QUALITY_FLAG_DOCS[bit]))
    for f in schemas.FIELDS:
        if f.part not in ("body", "hands", "face") or f.dtype != "float32" or f.shape in ((), (2,)):
            continue
        if f.name.startswith(("smpl_",)) or f.name in ("hand_scale", "head_scale"):
            continue  # the source label and the part scales are not parameters a curator judges by norm
        if f.part == "hands" and f.shape[0] == 2:
            for i, side in enumerate(SIDES):
                norm = _masked(_norm_sql(f"{f.name}[{i + 1}]", len(f.shape) - 1), f"{f.mask}[{i + 1}]")
                out.append(ReviewField(f"norm.{f.name}.{side}", norm, "float", "parameters", "hands",
                                       f"norm of {f.name} ({side}; NaN without {f.mask})"))
        else:
            out.append(ReviewField(f"norm.{f.name}", _masked(_norm_sql(f.name, len(f.shape)), f.mask), "float",
                                   "parameters", _part_of(f.name, f.part), f"norm of {f.name} (NaN without {f.mask})"))
    return {f.name: f for f in out}


def review_field(name: str) -> ReviewField:
    """The figure called ``name``; ``KeyError`` listing the known names otherwise."""
    fields = review_fields()
    if name not in fields:
        raise KeyError(f"unknown field {name!r}; known: {', '.join(fields)}")
    return fields[name]
