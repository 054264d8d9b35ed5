"""``pearl assets convert``: ``.npz`` copies of the pickled body-model files, so that nothing needs
unpickling afterwards.

Every ``.pkl`` under the source folder, every ``.npy`` holding a pickled object and every ``.npz``
with pickled members becomes an ``.npz`` at the same relative path (``.npz`` suffix) under the
destination; plain ``.npy`` / ``.npz`` files are copied unchanged. A pickle with an ``.npz`` of the same
name beside it (SMPL-X ships ``SMPLX_*.npz`` and ``SMPLX_*.pkl``) is skipped: the ``.npz`` is kept.
Values are stored as:

- arrays (chumpy objects evaluated) as they are; strings and numbers as 0-d arrays;
- a scipy sparse matrix dense when it has at most ``DENSE_SPARSE_LIMIT`` entries (a
  ``J_regressor``, as smplx reads it), else as ``<key>__csr_data``, ``__csr_indices``,
  ``__csr_indptr``, ``__csr_shape`` (the deformation-transfer matrix), which the loaders rejoin;
- a nested dict as members ``<key>/<subkey>``.
Every written file is read back with ``allow_pickle=False`` before it replaces anything.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from model.assets.files import write_npz
from model.assets.loaders import AssetFormatError, npy_dtype, read_asset

log = logging.getLogger(__name__)

DENSE_SPARSE_LIMIT = 1 << 24


def to_plain_arrays(content: Any, source: str) -> dict[str, np.ndarray]:
    """Members of a pickle-free ``.npz`` holding ``content`` (a dict, or one array under "arr_0")."""
    if not isinstance(content, dict):
        content = {"arr_0": content}
    out: dict[str, np.ndarray] = {}
    for key, value in content.items():
        key = str(key)
        if isinstance(value, dict):
            for sub, arr in to_plain_arrays(value, f"{source}:{key}").items():
                out[f"{key}/{sub}"] = arr
        elif sp.issparse(value):
            if np.prod(value.shape) <= DENSE_SPARSE_LIMIT:
                out[key] = value.toarray()
            else:
                csr = sp.csr_matrix(value)
                out[key + "__csr_data"], out[key + "__csr_indices"] = csr.data, csr.indices
                out[key + "__csr_indptr"], out[key + "__csr_shape"] = csr.indptr, np.array(csr.shape, np.int64)
        else:
            if isinstance(value, bytes):
                value = value.decode("latin1")
            arr = np.asarray(value)
            if arr.dtype.kind not in "biufcU":
                raise AssetFormatError(f"{source}: {key!r} holds {type(value).__name__} (dtype {arr.dtype}), which .npz cannot store without pickle")
            out[key] = arr
    return out


def _needs_conversion(path: Path) -> bool:
    """Whether the file holds pickled data: a ``.pkl``, or ``.npy`` / ``.npz`` with object arrays."""
    if path.suffix == ".pkl":
        return True
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            dtype = npy_dtype(f)
        return dtype is None or dtype.hasobject
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            with zf.open(member) as f:
                dtype = npy_dtype(f)
            if dtype is None or dtype.hasobject:
                return True
    return False


def convert_assets(src: Path | str, dst: Path | str) -> list[tuple[Path, Path]]:
    """Write pickle-free copies of the asset files under ``src`` to ``dst`` (may equal ``src``).

    Returns (source, written file) pairs. Raises on the first file that cannot be converted;
    files already written stay.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"no such folder: {src}")
    done = []
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".pkl", ".npy", ".npz")):
        rel = path.relative_to(src)
        if path.suffix != ".npz" and path.with_suffix(".npz").is_file():
            # SMPL-X ships each model as .npz and .pkl: the .npz copy is the one kept
            log.info("skipped %s: %s holds the same model", path, path.with_suffix(".npz").name)
            continue
        if _needs_conversion(path):
            target = (dst / rel).with_suffix(".npz")
            arrays = to_plain_arrays(read_asset(path), str(path))
            write_npz(target, arrays)
            _verify(target, arrays)
            log.info("converted %s -> %s", path, target)
        else:
            target = dst / rel
            if target.resolve() != path.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                log.info("copied %s -> %s", path, target)
        done.append((path, target))
    return done


def _verify(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with np.load(path, allow_pickle=False) as z:
        if sorted(z.files) != sorted(arrays):
            raise AssetFormatError(f"{path}: members differ after writing")
        for k, a in arrays.items():
            if not np.array_equal(z[k], a):
                raise AssetFormatError(f"{path}: {k!r} differs after writing")
