"""Paired shard I/O: WebDataset tar + Parquet + stats, committed atomically, local or on object storage.

Layout under ``OUT`` (a local path or an fsspec URL such as ``s3://bucket/prefix``)::

    OUT/wds/{split}-{index:06d}.tar          per person: {k}.crop.jpg, {k}.ehm.npz, {k}.meta.json
    OUT/parquet/{split}-{index:06d}.parquet  one row per person (schemas.arrow_schema())
    OUT/stats/{split}-{index:06d}.json       rows, bytes and sha256 of both files, plus the caller's stats

Commit protocol: the tar and Parquet files are written under temporary names in their own folders
(``.tmp-{token}-{name}.partial``: hidden, matched by no ``*.tar`` / ``*.parquet`` pattern) and renamed
when complete; any earlier stats file of the shard is removed first, and the stats file is
written (also through a temporary name) LAST. A shard is committed exactly when its stats file
exists, which holds on S3 too (rename there is copy + delete, but a single object appears atomically).

Determinism: the same records in the same order give byte-identical tar and Parquet files (fixed tar
member metadata, deterministic ``.npz`` and JSON, one Parquet row group with fixed options). The stats
file carries the caller's timings, so only its hashes and counts repeat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

import schemas

if TYPE_CHECKING:
    import pyarrow as pa
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Prefix of files being written (hidden, and never matched by ``*.tar`` / ``*.parquet`` / ``*.json``)."""

TMP_SUFFIX = ".partial"
"""Suffix of files being written."""

STATISTICS_COLUMNS: list[str] = [f.name for f in schemas.FIELDS if not f.allow_nan]
"""Columns whose Parquet min/max statistics are written: every record field that never holds NaN. pyarrow leaves
NaN out of min/max, and readers that trust the statistics (DuckDB folds ``isnan(x)`` to false and skips row
groups with them, duckdb/duckdb#25521) would then answer NaN queries wrongly; without statistics they scan."""
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 3,
                                   "write_statistics": STATISTICS_COLUMNS}
"""Options of every Parquet file the writer produces (one row group per shard)."""

_STATS_KEYS = ("shard", "split", "index", "schema_version", "rows", "files")
_PICKLE_EXTENSIONS = ("pyd", "pickle", "pkl")
_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def shard_name(split: str, index: int) -> str:
    """``"{split}-{index:06d}"``; ``split`` may hold letters, digits and ``_`` only."""
    if not split or not all(c.isalnum() or c == "_" for c in split) or not split.isascii():
        raise ValueError(f"split {split!r} must be non-empty and hold only ASCII letters, digits and '_'")
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"shard index {index!r} must be a non-negative int")
    return f"{split}-{int(index):06d}"


@dataclasses.dataclass(frozen=True)
class ShardPaths:
    """Locations of one shard's files (plain paths locally, URLs such as ``s3://...`` otherwise)."""

    tar: str
    parquet: str
    stats: str


def _resolve(out: str | os.PathLike[str], filesystem: AbstractFileSystem | None) -> tuple[AbstractFileSystem, str]:
    """The filesystem and its path for ``out``."""
    if filesystem is not None:
        return filesystem, str(out).rstrip("/")
    import fsspec

    fs, path = fsspec.core.url_to_fs(os.fspath(out))
    return fs, path.rstrip("/")


def path_url(fs: AbstractFileSystem, path: str) -> str:
    """``path`` on ``fs`` as a user passes it: a local path, or a URL with its protocol (``s3://bucket/...``)."""
    from fsspec.implementations.local import LocalFileSystem

    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _shard_files(root: str, name: str) -> dict[str, str]:
    """Paths of shard ``name``'s files under ``root``: ``tar`` / ``parquet`` / ``stats`` -> path."""
    return {"tar": f"{root}/wds/{name}.tar", "parquet": f"{root}/parquet/{name}.parquet",
            "stats": f"{root}/stats/{name}.json"}


def _tmp_path(path: str, token: str) -> str:
    folder, base = path.rsplit("/", 1)
    return f"{folder}/{TMP_PREFIX}{token}-{base}{TMP_SUFFIX}"


def shard_paths(out: str | os.PathLike[str], split: str, index: int, *,
                filesystem: AbstractFileSystem | None = None) -> ShardPaths:
    """Where shard ``(split, index)`` of ``out`` lives (whether or not it is written)."""
    fs, root = _resolve(out, filesystem)
    files = _shard_files(root, shard_name(split, index))
    return ShardPaths(**{k: path_url(fs, v) for k, v in files.items()})


