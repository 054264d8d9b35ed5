"""The WebDataset form of the record, derived from :data:`schemas.ehm_v1.FIELDS`.

Each person is one WebDataset sample of three members sharing a ``__key__``:

- ``{key}.ehm.npz``: every float field and every array field (:attr:`Field.member` == ``ehm.npz``),
  one ``.npy`` entry per field, exact dtype and shape; written deterministically (fixed zip
  timestamps and attributes, column order) and read with ``np.load(..., allow_pickle=False)``;
- ``{key}.meta.json``: the string fields and the int/bool scalars (exact in JSON), sorted keys;
  ``key`` among them is the real record key;
- ``{key}.crop.jpg``: the person crop (optional).

WebDataset splits member names at the first dot, so the ``__key__`` is :func:`wds_key` of the record
key: a readable, dot-free, slash-free form plus a digest that keeps it unique.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from schemas.ehm_v1 import FIELDS, SchemaError, check_version, validate

NPZ_MEMBER = "ehm.npz"
META_MEMBER = "meta.json"
CROP_MEMBER = "crop.jpg"

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclasses.dataclass(frozen=True)
class WdsCodec:
    """How one WebDataset member is written from and read into record fields."""

    member: str
    """Member suffix, e.g. ``ehm.npz``."""
    fields: tuple[str, ...]
    """Record fields it holds, in column order."""
    encode: Callable[[Mapping[str, Any]], bytes]
    """Canonical record (or any mapping with its fields) -> member bytes."""
    decode: Callable[[bytes], dict[str, Any]]
    """Member bytes -> ``{field: value}`` (arrays from npz, JSON values from json)."""


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A deflated ``.npz`` of ``arrays`` (in the order given) whose bytes depend on the arrays only."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.asarray(value, order="C"), allow_pickle=False)
            zf.writestr(info, entry.getvalue())
    return buf.getvalue()


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
"""Parsed ``.npy`` headers (the members of pearl's records repeat the same few dozen)."""


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (never unpickles: object arrays are refused with a ``ValueError``).

    What :func:`decode_npz_reference` (``np.load``) returns, with each distinct ``.npy`` header parsed once per
    process: numpy parses every header with ``ast.literal_eval``, which made decoding a record's 47 arrays the
    training data loader's largest cost.
    """
    out = {}
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a valid .npz ({exc})") from None
    with archive:
        for info in archive.infolist():
            raw = archive.read(info)
            if raw[:6] != b"\x93NUMPY" or raw[6] not in (1, 2, 3):
                raise ValueError(f"npz member {info.filename!r} is not a .npy array")
            start = 10 if raw[6] == 1 else 12
            end = start + int.from_bytes(raw[8:start], "little")
            header = raw[start:end]
            parsed = _NPY_HEADERS.get(header)
            if parsed is None:
                fields = ast.literal_eval(header.decode("utf-8" if raw[6] == 3 else "latin1"))
                dtype = np.lib.format.descr_to_dtype(fields["descr"])
                if dtype.hasobject:
                    raise ValueError(f"npz member {info.filename!r} holds Python objects: refused (no pickles, "
                                     "allow_pickle=False)")
                parsed = (dtype, tuple(int(n) for n in fields["shape"]), bool(fields["fortran_order"]))
                if len(_NPY_HEADERS) < 4096:
                    _NPY_HEADERS[header] = parsed
            dtype, shape, fortran = parsed
            count = int(np.prod(shape)) if shape else 1
            array = np.frombuffer(raw, dtype, count=count, offset=end).reshape(shape, order="F" if fortran else "C")
            out[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = array.copy()
    return out


def decode_npz_reference(data: bytes) -> dict[str, np.ndarray]:
    """:func:`decode_npz` through ``np.load(allow_pickle=False)`` (the reference its tests compare with)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def encode_json(values: Mapping[str, Any], *, indent: int | None = None) -> bytes:
    """Deterministic JSON (sorted keys, ASCII, no NaN; compact unless ``indent``); numpy scalars become numbers."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(values, sort_keys=True, separators=separators, indent=indent, allow_nan=False,
                      default=_json_default).encode("ascii")


def decode_json(data: bytes) -> dict[str, Any]:
    """A JSON object member."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise SchemaError(f"{META_MEMBER} must hold a JSON object, got {type(value).__name__}")
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _member_fields(member: str) -> tuple[str, ...]:
    return tuple(f.name for f in FIELDS if f.member == member)


def wds_codecs() -> dict[str, WdsCodec]:
    """Member suffix -> codec for the two record members (``ehm.npz``, ``meta.json``)."""
    npz_fields, meta_fields = _member_fields(NPZ_MEMBER), _member_fields(META_MEMBER)
    return {
        NPZ_MEMBER: WdsCodec(NPZ_MEMBER, npz_fields, lambda r: encode_npz({n: r[n] for n in npz_fields}), decode_npz),
        META_MEMBER: WdsCodec(META_MEMBER, meta_fields, lambda r: encode_json({n: r[n] for n in meta_fields}),
                              decode_json),
    }


def wds_key(key: str) -> str:
    """A WebDataset ``__key__`` for record ``key``: ``[A-Za-z0-9_-]`` only, ≤ 77 chars, unique by digest."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", key).strip("_")[-64:]
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}" if readable else digest


def record_to_members(record: Mapping[str, Any]) -> dict[str, bytes]:
    """Member suffix -> bytes for a canonical record (see :func:`schemas.validate`)."""
    return {member: codec.encode(record) for member, codec in wds_codecs().items()}


def members_to_record(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical record from a sample's decoded ``ehm.npz`` and ``meta.json`` (validated)."""
    codecs = wds_codecs()
    for member in codecs:
        if member not in sample:
            raise SchemaError(f"sample {sample.get('__key__', '?')!r} has no {member} member")
    npz, meta = sample[NPZ_MEMBER], sample[META_MEMBER]
    check_version(str(meta.get("schema_version")), source=f"sample {meta.get('key', '?')!r}")
    return validate({**npz, **meta})
