"""Validating a body-model folder (``pearl assets check``), hashing its files, telling a synthetic
kit from the official models."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.assets import layouts
from model.assets.catalog import CATALOG, MARKER_FILE, AssetFile
from model.assets.files import file_sha256
from model.assets.loaders import (
    LAYOUTS,
    AssetFormatError,
    BodyModelData,
    load_body_model,
    load_deformation_transfer,
    load_flame_dynamic_embedding,
    load_flame_static_embedding,
    load_mano_smplx_ids,
    load_mediapipe_embedding,
    load_smplx_flame_ids,
)

OK, MISSING, WRONG, ABSENT = "OK", "MISSING", "WRONG", "ABSENT"  # ABSENT: optional and not there


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one catalog file."""

    entry: AssetFile
    status: str  # OK | MISSING | WRONG | ABSENT
    path: Path | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status in (MISSING, WRONG)


class _Wrong(Exception):
    """A file is present but not what it should be."""


# ----------------------------------------------------------------------------------------------
# per-kind validation; each returns a one-line summary or raises _Wrong / a loader error
# ----------------------------------------------------------------------------------------------


def _check_shape(source: str, key: str, value: Any, shape: tuple) -> np.ndarray:
    """``value`` as an array of ``shape`` (``None`` = any size on that axis)."""
    arr = np.asarray(value)
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise _Wrong(f"{key} has shape {list(arr.shape)}, expected {want}")
    return arr


def validate_body_model(model: BodyModelData) -> str:
    """Kinematic tree, faces, weights, blend shapes and extra keys of one model; a summary line."""
    layout = LAYOUTS[model.kind]
    if not np.array_equal(model.parents, layout.parents):
        bad = np.flatnonzero(model.parents != layout.parents).tolist()
        raise _Wrong(f"kinematic tree differs from {layout.name}'s at joint(s) {bad}: parents {model.parents[bad].tolist()}")
    if model.faces.min() < 0 or model.faces.max() >= model.num_verts:
        raise _Wrong(f"face indices outside [0, {model.num_verts})")
    sums = model.weights.sum(1)
    if np.abs(sums - 1.0).max() > 1e-3 or model.weights.min() < -1e-6:
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise _Wrong(f"skinning weights must be >= 0 with rows summing to 1 (vertex {worst} sums to {sums[worst]:.4f})")
    num_s = model.shapedirs.shape[2]
    need = {"smpl": 10, "smplx": 20, "flame": 400, "mano": 10}[model.kind]
    if num_s < need:
        raise _Wrong(f"shapedirs has {num_s} components, expected at least {need}")
    src, extra = model.source, model.extra
    if model.kind == "smplx":
        f = len(model.faces)
        for key, shape in (
            ("lmk_faces_idx", (layouts.NUM_STATIC_LANDMARKS,)),
            ("lmk_bary_coords", (layouts.NUM_STATIC_LANDMARKS, 3)),
            ("dynamic_lmk_faces_idx", (layouts.NUM_CONTOUR_ANGLES, layouts.NUM_CONTOUR_LANDMARKS)),
            ("dynamic_lmk_bary_coords", (layouts.NUM_CONTOUR_ANGLES, layouts.NUM_CONTOUR_LANDMARKS, 3)),
            ("hands_componentsl", (None, 45)),
            ("hands_componentsr", (None, 45)),
            ("hands_meanl", (45,)),
            ("hands_meanr", (45,)),
        ):
            if key not in extra:
                raise _Wrong(f"missing key {key}")
            arr = _check_shape(src, key, extra[key], shape)
            if key.endswith("faces_idx") and (arr.min() < 0 or arr.max() >= f):
                raise _Wrong(f"{key} has face indices outside [0, {f})")
    if model.kind == "mano":
        for key, shape in (("hands_components", (None, 45)), ("hands_mean", (45,))):
            if key not in extra:
                raise _Wrong(f"missing key {key}")
            _check_shape(src, key, extra[key], shape)
    shape_txt = f"{num_s} shape components"
    if model.kind in ("smplx", "flame"):  # smplx's rule: fewer than 300 + 100 means 10 + 10 (SMPL-X v1.0)
        n_shape = layout.num_shape if num_s >= layout.num_shape + layout.num_expression else 10
        shape_txt = f"{n_shape} shape + {num_s - n_shape} expression components"
    return f"{layout.name}: {model.num_verts} vertices, {model.num_joints} joints, tree ok, {shape_txt}"