class _HashingWriter(io.RawIOBase):
    """A write-only stream that forwards to ``sink`` and keeps a sha256 and a byte count."""

    def __init__(self, sink: Any) -> None:
        super().__init__()
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sink.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ShardWriter:
    """Writes one shard: add records in order, then :meth:`commit` (or :meth:`abort`).

    Use it as a context manager: an exception inside the block aborts (temporary files removed,
    nothing committed); leaving the block without :meth:`commit` aborts and raises ``RuntimeError``.

    Args:
        out: output root, a local path or an fsspec URL (``s3://bucket/prefix``, ``memory://...``).
        split: split name (letters, digits, ``_``); every record's ``split`` must equal it.
        index: shard number (>= 0).
        filesystem: an fsspec filesystem to write through (``out`` is then a path on it).
        parquet_images: also store each crop's JPEG bytes in a ``crop_jpeg`` Parquet column.
    """

    def __init__(self, out: str | os.PathLike[str], split: str, index: int, *,
                 filesystem: AbstractFileSystem | None = None, parquet_images: bool = False) -> None:
        self.name = shard_name(split, index)
        self.split, self.index = split, int(index)
        self.parquet_images = parquet_images
        self._fs, self._root = _resolve(out, filesystem)
        self._final = _shard_files(self._root, self.name)
        token = uuid.uuid4().hex[:8]
        self._tmp = {kind: _tmp_path(path, token) for kind, path in self._final.items()}
        self._records: list[dict[str, Any]] = []
        self._crops: list[bytes | None] = []
        self._keys: set[str] = set()
        self._state = "open"
        for kind in ("tar", "parquet", "stats"):
            self._fs.makedirs(self._final[kind].rsplit("/", 1)[0], exist_ok=True)
        self._tar_file = self._fs.open(self._tmp["tar"], "wb")
        self._tar_hash = _HashingWriter(self._tar_file)
        self._tar = tarfile.open(fileobj=self._tar_hash, mode="w", format=tarfile.USTAR_FORMAT)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state != "open":
            return
        self.abort()
        if exc_type is None:
            raise RuntimeError(f"shard {self.name}: the writer was closed without commit(); nothing was written")

    def __len__(self) -> int:
        return len(self._records)

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"shard {self.name} is already {self._state}")

    def add(self, record: Mapping[str, Any], crop_jpeg: bytes | None = None) -> None:
        """Validate ``record`` (:func:`schemas.validate`) and append it, with its crop's JPEG bytes."""
        self._check_open()
        canonical = schemas.validate(record)
        if canonical["split"] != self.split:
            raise schemas.SchemaError(f"field 'split' is {canonical['split']!r}, but shard {self.name} is for "
                                      f"split {self.split!r}")
        if crop_jpeg is not None and not isinstance(crop_jpeg, (bytes, bytearray, memoryview)):
            raise TypeError(f"crop_jpeg of {canonical['key']!r} must be JPEG bytes, got {type(crop_jpeg).__name__}")
        wkey = schemas.wds_key(canonical["key"])
        if wkey in self._keys:
            raise ValueError(f"record key {canonical['key']!r} was already added to shard {self.name}")
        members = schemas.record_to_members(canonical)
        if crop_jpeg is not None:
            members[schemas.CROP_MEMBER] = bytes(crop_jpeg)
        for member in sorted(members):
            data = members[member]
            self._tar.addfile(_tar_info(f"{wkey}.{member}", len(data)), io.BytesIO(data))
        self._keys.add(wkey)
        self._records.append(canonical)
        self._crops.append(bytes(crop_jpeg) if crop_jpeg is not None and self.parquet_images else None)

    def _parquet_bytes(self) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = schemas.records_to_arrow(self._records, self._crops if self.parquet_images else None)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=max(1, len(self._records)), **PARQUET_OPTIONS)
        return sink.getvalue().to_pybytes()

    def commit(self, stats: Mapping[str, Any] | None = None) -> ShardPaths:
        """Finish the shard, rename its files into place and write its stats file last.

        ``stats``: the caller's JSON-serialisable counts, errors and timings; merged with the writer's
        own keys (``shard``, ``split``, ``index``, ``schema_version``, ``rows``, ``files``), which it may
        not contain.
        """
        self._check_open()
        stats = dict(stats or {})
        clash = sorted(set(stats) & set(_STATS_KEYS))
        if clash:
            raise ValueError(f"stats may not set the writer's own key(s) {', '.join(clash)}")
        schemas.encode_json(stats)  # refuse what JSON cannot hold before anything is closed
        try:
            self._tar.close()
            self._tar_file.close()
            parquet = self._parquet_bytes()
            self._fs.pipe_file(self._tmp["parquet"], parquet)
            rel = {k: v[len(self._root) + 1:] for k, v in self._final.items()}
            files = {
                "tar": {"path": rel["tar"], "bytes": self._tar_hash.size, "sha256": self._tar_hash.sha256.hexdigest()},
                "parquet": {"path": rel["parquet"], "bytes": len(parquet),
                            "sha256": hashlib.sha256(parquet).hexdigest()},
            }
            stats.update(shard=self.name, split=self.split, index=self.index, schema_version=schemas.SCHEMA_VERSION,
                         rows=len(self._records), files=files)
            stats_bytes = schemas.encode_json(stats, indent=2) + b"\n"
            if self._fs.exists(self._final["stats"]):
                self._fs.rm_file(self._final["stats"])  # un-commit the older version first
            for kind in ("tar", "parquet"):
                self._fs.mv(self._tmp[kind], self._final[kind])
            self._fs.pipe_file(self._tmp["stats"], stats_bytes)
            self._fs.mv(self._tmp["stats"], self._final["stats"])
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        log.debug("committed shard %s (%d rows)", self.name, len(self._records))
        return ShardPaths(**{k: path_url(self._fs, v) for k, v in self._final.items()})

    def abort(self) -> None:
        """Drop the shard: close and remove its temporary files. Committed files are left alone."""
        if self._state == "committed":
            raise RuntimeError(f"shard {self.name} is already committed")
        for closer in (self._tar.close, self._tar_file.close):
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort while aborting
                log.debug("shard %s: error while closing during abort", self.name, exc_info=True)
        for path in self._tmp.values():
            if self._fs.exists(path):
                self._fs.rm_file(path)
        self._state = "aborted"


