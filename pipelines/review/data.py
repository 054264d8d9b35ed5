"""One run folder opened for review: DuckDB views over its committed Parquet shards and quarantine
tables, the decisions, and random access to the crops in its WebDataset tars.

Nothing is loaded whole. :class:`ReviewRun` lists the committed shards (their stats files exist), defines
the DuckDB view ``persons`` over their Parquet files (``read_parquet([...], filename = true)``, with the
Parquet metadata cache on) and ``quarantine`` over their quarantine files, and answers every page with
one ``LIMIT`` / ``OFFSET`` query plus one ``count(*)`` over the same ``WHERE``; DuckDB reads only the
columns a query names. A person's crop is read from its shard's tar at the member's offset: each tar's
crop index (member name -> offset, size) is built from its headers the first time one of its persons is
shown, and kept for the :data:`TAR_INDEXES` tars used last. ``OUT`` is a local folder or an fsspec URL
(``s3://``); DuckDB reads remote files through the same fsspec filesystem (``register_filesystem``).

Every DuckDB call runs on its own cursor, so the web server's threads can query at once.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

import schemas
from pipelines.io.quarantine import QUARANTINE_DIR
from pipelines.io.shards import TMP_PREFIX, committed_shards, shard_paths
from pipelines.review.decisions import Decision, DecisionStore
from pipelines.review.fields import review_fields
from pipelines.review.query import PersonQuery, QuarantineQuery, order_clause, where_clause

if TYPE_CHECKING:
    import duckdb
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""The run's manifest (written by the annotation job, or by ``pearl filter``)."""
MAX_PAGE = 500
"""Largest page the grid may ask for."""
SUMMARY_FIELDS = ("quality_reproj_norm_body", "quality_final_loss", "conf_body")
"""Figures every grid row carries besides the sort figure (for the thumbnail captions)."""
TAR_INDEXES = 256
"""Tar member indexes kept (least recently used dropped first)."""
OVERLAY_COLUMNS = (
    "key", "has_body", "has_face", "has_hands", "image_width", "image_height", "bbox_xyxy", "crop_xyxy",
    "cam_intrinsics", "kp2d_wholebody",
)
"""Record columns an overlay needs besides the EHM parameters."""


class RunError(ValueError):
    """OUT is not a run folder pearl can review; the message says what is wrong."""


