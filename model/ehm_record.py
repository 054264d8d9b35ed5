"""Record columns <-> EHM forward parameters: the one mapping between the EHM v1 record (``schemas``) and
:meth:`model.ehm.EHM.forward`.

The record keeps the SMPL-X body under ``smplx_*`` names and the hand and face parts under the names
:class:`model.ehm.EHM` uses itself (``mano_hand_pose``, ``flame_shape``, ...), so the mapping renames four
body columns and passes the rest through. The record also carries the SMPL-X hand, jaw and eye rotations,
which in EHM are driven by the MANO and FLAME parts: :func:`record_columns_from_ehm_params` derives them
from those parts, so a record written from EHM parameters stays consistent.

Columns are batches: numpy arrays ``[N, *shape]``, or sequences of ``N`` per-row arrays (a Ray / pandas
object column); shapes are checked against the schema's fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import schemas

EHM_RECORD_COLUMNS: dict[str, str] = {
    "betas": "smplx_betas",
    "global_orient": "smplx_global_orient",
    "body_pose": "smplx_body_pose",
    "transl": "smplx_transl",
    "mano_hand_pose": "mano_hand_pose",
    "mano_betas": "mano_betas",
    "hand_scale": "hand_scale",
    "flame_shape": "flame_shape",
    "flame_expression": "flame_expression",
    "flame_jaw_pose": "flame_jaw_pose",
    "flame_eye_pose": "flame_eye_pose",
    "flame_eyelids": "flame_eyelids",
    "head_scale": "head_scale",
}
"""EHM forward parameter -> record column holding it (every parameter of :meth:`model.ehm.EHM.forward`)."""

EYELIDS = "flame_eyelids"
"""The one optional parameter: only kits with FLAME 2023 eyelid blend shapes take it."""

DERIVED_SMPLX_COLUMNS = ("smplx_left_hand_pose", "smplx_right_hand_pose", "smplx_jaw_pose", "smplx_leye_pose",
                         "smplx_reye_pose")
"""Record columns that EHM drives through its parts (see :func:`record_columns_from_ehm_params`)."""


def ehm_param_names(*, eyelids: bool = False) -> tuple[str, ...]:
    """The EHM parameters read from a record: all of :data:`EHM_RECORD_COLUMNS`, the eyelids only when
    the model has eyelid blend shapes (``ehm.flame.has_eyelids``)."""
    return tuple(p for p in EHM_RECORD_COLUMNS if eyelids or p != EYELIDS)


def _stack(values: Any, column: str) -> np.ndarray:
    """``[N, *shape]`` float32 of a column given as an array or a sequence of per-row arrays."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        out = values
    elif isinstance(values, Sequence) or (isinstance(values, np.ndarray) and values.dtype == object):
        rows = [np.asarray(v, dtype=np.float32) for v in values]
        if not rows:
            return np.zeros((0,) + schemas.field(column).shape, np.float32)
        try:
            out = np.stack(rows)
        except ValueError:
            raise ValueError(f"column {column!r}: rows of different shapes {sorted({r.shape for r in rows})}, expected "
                             f"{list(schemas.field(column).shape)} each") from None
    else:
        out = np.asarray(values)
    return np.asarray(out, dtype=np.float32)


def ehm_params_from_columns(
    columns: Mapping[str, Any],  # record column -> [N, *shape] (array or sequence of per-row arrays)
    *,
    eyelids: bool = False,
    rows: Sequence[int] | np.ndarray | None = None,  # [K] row indices to take (default: all)
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """EHM forward parameters ``{name: [N or K, *shape]}`` from record columns (see the module docstring).

    ``eyelids``: also read ``flame_eyelids`` (pass ``ehm.flame.has_eyelids``). Raises ``KeyError`` naming
    a missing column and ``ValueError`` naming a column of the wrong shape.
    """
    params = {}
    n = None
    for name in ehm_param_names(eyelids=eyelids):
        column = EHM_RECORD_COLUMNS[name]
        if column not in columns:
            raise KeyError(f"record column {column!r} (EHM parameter {name!r}) is missing; got {sorted(columns)}")
        values = columns[column]
        if rows is not None:
            index = np.asarray(rows, dtype=np.int64)
            values = values[index] if isinstance(values, np.ndarray) else [values[int(i)] for i in index]
        array = _stack(values, column)
        shape = schemas.field(column).shape
        if array.shape[1:] != shape:
            raise ValueError(f"record column {column!r}: expected shape [N, {', '.join(map(str, shape))}], got "
                             f"{list(array.shape)}")
        if n is not None and array.shape[0] != n:
            raise ValueError(f"record column {column!r} has {array.shape[0]} rows, the others {n}")
        n = array.shape[0]
        params[name] = torch.as_tensor(array, dtype=dtype, device=device)
    return params


def record_columns_from_ehm_params(params: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Record columns ``{column: float32 [N, *shape]}`` from EHM parameters ``{name: [N, *shape]}``:
    every given parameter under its column name, plus the SMPL-X hand, jaw and eye rotations that EHM
    drives through MANO and FLAME (:data:`DERIVED_SMPLX_COLUMNS`) when those parameters are given."""
    unknown = sorted(set(params) - set(EHM_RECORD_COLUMNS))
    if unknown:
        raise KeyError(f"unknown EHM parameter(s) {unknown}; known: {list(EHM_RECORD_COLUMNS)}")
    p = {k: v.detach().cpu().numpy().astype(np.float32) if isinstance(v, Tensor) else np.asarray(v, np.float32)
         for k, v in params.items()}
    out = {EHM_RECORD_COLUMNS[k]: v for k, v in p.items()}
    if "mano_hand_pose" in p:
        out["smplx_left_hand_pose"] = p["mano_hand_pose"][:, 0]  # [N, 15, 3]
        out["smplx_right_hand_pose"] = p["mano_hand_pose"][:, 1]
    if "flame_jaw_pose" in p:
        out["smplx_jaw_pose"] = p["flame_jaw_pose"]  # [N, 3]
    if "flame_eye_pose" in p:
        out["smplx_leye_pose"] = p["flame_eye_pose"][:, :3]  # [N, 3]
        out["smplx_reye_pose"] = p["flame_eye_pose"][:, 3:]
    for column, values in out.items():
        shape = schemas.field(column).shape
        if values.shape[1:] != shape:
            raise ValueError(f"EHM parameters give column {column!r} the shape {list(values.shape)}, expected "
                             f"[N, {', '.join(map(str, shape))}]")
    return out