def _validate(entry: AssetFile, path: Path, context: dict[str, Any]) -> str:
    kind = entry.kind
    if kind in LAYOUTS:
        model = load_body_model(path, kind, dtype=None)
        if kind == "flame":  # the embeddings index FLAME's faces
            context.setdefault("flame_faces", len(model.faces))
        return validate_body_model(model)
    num_faces = context.get("flame_faces")
    if kind == "flame_static":
        emb = load_flame_static_embedding(path, num_faces)
        return f"{emb.face_idx.shape[0]} landmarks on FLAME faces"
    if kind == "flame_dynamic":
        emb = load_flame_dynamic_embedding(path, num_faces)
        return f"{emb.face_idx.shape[1]} contour landmarks x {emb.face_idx.shape[0]} head yaws"
    if kind == "mediapipe":
        emb = load_mediapipe_embedding(path, num_faces)
        return f"{emb.face_idx.shape[0]} MediaPipe landmarks on FLAME faces"
    if kind == "flame_ids":
        ids = load_smplx_flame_ids(path)
        return f"{len(ids)} FLAME vertices -> SMPL-X vertices"
    if kind == "mano_ids":
        ids = load_mano_smplx_ids(path)
        return f"2 x {len(ids['left_hand'])} MANO vertices -> SMPL-X vertices"
    if kind == "deftrafo":
        mtx = load_deformation_transfer(path)
        return f"SMPL -> SMPL-X matrix {mtx.shape[0]} x {mtx.shape[1]}, {mtx.nnz} non-zeros"
    raise ValueError(f"no validator for asset kind {kind!r}")


_ERRORS: tuple[type[BaseException], ...] = (_Wrong, AssetFormatError, pickle.UnpicklingError, OSError, ValueError,
                                            KeyError, IndexError, TypeError, EOFError, RecursionError, MemoryError)
"""What a broken file raises while it is checked: reported as WRONG with the message, never a crash."""


def check_assets(root: Path | str) -> list[CheckResult]:
    """Check every catalog file under ``root``: present / missing / wrong (which key or shape)."""
    root = Path(root)
    context: dict[str, Any] = {}
    results = []
    for entry in sorted(CATALOG, key=lambda e: e.kind in ("flame_static", "flame_dynamic", "mediapipe")):
        path = entry.find(root)
        if path is None:
            results.append(CheckResult(entry, MISSING if entry.required else ABSENT, None, ""))
            continue
        try:
            results.append(CheckResult(entry, OK, path, _validate(entry, path, context)))
        except _ERRORS as e:
            results.append(CheckResult(entry, WRONG, path, str(e)))
    order = {e.key: i for i, e in enumerate(CATALOG)}
    return sorted(results, key=lambda r: order[r.entry.key])


def format_report(results: list[CheckResult], root: Path | str) -> list[str]:
    """One line per catalog file (missing ones say where they come from and where to put them)."""
    root = Path(root)
    lines = []
    for r in results:
        rel = r.entry.path if r.path is None else r.path.relative_to(root).as_posix()
        optional = "" if r.entry.required else " (optional)"
        if r.status == OK:
            lines.append(f"OK       {rel}: {r.detail}")
        elif r.status == WRONG:
            lines.append(f"WRONG    {rel}: {r.detail}")
        else:
            note = f"; {r.entry.note}" if r.entry.note else ""
            lines.append(f"{r.status:<8} {rel}{optional}: put it at {root / r.entry.path}{note}; from {r.entry.source}")
    return lines


def check_passed(results: list[CheckResult]) -> bool:
    """True when every required file is present and no present file is wrong."""
    return not any(r.failed for r in results)


def asset_hashes(root: Path | str) -> dict[str, str]:
    """sha256 of every catalog file present under ``root``, by its '/'-separated relative path."""
    root = Path(root)
    out = {}
    for entry in CATALOG:
        path = entry.find(root)
        if path is not None:
            out[path.relative_to(root).as_posix()] = file_sha256(path)
    return dict(sorted(out.items()))


def kit_info(root: Path | str) -> dict[str, Any] | None:
    """The synthetic-kit marker's content (``kit``, ``kit_version``, ``seed``), or None."""
    marker = Path(root) / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        raise AssetFormatError(f"{marker}: unreadable synthetic-kit marker: {e}") from e
    if not isinstance(info, dict) or info.get("kit") != "pearl-synthetic":
        raise AssetFormatError(f"{marker}: not a pearl synthetic-kit marker")
    return info


def kit_kind(root: Path | str) -> str:
    """``"synthetic"`` for a folder written by ``pearl assets synthesize``, else ``"official"``
    (the value records carry as ``body_model_kit``)."""
    return "synthetic" if kit_info(root) is not None else "official"

