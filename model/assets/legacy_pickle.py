"""Writing pickles the way the official (Python 2, chumpy-era) model files were written.

The official SMPL / FLAME / MANO pickles were made by Python 2 with protocol 2: arrays as
``numpy.core.multiarray._reconstruct`` with their raw data in byte strings, sparse matrices under
scipy's old module paths (``scipy.sparse.csc``), and chumpy objects (``chumpy.ch.Ch`` holding an
array ``x``, ``chumpy.reordering.Select`` picking entries of another chumpy object). The synthetic kit
writes its "as downloaded" files this way, without chumpy, so that the safe loader meets exactly what
it meets in the real files.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import struct
from typing import BinaryIO

import numpy as np


def _chumpy_state(terms: dict) -> dict:
    """A chumpy object's pickled state (``Ch.__getstate__``: the instance dict minus the weak-ref
    caches) holding ``terms``."""
    return {"_dirty_vars": set(terms), "_itr": None, "_make_dense": False, "_make_sparse": False, "_depends_on_deps": {}, **terms}


class ChumpyCh:
    """Stand-in that pickles as ``chumpy.ch.Ch`` with the state chumpy itself writes."""

    pickle_global = ("chumpy.ch", "Ch")

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=np.float64)

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (type(self),), _chumpy_state({"x": self.x})


class ChumpySelect:
    """Stand-in that pickles as ``chumpy.reordering.Select`` (entries ``idxs`` of ``a``, reshaped)."""

    pickle_global = ("chumpy.reordering", "Select")

    def __init__(self, a: ChumpyCh, idxs: np.ndarray, preferred_shape: tuple[int, ...]) -> None:
        self.a, self.idxs, self.preferred_shape = a, np.asarray(idxs, np.int64), tuple(preferred_shape)

    def __reduce_ex__(self, protocol):
        state = _chumpy_state({"a": self.a})
        state.update(idxs=self.idxs, preferred_shape=self.preferred_shape)
        return copyreg.__newobj__, (type(self),), state


# module paths of the scipy release the official files were pickled with
_OLD_PATHS = {
    ("scipy.sparse._csc", "csc_matrix"): ("scipy.sparse.csc", "csc_matrix"),
    ("scipy.sparse._csr", "csr_matrix"): ("scipy.sparse.csr", "csr_matrix"),
    ("scipy.sparse._coo", "coo_matrix"): ("scipy.sparse.coo", "coo_matrix"),
}


class _LegacyPickler(pickle._Pickler):  # the pure-Python pickler lets us name globals ourselves
    dispatch = pickle._Pickler.dispatch.copy()

    def save_global(self, obj, name=None):
        target = getattr(obj, "pickle_global", None) if isinstance(obj, type) else None
        if target is None:
            module = getattr(obj, "__module__", None)
            target = _OLD_PATHS.get((module, obj.__qualname__)) if isinstance(obj, type) else None
        if target is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{target[0]}\n{target[1]}\n".encode("ascii"))
        self.memoize(obj)

    def _save_bytes_as_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes_as_py2_str


def dump_legacy(obj, file: BinaryIO) -> None:
    """Write ``obj`` to ``file`` as a protocol-2 pickle the way Python 2 wrote it (byte strings,
    old scipy paths, chumpy names)."""
    _LegacyPickler(file, protocol=2).dump(obj)


def dumps_legacy(obj) -> bytes:
    """:func:`dump_legacy` into bytes."""
    buf = io.BytesIO()
    dump_legacy(obj, buf)
    return buf.getvalue()