def _sql_list(paths: Sequence[str]) -> str:
    """A DuckDB list literal of file paths (paths come from listing OUT, never from the page)."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _to_value(name: str, value: Any) -> Any:
    """A DuckDB value of record column ``name`` as the record holds it (numpy of the field's dtype and
    shape; ``str`` for strings)."""
    try:
        f = schemas.field(name)
    except KeyError:
        return value
    if f.dtype == "str":
        return str(value)
    return np.asarray(value, dtype=f.dtype).reshape(f.shape)


class ReviewRun:
    """A run folder opened for review (see the module docstring).

    Args:
        out: OUT, a local path or fsspec URL.
        filesystem: an fsspec filesystem to read through (``out`` is then a path on it).
        reviewer: the name written with each decision (default: the OS user).
    """

    def __init__(self, out: str | os.PathLike[str], *, filesystem: AbstractFileSystem | None = None,
                 reviewer: str | None = None) -> None:
        import duckdb
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.out = os.fspath(out)
        if filesystem is None:
            self.fs, root = fsspec.core.url_to_fs(self.out)
        else:
            self.fs, root = filesystem, self.out
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        if not self.fs.isdir(self.root):
            raise RunError(f"{self.out}: no such run folder (give the --out folder of a `pearl annotate` run)")
        self.shards = sorted(committed_shards(self.root, filesystem=self.fs))
        if not self.shards and not self.fs.exists(f"{self.root}/{MANIFEST}"):
            raise RunError(f"{self.out}: neither a manifest.json nor committed shards (stats/*.json) here; is this "
                           "the --out folder of a `pearl annotate` run?")
        self.manifest = self._read_manifest()
        self.decisions = DecisionStore(self.fs, self.root, reviewer)
        self._con = duckdb.connect(config={"threads": max(1, min(4, os.cpu_count() or 1))})
        self._con.execute("SET enable_object_cache = true")
        if not self.local:
            self._con.register_filesystem(self.fs)
        self._tar_index: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self._tar_lock = threading.Lock()
        self._decision_lock = threading.Lock()
        self.parquet_images = False
        self._define_views()

    # -- setup ------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """A path on :attr:`fs` as DuckDB and fsspec openers take it."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def _read_manifest(self) -> dict[str, Any]:
        path = f"{self.root}/{MANIFEST}"
        if not self.fs.exists(path):
            return {}
        try:
            return json.loads(self.fs.cat_file(path))
        except ValueError as exc:
            raise RunError(f"{self.url(path)}: not valid JSON ({exc})") from None

    def _define_views(self) -> None:
        import pyarrow as pa

        con = self._con
        parquet = [self.url(f"{self.root}/parquet/{name}.parquet") for name in self.shards]
        if parquet:
            columns = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_list(parquet[:1])})").fetchall()
            self.parquet_images = any(c[0] == schemas.CROP_COLUMN for c in columns)
            exclude = f" EXCLUDE ({schemas.CROP_COLUMN})" if self.parquet_images else ""
            con.execute(f"CREATE VIEW persons_all AS SELECT * FROM read_parquet({_sql_list(parquet)}, filename = true)")
            con.execute(f"CREATE VIEW persons AS SELECT *{exclude} FROM persons_all")
        else:
            con.register("empty_shard", schemas.arrow_schema().empty_table())
            con.execute("CREATE TABLE persons_all AS SELECT *, ''::VARCHAR AS filename FROM empty_shard")
            con.unregister("empty_shard")
            con.execute("CREATE VIEW persons AS SELECT * FROM persons_all")
        names = set(self.shards)
        folder = f"{self.root}/{QUARANTINE_DIR}"
        quarantine = []
        if self.fs.exists(folder):
            for path in sorted(self.fs.ls(folder, detail=False)):
                base = path.rsplit("/", 1)[-1]
                if base.endswith(".parquet") and not base.startswith(TMP_PREFIX) and base[: -len(".parquet")] in names:
                    quarantine.append(self.url(path))
        split = r"regexp_extract(filename, '([A-Za-z0-9_]+)-[0-9]+\.parquet$', 1)"
        if quarantine:
            con.execute(f"CREATE VIEW quarantine AS SELECT key, sample_key, source, stage, reason, {split} AS split "
                        f"FROM read_parquet({_sql_list(quarantine)}, filename = true)")
        else:
            con.execute("CREATE TABLE quarantine (key VARCHAR, sample_key VARCHAR, source VARCHAR, stage VARCHAR, "
                        "reason VARCHAR, split VARCHAR)")
        con.execute("CREATE TABLE decisions (key VARCHAR PRIMARY KEY, decision VARCHAR, note VARCHAR, "
                    "time TIMESTAMPTZ, reviewer VARCHAR)")
        rows = list(self.decisions.all().values())
        if rows:
            con.register("decision_rows", pa.Table.from_pylist([r.__dict__ for r in rows]))
            con.execute("INSERT INTO decisions SELECT key, decision, note, time, reviewer FROM decision_rows")
            con.unregister("decision_rows")

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB cursor of this run's database (one per thread and call)."""
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    # -- persons ----------------------------------------------------------------------------------

    def count(self) -> int:
        """Persons in the committed shards."""
        with self.cursor() as cur:
            return int(cur.execute("SELECT count(*) FROM persons").fetchone()[0])

    def page(self, query: PersonQuery, *, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        """One page of the grid: ``{"total", "offset", "rows": [...], "decisions": {decision: count}}``; each
        row holds ``key``, ``source``, ``split``, ``has_body``, ``decision``, ``note``, the sort figure and
        :data:`SUMMARY_FIELDS`. Counts are over the whole filtered set."""
        if not 0 <= offset or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"offset must be >= 0 and limit in [1, {MAX_PAGE}], got offset={offset}, limit={limit}")
        where, params = where_clause(query)
        order = order_clause(query)
        fields = review_fields()
        shown = [n for n in dict.fromkeys((query.sort, *SUMMARY_FIELDS)) if n in fields]
        figures = "".join(f", ({fields[n].sql}) AS \"{n}\"" for n in shown)
        base = "FROM persons p LEFT JOIN decisions d ON p.key = d.key"
        sql = (f"SELECT p.key, p.source, p.split, p.has_body, d.decision, d.note{figures} {base} WHERE {where} "
               f"ORDER BY {order} LIMIT ? OFFSET ?")
        with self.cursor() as cur:
            cur.execute(sql, [*params, limit, offset])
            names = [c[0] for c in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
            counts = cur.execute(f"SELECT coalesce(d.decision, 'undecided'), count(*) {base} WHERE {where} GROUP BY 1",
                                 params).fetchall()
        for row in rows:
            for name in shown:
                v = row.get(name)
                if isinstance(v, float) and v != v:
                    row[name] = None  # JSON has no NaN: "not measured"
        by_decision = {k: int(v) for k, v in counts}
        return {"total": sum(by_decision.values()), "offset": offset, "rows": rows, "decisions": by_decision}

    def position(self, query: PersonQuery, key: str) -> int | None:
        """0-based position of ``key`` in the filtered, sorted set (None when the filter hides it)."""
        where, params = where_clause(query)
        sql = (f"SELECT n FROM (SELECT p.key, row_number() OVER (ORDER BY {order_clause(query)}) - 1 AS n "
               f"FROM persons p LEFT JOIN decisions d ON p.key = d.key WHERE {where}) WHERE key = ?")
        with self.cursor() as cur:
            row = cur.execute(sql, [*params, key]).fetchone()
        return None if row is None else int(row[0])

    def record(self, key: str, columns: Sequence[str] | None = None) -> dict[str, Any] | None:
        """Record columns of ``key`` (all fields, or ``columns``) as the record holds them, plus
        ``filename`` (its Parquet file); None when no committed shard holds it."""
        if columns is None:
            selected = "*"
        else:
            unknown = [c for c in columns if c not in schemas.FIELD_NAMES]
            if unknown:
                raise KeyError(f"unknown record column(s) {unknown}")
            selected = ", ".join(f'"{c}"' for c in dict.fromkeys(("key", *columns, "filename")))
        with self.cursor() as cur:
            cur.execute(f"SELECT {selected} FROM persons WHERE key = ?", [key])
            names = [c[0] for c in cur.description]
            row = cur.fetchone()
        if row is None:
            return None
        return {n: _to_value(n, v) for n, v in zip(names, row)}

    def exists(self, key: str) -> bool:
        with self.cursor() as cur:
            return cur.execute("SELECT count(*) FROM persons WHERE key = ?", [key]).fetchone()[0] > 0

    def values(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query written by pearl's own code (never pass user text)."""
        with self.cursor() as cur:
            return cur.execute(sql, list(params)).fetchall()

    def splits(self) -> list[str]:
        return [r[0] for r in self.values("SELECT DISTINCT split FROM persons ORDER BY 1")]

    def top_sources(self, limit: int = 50) -> list[tuple[str, int]]:
        """The most frequent sources with their person counts."""
        return [(s, int(n)) for s, n in self.values(
            "SELECT source, count(*) AS n FROM persons GROUP BY source ORDER BY n DESC, source LIMIT ?", [limit])]

    # -- crops ------------------------------------------------------------------------------------

    def tar_path(self, filename: str) -> str:
        """The tar beside the Parquet file ``filename`` (same shard)."""
        name = filename.rsplit("/", 1)[-1][: -len(".parquet")]
        split, index = name.rsplit("-", 1)
        return shard_paths(self.root, split, int(index), filesystem=self.fs).tar

    def _index(self, tar_url: str) -> dict[str, tuple[int, int]]:
        with self._tar_lock:
            index = self._tar_index.get(tar_url)
            if index is not None:
                self._tar_index.move_to_end(tar_url)
                return index
        index = {}
        suffix = f".{schemas.CROP_MEMBER}"
        with self.fs.open(tar_url, "rb") as f:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:  # headers only: tarfile seeks past the data
                    if member.isfile() and member.name.endswith(suffix):
                        index[member.name] = (member.offset_data, member.size)
        with self._tar_lock:
            self._tar_index[tar_url] = index
            while len(self._tar_index) > TAR_INDEXES:
                self._tar_index.popitem(last=False)
        return index

    def crop_jpeg(self, key: str, filename: str | None = None) -> bytes | None:
        """The JPEG bytes of ``key``'s crop (``crop.jpg`` in its tar, or the Parquet ``crop_jpeg`` column),
        or None when the job stored no crop."""
        if self.parquet_images:
            rows = self.values(f"SELECT {schemas.CROP_COLUMN} FROM persons_all WHERE key = ?", [key])
            if rows and rows[0][0] is not None:
                return bytes(rows[0][0])
        if filename is None:
            rows = self.values("SELECT filename FROM persons WHERE key = ?", [key])
            if not rows:
                return None
            filename = rows[0][0]
        tar = self.tar_path(filename)
        member = f"{schemas.wds_key(key)}.{schemas.CROP_MEMBER}"
        entry = self._index(tar).get(member)
        if entry is None:
            return None
        offset, size = entry
        with self.fs.open(tar, "rb") as f:
            f.seek(offset)
            return f.read(size)

    # -- quarantine -------------------------------------------------------------------------------

    def quarantine_page(self, query: QuarantineQuery, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of the quarantine table, with counts by stage and by ``"stage: kind"`` over the filtered
        set: ``{"total", "offset", "rows", "stages", "reasons"}``."""
        if not 0 <= offset or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"offset must be >= 0 and limit in [1, {MAX_PAGE}], got offset={offset}, limit={limit}")
        where, params = query.where()
        kind = "q.stage || ': ' || coalesce(nullif(trim(split_part(q.reason, ':', 1)), ''), 'unknown')"
        with self.cursor() as cur:
            cur.execute(f"SELECT q.key, q.sample_key, q.source, q.split, q.stage, q.reason FROM quarantine q "
                        f"WHERE {where} ORDER BY q.key LIMIT ? OFFSET ?", [*params, limit, offset])
            names = [c[0] for c in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
            stages = cur.execute(f"SELECT q.stage, count(*) FROM quarantine q WHERE {where} GROUP BY 1 "
                                 "ORDER BY 2 DESC, 1", params).fetchall()
            reasons = cur.execute(f"SELECT {kind}, count(*) FROM quarantine q WHERE {where} GROUP BY 1 "
                                  "ORDER BY 2 DESC, 1 LIMIT 50", params).fetchall()
        return {"total": sum(int(n) for _, n in stages), "offset": offset, "rows": rows,
                "stages": {s: int(n) for s, n in stages}, "reasons": {r: int(n) for r, n in reasons}}

    def quarantine_count(self) -> int:
        return int(self.values("SELECT count(*) FROM quarantine")[0][0])

    # -- decisions --------------------------------------------------------------------------------

    def decide(self, key: str, decision: str, note: str = "") -> Decision | None:
        """Record a decision (``accept``, ``reject``, ``flag``; ``clear`` removes it) for a person of this
        run; ``KeyError`` when no committed shard holds ``key``."""
        if not self.exists(key):
            raise KeyError(f"no person {key!r} in {self.out}")
        with self._decision_lock:
            stored = self.decisions.set(key, decision, note)
            with self.cursor() as cur:
                cur.execute("DELETE FROM decisions WHERE key = ?", [key])
                if stored is not None:
                    cur.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?)",
                                [stored.key, stored.decision, stored.note, stored.time, stored.reviewer])
        return stored

    # -- run info ---------------------------------------------------------------------------------

    def split_entries(self) -> dict[str, dict[str, Any]]:
        """The manifest's per-split entries (``{}`` without a manifest)."""
        return dict(self.manifest.get("splits", {}))

    def asset_hashes(self) -> dict[str, str]:
        """Body-model file hashes the run was made with: from the manifest, else from a record."""
        for entry in self.split_entries().values():
            if entry.get("asset_hashes"):
                return dict(entry["asset_hashes"])
        rows = self.values("SELECT asset_hashes FROM persons LIMIT 1")
        return json.loads(rows[0][0]) if rows else {}

    def body_model_kit(self) -> str:
        for entry in self.split_entries().values():
            if entry.get("body_model_kit"):
                return str(entry["body_model_kit"])
        rows = self.values("SELECT body_model_kit FROM persons LIMIT 1")
        return rows[0][0] if rows else ""

    def close(self) -> None:
        self._con.close()
