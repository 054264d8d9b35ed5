"""Quality gating expressions: semantics (NaN, flags, indexing) and refusals."""

from __future__ import annotations

import numpy as np
import pytest

import schemas
from pipelines.train.gating import Gate, GateError


def _record(**values):
    return schemas.validate(schemas.random_record(0, **values))


def test_expressions_read_record_fields():
    r = _record(quality_reproj_norm_body=np.float32(0.05), quality_flags=np.int32(schemas.QualityFlag.FACE_GATED),
                quality_reproj_norm_hands=np.array([0.2, np.nan], np.float32), conf_face=np.float32(0.9))
    assert Gate("quality_reproj_norm_body > 0.04")(r)
    assert not Gate("quality_reproj_norm_body > 0.06")(r)
    assert Gate("quality_flags & FACE_GATED")(r) and not Gate("quality_flags & LEFT_HAND_GATED")(r)
    assert Gate("quality_reproj_norm_hands[0] > 0.15")(r)
    assert not Gate("quality_reproj_norm_hands[1] > 0.15")(r)  # NaN: not measured never gates
    assert Gate("isnan(quality_reproj_norm_hands[1]) and conf_face >= 0.85")(r)
    assert Gate("not (conf_face < 0.5) or 1 / 0 > 1")(r)  # or short-circuits
    assert Gate("0.01 < quality_reproj_norm_body <= 0.051")(r) and not Gate("0.01 < quality_reproj_norm_body < 0.02")(r)


def test_arithmetic_is_ieee_and_never_stops_a_run():
    r = _record(quality_reproj_norm_body=np.float32(0.05), conf_face=np.float32(0.0))
    assert Gate("quality_reproj_norm_body / conf_face > 2")(r)  # inf
    assert not Gate("(quality_reproj_norm_body - quality_reproj_norm_body) / conf_face > 2")(r)  # NaN
    assert Gate("isnan(conf_face / conf_face)")(r)


@pytest.mark.parametrize("expression, error", [
    ("quality_nope > 1", "unknown name 'quality_nope'"),
    ("__import__('os')", "call other than isnan"),
    ("conf_face.real > 1", "construct Attribute"),
    ("quality_reproj_norm_hands[2] > 1", "out of range"),
    ("quality_reproj_norm_hands[conf_face] > 1", "index other than"),
    ("key == 'x'", "unknown name 'key'"),
    ("(", "not a valid expression"),
])
def test_refusals_name_the_problem(expression, error):
    with pytest.raises(GateError, match=error.replace("(", r"\(").replace("[", r"\[")):
        Gate(expression, "data.gates.body_off")


def test_arrays_must_be_indexed():
    with pytest.raises(GateError, match="index it"):
        Gate("quality_reproj_norm_hands > 0.1")(_record())