def _list_names(fs: AbstractFileSystem, folder: str) -> list[str]:
    """File names in ``folder`` (fresh listing: object-store listings are cached per process)."""
    fs.invalidate_cache(folder)
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
    except FileNotFoundError:
        return []


def committed_shards(out: str | os.PathLike[str], *, filesystem: AbstractFileSystem | None = None) -> set[str]:
    """Names (``"train-000000"``) of the shards of ``out`` whose stats file exists."""
    fs, root = _resolve(out, filesystem)
    return {n[: -len(".json")] for n in _list_names(fs, f"{root}/stats")
            if n.endswith(".json") and not n.startswith(TMP_PREFIX)}


def read_all_stats(fs: AbstractFileSystem, root: str) -> list[dict[str, Any]]:
    """The stats (``OUT/stats/*.json``) of every committed shard of ``root``, by shard name."""
    names = sorted(committed_shards(root, filesystem=fs))
    paths = [f"{root}/stats/{n}.json" for n in names]
    contents = fs.cat(paths) if paths else {}
    if isinstance(contents, bytes):  # a single path comes back as bytes
        contents = {paths[0]: contents}
    return [json.loads(contents[p]) for p in paths]


def is_committed(out: str | os.PathLike[str], split: str, index: int, *,
                 filesystem: AbstractFileSystem | None = None) -> bool:
    """True when shard ``(split, index)`` of ``out`` is committed."""
    fs, root = _resolve(out, filesystem)
    stats = _shard_files(root, shard_name(split, index))["stats"]
    fs.invalidate_cache(stats.rsplit("/", 1)[0])
    return bool(fs.exists(stats))


def clean_temporaries(out: str | os.PathLike[str], *, filesystem: AbstractFileSystem | None = None) -> list[str]:
    """Remove temporary files left by writers that died; returns their paths.

    Only call it while no writer is running on ``out`` (the job holds ``out``'s lock).
    """
    fs, root = _resolve(out, filesystem)
    removed = []
    for folder in ("wds", "parquet", "stats"):
        for name in _list_names(fs, f"{root}/{folder}"):
            if name.startswith(TMP_PREFIX):
                fs.rm_file(f"{root}/{folder}/{name}")
                removed.append(path_url(fs, f"{root}/{folder}/{name}"))
    return removed


def read_parquet(out_or_paths: str | os.PathLike[str] | Sequence[str], *,
                 filesystem: AbstractFileSystem | None = None, columns: list[str] | None = None) -> pa.Table:
    """The Parquet rows of committed shards (``out_or_paths`` = OUT) or of the given file(s), in order.

    Reads through ``pyarrow.dataset``; checks every file's ``schema_version``. With no committed shard
    the result is an empty table of :func:`schemas.arrow_schema`.
    """
    import pyarrow.dataset as ds

    if isinstance(out_or_paths, (str, os.PathLike)) and os.fspath(out_or_paths).endswith(".parquet"):
        out_or_paths = [os.fspath(out_or_paths)]
    if isinstance(out_or_paths, (str, os.PathLike)):
        fs, root = _resolve(out_or_paths, filesystem)
        paths = [_shard_files(root, name)["parquet"] for name in sorted(committed_shards(root, filesystem=fs))]
    else:
        paths, fs = [], filesystem
        for item in out_or_paths:
            item_fs, path = _resolve(item, filesystem)
            fs = fs or item_fs
            paths.append(path)
    if not paths:
        table = schemas.arrow_schema().empty_table()
        return table.select(columns) if columns else table
    dataset = ds.dataset(paths, format="parquet", filesystem=fs)
    for fragment in dataset.get_fragments():
        version = (fragment.physical_schema.metadata or {}).get(schemas.SCHEMA_VERSION_KEY, b"").decode()
        schemas.check_version(version or "(none)", source=fragment.path)
    return dataset.to_table(columns=columns)


