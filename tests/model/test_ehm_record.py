"""Record columns <-> EHM forward parameters: round trips, derived SMPL-X columns, the EHM pass, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import schemas
from model.ehm_record import (
    DERIVED_SMPLX_COLUMNS,
    EHM_RECORD_COLUMNS,
    ehm_param_names,
    ehm_params_from_columns,
    record_columns_from_ehm_params,
)


def _records(n: int) -> list[dict]:
    return [schemas.validate(schemas.random_record(seed, split="train")) for seed in range(n)]


def test_every_ehm_parameter_maps_to_a_schema_column_of_its_shape():
    import inspect

    from model.ehm import EHM

    forward = [p for p in inspect.signature(EHM.forward).parameters if p != "self"]
    assert list(EHM_RECORD_COLUMNS) == forward
    for column in EHM_RECORD_COLUMNS.values():
        schemas.field(column)  # raises for an unknown column
    assert "flame_eyelids" not in ehm_param_names() and "flame_eyelids" in ehm_param_names(eyelids=True)


def test_columns_from_per_row_arrays_and_from_stacked_arrays_agree():
    records = _records(3)
    per_row = {c: [r[c] for r in records] for c in EHM_RECORD_COLUMNS.values()}
    stacked = {c: np.stack(v) for c, v in per_row.items()}
    a = ehm_params_from_columns(per_row)
    b = ehm_params_from_columns(stacked, rows=[2, 0])
    assert set(a) == set(ehm_param_names())
    assert a["body_pose"].shape == (3, 21, 3) and a["mano_hand_pose"].shape == (3, 2, 15, 3)
    for name, value in a.items():
        assert value.dtype == torch.float32
        column = EHM_RECORD_COLUMNS[name]
        assert np.array_equal(value.numpy(), stacked[column])
        assert np.array_equal(b[name].numpy(), stacked[column][[2, 0]])


def test_round_trip_and_derived_smplx_columns():
    records = _records(2)
    params = ehm_params_from_columns({c: np.stack([r[c] for r in records]) for c in EHM_RECORD_COLUMNS.values()},
                                     eyelids=True)
    columns = record_columns_from_ehm_params(params)
    back = ehm_params_from_columns(columns, eyelids=True)
    for name in params:
        assert torch.equal(back[name], params[name])
    assert set(DERIVED_SMPLX_COLUMNS) <= set(columns)
    assert np.array_equal(columns["smplx_left_hand_pose"], params["mano_hand_pose"][:, 0].numpy())
    assert np.array_equal(columns["smplx_right_hand_pose"], params["mano_hand_pose"][:, 1].numpy())
    assert np.array_equal(columns["smplx_jaw_pose"], params["flame_jaw_pose"].numpy())
    assert np.array_equal(columns["smplx_reye_pose"], params["flame_eye_pose"][:, 3:].numpy())
    for column, values in columns.items():  # every column is valid record content
        assert values.shape[1:] == schemas.field(column).shape


@pytest.mark.slow
def test_record_parameters_drive_the_ehm(kit_dir):
    from model.ehm import EHM

    ehm = EHM.from_dir(kit_dir, camera_frame="opencv")
    record = schemas.validate(schemas.random_record(3, split="train"))
    params = ehm_params_from_columns({c: record[c][None] for c in EHM_RECORD_COLUMNS.values()},
                                     eyelids=ehm.flame.has_eyelids)
    with torch.no_grad():
        out = ehm(**params)
        moved = ehm(**{**params, "transl": params["transl"] + torch.tensor([0.0, 0.0, 1.0])})
    assert out.vertices.shape == (1, ehm.assembly.shape[0], 3)
    assert torch.allclose(moved.vertices - out.vertices, torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)


def test_bad_columns_are_named():
    records = _records(2)
    columns = {c: np.stack([r[c] for r in records]) for c in EHM_RECORD_COLUMNS.values()}
    missing = dict(columns)
    del missing["smplx_body_pose"]
    with pytest.raises(KeyError, match="smplx_body_pose"):
        ehm_params_from_columns(missing)
    with pytest.raises(ValueError, match="smplx_betas"):
        ehm_params_from_columns({**columns, "smplx_betas": np.zeros((2, 7), np.float32)})
    with pytest.raises(ValueError, match="flame_shape.*rows"):
        ehm_params_from_columns({**columns, "flame_shape": np.zeros((3, 300), np.float32)})
    with pytest.raises(KeyError, match="unknown EHM parameter"):
        record_columns_from_ehm_params({"jaw": torch.zeros(1, 3)})
