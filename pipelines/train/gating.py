"""Quality gating: expressions over a record's quality fields that switch a part's supervision off.

An expression is a small, safe subset of Python evaluated on one record (never ``eval``): numbers,
``True`` / ``False``, record fields that hold numbers (``quality_reproj_norm_body``, ``conf_face``,
``quality_flags``, ``has_hand_landmarks``, ...), indexing of array fields with a constant
(``quality_reproj_norm_hands[0]``: the left hand), the :class:`schemas.QualityFlag` names as their bit values
(``quality_flags & FACE_GATED``), arithmetic ``+ - * /``, bit operations ``& |``, comparisons, ``and`` /
``or`` / ``not``, and ``isnan(x)``. A comparison with NaN (a score that was not measured) is False, as in
IEEE arithmetic, so an unmeasured score never gates a part; arithmetic is IEEE too (``x / 0`` is inf, ``0 / 0``
NaN: never an error in the middle of a run). An unknown field or construct is refused when
the config is read, with the name and what is allowed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from typing import Any

import numpy as np

import schemas

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.BitAnd: operator.and_, ast.BitOr: operator.or_}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FLAGS = {flag.name: int(flag.value) for flag in schemas.QualityFlag}
_FUNCTIONS = {"isnan": lambda x: math.isnan(float(x))}


def numeric_fields() -> dict[str, tuple[int, ...]]:
    """Record fields an expression may read: name -> shape (every float, int and bool field)."""
    return {f.name: f.shape for f in schemas.FIELDS if f.dtype != "str"}


class GateError(ValueError):
    """A gating expression cannot be used; the message names it and what is allowed."""


class Gate:
    """A parsed, checked expression; ``gate(record) -> bool``."""

    def __init__(self, expression: str, where: str = "gate") -> None:
        self.expression = expression
        self.where = where
        try:
            self._tree = ast.parse(expression, mode="eval")
        except SyntaxError as exc:
            raise GateError(f"{where}: {expression!r} is not a valid expression ({exc.msg})") from None
        self._fields = numeric_fields()
        self._check(self._tree.body)

    def _fail(self, what: str) -> GateError:
        return GateError(f"{self.where}: {what} in {self.expression!r}; allowed: numbers, record fields holding "
                         "numbers, field[index], QualityFlag names, + - * / & |, comparisons, and/or/not, isnan(x)")

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            self._check(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            for value in [node.left, *node.comparators]:
                self._check(value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
            pass
        elif isinstance(node, ast.Name):
            if node.id not in self._fields and node.id not in _FLAGS:
                known = ", ".join(sorted(n for n in self._fields if n.startswith(("quality_", "conf_", "has_"))))
                raise GateError(f"{self.where}: unknown name {node.id!r} in {self.expression!r}; use a record field "
                                f"holding numbers (e.g. {known}) or a QualityFlag ({', '.join(_FLAGS)})")
        elif isinstance(node, ast.Subscript):
            if not (isinstance(node.value, ast.Name) and node.value.id in self._fields
                    and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int)):
                raise self._fail("an index other than field[constant]")
            shape = self._fields[node.value.id]
            if not shape or not 0 <= node.slice.value < shape[0]:
                raise GateError(f"{self.where}: {node.value.id}[{node.slice.value}] is out of range (shape "
                                f"{list(shape)}) in {self.expression!r}")
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and len(node.args) == 1
                    and not node.keywords):
                raise self._fail("a call other than isnan(x)")
            self._check(node.args[0])
        else:
            raise self._fail(f"the construct {type(node).__name__}")

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return bool(self._eval(self._tree.body, record))

    def _eval(self, node: ast.AST, record: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.BoolOp):
            values = (self._eval(v, record) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, record)
            return (not value) if isinstance(node.op, ast.Not) else -value
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, record), self._eval(node.right, record)
            if isinstance(node.op, (ast.BitAnd, ast.BitOr)):
                return _BINARY[type(node.op)](int(left), int(right))
            with np.errstate(all="ignore"):  # IEEE arithmetic: x / 0 is inf or nan, never an exception
                return float(_BINARY[type(node.op)](np.float64(left), np.float64(right)))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, record)
            for op, comparator in zip(node.ops, node.comparators):
                right = self._eval(comparator, record)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in _FLAGS and node.id not in record:
                return _FLAGS[node.id]
            return _scalar(record[node.id], node.id)
        if isinstance(node, ast.Subscript):
            return _scalar(np.asarray(record[node.value.id])[node.slice.value], node.value.id)
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](self._eval(node.args[0], record))
        raise AssertionError(type(node))  # _check admitted nothing else

    def __repr__(self) -> str:
        return f"Gate({self.expression!r})"


def _scalar(value: Any, name: str) -> Any:
    arr = np.asarray(value)
    if arr.ndim:
        raise GateError(f"field {name!r} holds an array of shape {list(arr.shape)}: index it, e.g. {name}[0]")
    return arr.item()