def safe_pickle_decoder(key: str, data: bytes) -> Any | None:
    """WebDataset handler for pickle members (``.pyd``, ``.pickle``, ``.pkl``) of foreign shards.

    Decodes them only through the restricted unpickler (:func:`model.assets.safe_pickle.safe_loads`),
    which refuses any global outside its allow-list; returns ``None`` for other members. pearl's own
    shards hold no pickles.
    """
    if key.rsplit(".", 1)[-1].lower() not in _PICKLE_EXTENSIONS:
        return None
    from model.assets.safe_pickle import safe_loads

    return safe_loads(data, source=key)


def decode_sample(sample: Mapping[str, Any], *, rgb: bool = False) -> dict[str, Any]:
    """Decode a raw WebDataset sample safely (usable as ``WebDataset(...).map(decode_sample)``).

    ``.npz`` / ``.npy`` -> arrays (``allow_pickle=False``), ``.json`` -> parsed JSON, ``.txt`` -> str,
    images -> bytes (or ``uint8 [H, W, 3]`` RGB arrays if ``rgb``), pickles -> :func:`safe_pickle_decoder`;
    anything else stays bytes. ``__key__`` / ``__url__`` pass through.
    """
    out: dict[str, Any] = {}
    for name, value in sample.items():
        if name.startswith("__") or not isinstance(value, (bytes, bytearray)):
            out[name] = value
            continue
        ext = name.rsplit(".", 1)[-1].lower()
        if ext == "npz":
            out[name] = schemas.decode_npz(value)
        elif ext == "npy":
            out[name] = np.load(io.BytesIO(value), allow_pickle=False)
        elif ext == "json":
            out[name] = json.loads(value)
        elif ext == "txt":
            out[name] = bytes(value).decode("utf-8")
        elif ext in _IMAGE_EXTENSIONS and rgb:
            out[name] = _decode_rgb(value)
        elif ext in _PICKLE_EXTENSIONS:
            out[name] = safe_pickle_decoder(f"{sample.get('__url__', '')}:{sample.get('__key__', '')}.{name}", value)
        else:
            out[name] = bytes(value)
    return out


def _decode_rgb(data: bytes) -> np.ndarray:
    """Image bytes -> ``uint8 [H, W, 3]`` RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _open_shards(urls: list[str], filesystem: AbstractFileSystem | None) -> Iterator[dict[str, Any]]:
    """``{"url", "stream"}`` per shard for webdataset's tar expander; ``pipe:`` through webdataset's gopen."""
    import fsspec
    import webdataset as wds

    for url in urls:
        if url.startswith("pipe:"):
            stream = wds.gopen(url)
        elif filesystem is not None:
            stream = filesystem.open(url, "rb")
        else:
            stream = fsspec.open(url, "rb").open()
        try:
            yield {"url": url, "stream": stream}
        finally:
            stream.close()


def iter_wds(urls: str | Sequence[str], *, decode: bool = True, rgb: bool = False,
             filesystem: AbstractFileSystem | None = None) -> Iterator[dict[str, Any]]:
    """Samples of WebDataset shards, in order, decoded safely (:func:`decode_sample`) unless ``decode=False``.

    ``urls``: a brace pattern (``OUT/wds/train-{000000..000003}.tar``), a list, local paths, fsspec URLs
    (``s3://``, ``memory://``) or ``pipe:`` commands. Each pearl sample has ``__key__``, ``__url__``,
    ``ehm.npz`` (dict of arrays), ``meta.json`` (dict) and ``crop.jpg`` when stored;
    :func:`schemas.members_to_record` turns it into a validated record.
    """
    from webdataset.shardlists import expand_urls
    from webdataset.tariterators import group_by_keys, tar_file_expander

    if isinstance(urls, os.PathLike):
        urls = os.fspath(urls)
    url_list = expand_urls(urls) if isinstance(urls, str) else [os.fspath(u) for u in urls]
    for sample in group_by_keys(tar_file_expander(_open_shards(url_list, filesystem))):
        yield decode_sample(sample, rgb=rgb) if decode else sample
