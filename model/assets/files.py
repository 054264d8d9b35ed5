"""Writing asset files byte-for-byte reproducibly and atomically (temporary name, then rename)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip member time: the same arrays give the same bytes


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file in the same folder, renamed onto
    ``path`` when the block ends without error (removed otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as f:
        f.write(data)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    """``.npy`` file bytes of one array (object arrays only with ``allow_pickle``)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=allow_pickle)
    return buf.getvalue()


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], allow_pickle: bool = False) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` at ``path`` (atomically), as ``np.savez`` writes
    it but with a fixed member time, so that the same arrays give the same bytes."""
    with atomic_output(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=allow_pickle)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
