"""Loading pickles without running their code.

A pickle can name any importable callable and call it while loading. The official body-model
files are pickles (with chumpy objects inside), so they are read through :class:`SafeUnpickler`,
whose ``find_class`` admits a fixed set of globals and refuses every other one before anything
is called:

- numpy array, dtype and scalar reconstruction (``numpy.core.*`` and ``numpy._core.*`` names);
- ``set`` / ``frozenset`` / ``object``, ``copyreg._reconstructor`` (protocol 0/1 objects) and
  ``_codecs.encode`` restricted to latin-1 (how Python 3 writes bytes at protocol 2);
- with ``allow_sparse``: scipy's csc / csr / coo matrices, under old and new module paths;
- with ``allow_chumpy``: ``chumpy.ch.Ch`` and ``chumpy.reordering.Select``, turned into the arrays
  chumpy would compute (no chumpy needed).

Anything else raises :class:`UnsafePickleError` naming the file and the global.
"""

from __future__ import annotations

import codecs
import copyreg
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the admitted set; nothing it names was run."""


def _numpy_global(name: str):
    """``name`` from numpy's core module, wherever this numpy keeps it."""
    import importlib

    for module in ("numpy._core.multiarray", "numpy.core.multiarray", "numpy._core.numeric", "numpy.core.numeric"):
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    raise UnsafePickleError(f"numpy has no {name}")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2; other codecs are refused."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class ChumpyObject:
    """What a pickled chumpy object becomes: its class name and saved state, evaluated later."""

    kind = ""

    def __setstate__(self, state: dict) -> None:
        self.state = state


class _Ch(ChumpyObject):
    kind = "chumpy.ch.Ch"


class _Select(ChumpyObject):
    kind = "chumpy.reordering.Select"


_NUMPY = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_global("scalar"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_global("_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_global("_frombuffer"),
}
_BUILTINS = {
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("builtins", "object"): lambda: object,
    ("copyreg", "_reconstructor"): lambda: copyreg._reconstructor,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
_SPARSE_MODULES = {"scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
                   "scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse.compressed", "scipy.sparse._compressed"}  # fmt: skip
_SPARSE_NAMES = {"csc_matrix", "csr_matrix", "coo_matrix"}
_CHUMPY = {("chumpy.ch", "Ch"): _Ch, ("chumpy", "Ch"): _Ch, ("chumpy.reordering", "Select"): _Select}
_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only admitted globals (see the module docstring)."""

    def __init__(self, file, *, source: str, allow_chumpy: bool, allow_sparse: bool) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allow_chumpy = allow_chumpy
        self.allow_sparse = allow_sparse

    def find_class(self, module: str, name: str):
        key = (_PY2_NAMES.get(module, module), name)
        if key in _NUMPY:
            return _NUMPY[key]()
        if key in _BUILTINS:
            return _BUILTINS[key]()
        if self.allow_sparse and module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        if self.allow_chumpy and key in _CHUMPY:
            return _CHUMPY[key]
        if self.allow_chumpy and module.split(".")[0] == "chumpy":
            raise UnsafePickleError(
                f"refusing global '{module}.{name}' in {self.source}: only chumpy's Ch and Select hold "
                "stored arrays; this file keeps a chumpy computation. Use the official release of the file."
            )
        raise UnsafePickleError(f"refusing global '{module}.{name}' in {self.source}")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id in {self.source}")


def evaluate_chumpy(value: Any) -> Any:
    """Replace chumpy stand-ins (also inside dicts, lists and tuples) by the arrays they hold."""
    if isinstance(value, ChumpyObject):
        state = value.state
        if value.kind == "chumpy.ch.Ch":
            return np.asarray(evaluate_chumpy(state["x"]))
        flat = np.asarray(evaluate_chumpy(state["a"])).ravel()[np.asarray(state["idxs"])]
        shape = state.get("preferred_shape")
        return flat.reshape(shape) if shape is not None else flat
    if isinstance(value, dict):
        return {k: evaluate_chumpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [evaluate_chumpy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(evaluate_chumpy(v) for v in value)
    return value


def safe_loads(data: bytes, *, source: str, allow_chumpy: bool = True, allow_sparse: bool = True) -> Any:
    """Unpickle ``data`` admitting only the globals listed in the module docstring.

    ``source`` names the data in errors (a path, ``shard.tar:key.pyd``). For model files keep the
    defaults; for foreign data (e.g. ``.pyd`` members of shards) pass ``allow_chumpy=False,
    allow_sparse=False``: numpy arrays and plain containers only. Chumpy objects come back as numpy
    arrays. Raises :class:`UnsafePickleError` for a refused global, ``pickle.UnpicklingError`` for
    data that is not a readable pickle.
    """
    unpickler = SafeUnpickler(io.BytesIO(data), source=source, allow_chumpy=allow_chumpy, allow_sparse=allow_sparse)
    try:
        obj = unpickler.load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise pickle.UnpicklingError(f"cannot read {source} as a pickle: nested too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise pickle.UnpicklingError(f"cannot read {source} as a pickle: {type(e).__name__}: {e}") from e
    try:
        return evaluate_chumpy(obj)
    except RecursionError:
        raise pickle.UnpicklingError(f"{source}: the pickle's content is nested too deeply") from None
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise pickle.UnpicklingError(f"{source}: malformed chumpy object: {type(e).__name__}: {e}") from e


def safe_load_pickle(path: Path | str, *, allow_chumpy: bool = True, allow_sparse: bool = True) -> Any:
    """:func:`safe_loads` of the file at ``path``."""
    path = Path(path)
    return safe_loads(path.read_bytes(), source=str(path), allow_chumpy=allow_chumpy, allow_sparse=allow_sparse)
