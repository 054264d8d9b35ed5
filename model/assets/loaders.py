"""Loaders for the body-model files and their correspondence files, returning plain numpy data.

Every file is read without running pickled code: ``.pkl`` through :mod:`model.assets.safe_pickle`,
``.npz`` / ``.npy`` with ``allow_pickle=False`` except for object members, which are unpickled
by the same safe unpickler (numpy and plain containers only). The ``.npz`` copies that
``pearl assets convert`` writes load through the same functions as the pickles they replace.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp

from model.assets import layouts
from model.assets.catalog import asset_file
from model.assets.safe_pickle import safe_load_pickle, safe_loads

#: suffix of the members that hold a large sparse matrix in a converted ``.npz`` (see convert.py)
SPARSE_PARTS = ("__csr_data", "__csr_indices", "__csr_indptr", "__csr_shape")


class AssetFormatError(ValueError):
    """A body-model file is readable but does not hold what its kind needs."""


# ----------------------------------------------------------------------------------------------
# generic reading
# ----------------------------------------------------------------------------------------------


def npy_header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` in the header of the ``.npy`` stream ``f`` (positioned at its start; left after the
    header), or None for a header version numpy's public readers do not cover."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    return tuple(shape), dtype


def npy_dtype(f: BinaryIO) -> np.dtype | None:
    """The dtype in the header of the ``.npy`` stream ``f`` (see :func:`npy_header`)."""
    header = npy_header(f)
    return None if header is None else header[1]


def _read_npy_bytes(data: bytes, source: str) -> np.ndarray:
    """One ``.npy`` payload; object arrays go through the safe unpickler (numpy + containers). A header that
    claims more data than the payload holds is refused before anything is allocated."""
    f = io.BytesIO(data)
    try:
        header = npy_header(f)
    except ValueError as e:
        raise AssetFormatError(f"{source}: not a readable .npy header: {e}") from None
    dtype = None if header is None else header[1]
    if dtype is None or not dtype.hasobject:
        if header is not None:
            count = int(np.prod(header[0], dtype=np.float64)) if header[0] else 1
            needed, have = count * dtype.itemsize, len(data) - f.tell()
            if needed > have:
                raise AssetFormatError(f"{source}: header claims shape {list(header[0])} of {dtype} ({needed} bytes) "
                                       f"but the file holds {have} bytes of data: truncated or corrupt")
        return np.load(io.BytesIO(data), allow_pickle=False)
    arr = safe_loads(f.read(), source=source, allow_chumpy=False, allow_sparse=False)
    if not isinstance(arr, np.ndarray):
        raise AssetFormatError(f"{source}: object payload is a {type(arr).__name__}, not an array")
    return arr


def _unwrap(value: np.ndarray) -> Any:
    """A 0-d object array (numpy's way of saving a dict) as the object itself."""
    return value.item() if value.dtype == object and value.ndim == 0 else value


def _join_sparse(d: dict[str, Any]) -> dict[str, Any]:
    """Reassemble ``<key>__csr_*`` members of a converted file into scipy CSR matrices."""
    out = {k: v for k, v in d.items() if not k.endswith(SPARSE_PARTS)}
    for k in d:
        if k.endswith("__csr_data"):
            base = k[: -len("__csr_data")]
            parts = [d.get(base + s) for s in SPARSE_PARTS]
            if any(p is None for p in parts):
                raise AssetFormatError(f"sparse member {base!r} is incomplete")
            out[base] = sp.csr_matrix((parts[0], parts[1], parts[2]), shape=tuple(int(n) for n in parts[3]))
    return out


def read_asset(path: Path | str) -> Any:
    """The content of a ``.pkl``, ``.npz`` or ``.npy`` asset file: a dict (pickles of dicts, ``.npz``,
    ``.npy`` holding a dict) or an array; chumpy objects evaluated, sparse matrices kept sparse."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        return safe_load_pickle(path)
    if suffix == ".npy":
        return _unwrap(_read_npy_bytes(path.read_bytes(), str(path)))
    if suffix == ".npz":
        out = {}
        try:
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if not member.endswith(".npy"):
                        continue
                    out[member[:-4]] = _unwrap(_read_npy_bytes(zf.read(member), f"{path}:{member}"))
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise AssetFormatError(f"{path} is not a valid .npz (a corrupt or truncated member): "
                                   f"{type(e).__name__}: {e}") from e
        return _join_sparse(out)
    raise AssetFormatError(f"{path}: unknown asset file type {suffix!r} (expected .pkl, .npz or .npy)")


def read_asset_dict(path: Path | str) -> dict[str, Any]:
    """:func:`read_asset` for files that must hold a dict (model files, embeddings)."""
    content = read_asset(path)
    if not isinstance(content, dict):
        raise AssetFormatError(f"{path} holds a {type(content).__name__}, expected a dict of arrays")
    return content


def dense(value: Any) -> np.ndarray:
    """A sparse matrix or array-like as a dense ndarray."""
    return value.toarray() if sp.issparse(value) else np.asarray(value)


# ----------------------------------------------------------------------------------------------
# body models
# ----------------------------------------------------------------------------------------------

_KIND_BY_COUNTS = {
    (layouts.SMPL.num_verts, layouts.SMPL.num_joints): "smpl",
    (layouts.SMPLX.num_verts, layouts.SMPLX.num_joints): "smplx",
    (layouts.FLAME.num_verts, layouts.FLAME.num_joints): "flame",
    (layouts.MANO.num_verts, layouts.MANO.num_joints): "mano",
}
LAYOUTS = {"smpl": layouts.SMPL, "smplx": layouts.SMPLX, "flame": layouts.FLAME, "mano": layouts.MANO}
_MODEL_KEYS = ("v_template", "f", "weights", "posedirs", "shapedirs", "J_regressor", "kintree_table")


@dataclass(frozen=True)
class BodyModelData:
    """One SMPL / SMPL-X / FLAME / MANO model as plain arrays (official key meanings)."""

    kind: str  # "smpl" | "smplx" | "flame" | "mano"
    v_template: np.ndarray  # [V, 3] metres (float64 unless loaded with another dtype)
    faces: np.ndarray  # [F, 3] int64
    weights: np.ndarray  # [V, J] skinning weights
    posedirs: np.ndarray  # [V, 3, 9 * (J - 1)] pose blend shapes
    shapedirs: np.ndarray  # [V, 3, S] (SMPL-X / FLAME: shape components, then expression)
    j_regressor: np.ndarray  # [J, V] dense
    parents: np.ndarray  # [J] int64, root -1
    extra: dict[str, Any] = field(default_factory=dict)  # every other key of the file, unchanged
    source: str = ""

    @property
    def num_verts(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_joints(self) -> int:
        return self.parents.shape[0]

    def rest_joints(self) -> np.ndarray:
        """Joint positions [J, 3] of the template."""
        return self.j_regressor @ self.v_template

    def to_smplx_struct(self) -> dict[str, Any]:
        """Keyword arguments for ``smplx.utils.Struct``, to build smplx layers with
        ``data_struct=Struct(**model.to_smplx_struct())`` instead of letting smplx unpickle."""
        parents = np.where(self.parents < 0, 4294967295, self.parents)
        return {
            **self.extra,
            "v_template": self.v_template,
            "f": self.faces,
            "weights": self.weights,
            "posedirs": self.posedirs,
            "shapedirs": self.shapedirs,
            "J_regressor": self.j_regressor,
            "kintree_table": np.stack([parents, np.arange(len(parents))]),
        }


def body_model_from_dict(
    d: dict[str, Any], source: str, kind: str | None = None, dtype: np.dtype | None = np.float64
) -> BodyModelData:
    """Validate the keys and shapes of an official model dict and return it as :class:`BodyModelData`.

    ``kind`` is inferred from the vertex and joint counts when not given; float arrays are cast to
    ``dtype`` (None keeps the file's own).
    """
    missing = [k for k in _MODEL_KEYS if k not in d]
    if missing:
        raise AssetFormatError(f"{source}: missing key(s) {', '.join(missing)} of a body model")
    v = np.asarray(dense(d["v_template"]), dtype)
    kintree = np.asarray(dense(d["kintree_table"]))
    if v.ndim != 2 or v.shape[1] != 3:
        raise AssetFormatError(f"{source}: v_template has shape {v.shape}, expected [V, 3]")
    if kintree.ndim != 2 or kintree.shape[0] != 2:
        raise AssetFormatError(f"{source}: kintree_table has shape {kintree.shape}, expected [2, J]")
    parents = kintree[0].astype(np.int64)
    parents[0] = -1  # stored as 2**32 - 1 in the official files
    counts = (v.shape[0], len(parents))
    inferred = _KIND_BY_COUNTS.get(counts)
    if kind is None:
        if inferred is None:
            raise AssetFormatError(f"{source}: {counts[0]} vertices and {counts[1]} joints match no known body model")
        kind = inferred
    layout = LAYOUTS[kind]
    if counts != (layout.num_verts, layout.num_joints):
        raise AssetFormatError(
            f"{source}: {counts[0]} vertices / {counts[1]} joints, but {layout.name} has "
            f"{layout.num_verts} / {layout.num_joints}"
        )
    num_v, num_j = counts
    arrays = {
        "weights": (np.asarray(dense(d["weights"]), dtype), (num_v, num_j)),
        "posedirs": (np.asarray(dense(d["posedirs"]), dtype), (num_v, 3, 9 * (num_j - 1))),
        "J_regressor": (np.asarray(dense(d["J_regressor"]), dtype), (num_j, num_v)),
    }
    for key, (arr, shape) in arrays.items():
        if arr.shape != shape:
            raise AssetFormatError(f"{source}: {key} has shape {arr.shape}, expected {list(shape)}")
    shapedirs = np.asarray(dense(d["shapedirs"]), dtype)
    if shapedirs.ndim == 2:
        shapedirs = shapedirs[:, :, None]
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (num_v, 3):
        raise AssetFormatError(f"{source}: shapedirs has shape {shapedirs.shape}, expected [{num_v}, 3, S]")
    faces = np.asarray(dense(d["f"])).astype(np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise AssetFormatError(f"{source}: f has shape {faces.shape}, expected [F, 3]")
    extra = {k: val for k, val in d.items() if k not in _MODEL_KEYS}
    return BodyModelData(
        kind=kind,
        v_template=v,
        faces=faces,
        weights=arrays["weights"][0],
        posedirs=arrays["posedirs"][0],
        shapedirs=shapedirs,
        j_regressor=arrays["J_regressor"][0],
        parents=parents,
        extra=extra,
        source=source,
    )


def load_body_model(path: Path | str, kind: str | None = None, dtype: np.dtype | None = np.float64) -> BodyModelData:
    """Load a SMPL / SMPL-X / FLAME / MANO model file (``.pkl``, ``.npz`` or a converted ``.npz``).

    ``kind`` ("smpl", "smplx", "flame", "mano") is checked against the counts; by default it is
    inferred from them. Float arrays come as ``dtype`` (None: as stored). Raises
    ``FileNotFoundError``, :class:`AssetFormatError`, or ``UnsafePickleError`` for a pickle with a
    refused global.
    """
    if kind is not None and kind not in LAYOUTS:
        raise ValueError(f"unknown body-model kind {kind!r}; expected one of {sorted(LAYOUTS)}")
    return body_model_from_dict(read_asset_dict(path), str(path), kind, dtype)


# ----------------------------------------------------------------------------------------------
# correspondences and embeddings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmarks as barycentric points on mesh faces (any leading dims, e.g. [79, 17] per yaw)."""

    face_idx: np.ndarray  # [..., L] int64 face indices
    bary: np.ndarray  # [..., L, 3] float64 barycentric coordinates
    landmark_indices: np.ndarray | None = None  # [L] int64 (MediaPipe: face-mesh index of each)


def _index_array(value: Any, source: str, key: str, shape: tuple[int, ...], upper: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise AssetFormatError(f"{source}: {key} has shape {arr.shape}, expected {list(shape)}")
    if arr.dtype.kind not in "iu":
        raise AssetFormatError(f"{source}: {key} has dtype {arr.dtype}, expected integers")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or (upper is not None and arr.max() >= upper)):
        raise AssetFormatError(f"{source}: {key} has values outside [0, {upper})")
    return arr


def _embedding(d: dict[str, Any], source: str, shape: tuple[int, ...], num_faces: int | None) -> LandmarkEmbedding:
    for k in ("lmk_face_idx", "lmk_b_coords"):
        if k not in d:
            raise AssetFormatError(f"{source}: missing key {k!r}")
    face = _index_array(d["lmk_face_idx"], source, "lmk_face_idx", shape, num_faces)
    bary = np.asarray(d["lmk_b_coords"], np.float64)
    if bary.shape != shape + (3,):
        raise AssetFormatError(f"{source}: lmk_b_coords has shape {bary.shape}, expected {list(shape + (3,))}")
    return LandmarkEmbedding(face_idx=face, bary=bary)


def load_flame_static_embedding(path: Path | str, num_faces: int | None = None) -> LandmarkEmbedding:
    """``flame_static_embedding.pkl``: the 51 inner iBUG-68 landmarks on FLAME faces [51], [51, 3]."""
    return _embedding(read_asset_dict(path), str(path), (layouts.NUM_STATIC_LANDMARKS,), num_faces)


def load_flame_dynamic_embedding(path: Path | str, num_faces: int | None = None) -> LandmarkEmbedding:
    """``flame_dynamic_embedding.npy``: the 17 jaw-contour landmarks per head yaw [79, 17], [79, 17, 3]
    (row order as smplx looks it up, see ``layouts.contour_angle_deg``)."""
    shape = (layouts.NUM_CONTOUR_ANGLES, layouts.NUM_CONTOUR_LANDMARKS)
    return _embedding(read_asset_dict(path), str(path), shape, num_faces)


def load_mediapipe_embedding(path: Path | str, num_faces: int | None = None) -> LandmarkEmbedding:
    """``mediapipe_landmark_embedding.npz``: 105 MediaPipe face-mesh landmarks on FLAME faces, with
    ``landmark_indices`` (their MediaPipe indices, < 478)."""
    d = read_asset_dict(path)
    n = len(layouts.MEDIAPIPE_EMBEDDING_INDICES)
    emb = _embedding(d, str(path), (n,), num_faces)
    if "landmark_indices" not in d:
        raise AssetFormatError(f"{path}: missing key 'landmark_indices'")
    idx = _index_array(np.ravel(d["landmark_indices"]), str(path), "landmark_indices", (n,), 478)
    return LandmarkEmbedding(face_idx=emb.face_idx, bary=emb.bary, landmark_indices=idx)


def load_smplx_flame_ids(path: Path | str) -> np.ndarray:
    """``SMPL-X__FLAME_vertex_ids.npy``: SMPL-X vertex index of every FLAME vertex, int64 [5023]."""
    ids = _index_array(read_asset(path), str(path), "vertex ids", (layouts.FLAME.num_verts,), layouts.SMPLX.num_verts)
    if len(np.unique(ids)) != len(ids):
        raise AssetFormatError(f"{path}: vertex ids repeat")
    return ids


def load_mano_smplx_ids(path: Path | str) -> dict[str, np.ndarray]:
    """``MANO_SMPLX_vertex_ids.pkl``: SMPL-X vertex index of every MANO vertex, per hand:
    ``{"left_hand": int64 [778], "right_hand": int64 [778]}``."""
    d = read_asset_dict(path)
    out = {}
    for key in ("left_hand", "right_hand"):
        if key not in d:
            raise AssetFormatError(f"{path}: missing key {key!r}")
        out[key] = _index_array(d[key], str(path), key, (layouts.MANO.num_verts,), layouts.SMPLX.num_verts)
    if len(np.unique(np.concatenate(list(out.values())))) != 2 * layouts.MANO.num_verts:
        raise AssetFormatError(f"{path}: hand vertex ids repeat")
    return out


def load_deformation_transfer(path: Path | str) -> sp.csr_matrix:
    """``smpl2smplx_deftrafo_setup.pkl`` (smplx's transfer_model format): sparse [10475, 2 * 6890];
    ``mtx[:, :6890] @ smpl_vertices`` gives SMPL-X vertices, the second half weighs vertex normals."""
    d = read_asset_dict(path)
    key = "mtx" if "mtx" in d else "matrix" if "matrix" in d else None
    if key is None:
        raise AssetFormatError(f"{path}: missing key 'mtx'")
    mtx = sp.csr_matrix(d[key])
    n_smplx, n_smpl = layouts.SMPLX.num_verts, layouts.SMPL.num_verts
    if mtx.shape not in ((n_smplx, 2 * n_smpl), (n_smplx, n_smpl)):
        raise AssetFormatError(f"{path}: {key} has shape {mtx.shape}, expected [{n_smplx}, {2 * n_smpl}]")
    return mtx


def load_mean_hand_pose(body_models: str | Path) -> np.ndarray:
    """The MANO mean hand poses ``[2, 15, 3]`` (left, right; ``hands_mean`` of each MANO file)."""
    out = []
    for side in ("left", "right"):
        path = asset_file(body_models, f"mano_{side}")
        mean = load_body_model(path, "mano").extra.get("hands_mean")
        if mean is None:
            raise ValueError(f"{path}: has no 'hands_mean'; the MANO file is incomplete (run `pearl assets check`)")
        out.append(np.asarray(mean, np.float64).reshape(15, 3))
    return np.stack(out)
