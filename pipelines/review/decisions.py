"""Review decisions: a sidecar Parquet file beside the shards, ``OUT/review/decisions.parquet``.

| column | type | meaning |
| --- | --- | --- |
| ``key`` | string | the person key (``"{sample_key}/pNN"``), one row per key |
| ``decision`` | string | ``accept``, ``reject`` or ``flag`` |
| ``note`` | string | the reviewer's note ("" when none) |
| ``time`` | timestamp[us, UTC] | when the decision was made |
| ``reviewer`` | string | who made it (``--reviewer``, default the OS user) |

Rows are sorted by key. Every change rewrites the file through a temporary name in the same folder
(``review/.tmp-<token>-decisions.parquet``) that is then renamed over it, so a reader sees the old file
or the new one, never half of one (on S3 the new object appears whole). Before writing, the store reads
the file again and keeps, per key, the latest decision, so two review servers on one run lose nothing
but the older of two decisions on the same person. The shards themselves are never touched.
"""

from __future__ import annotations

import datetime as dt
import getpass
import io
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.review.query import DECISIONS

if TYPE_CHECKING:
    import pyarrow as pa
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

REVIEW_DIR = "review"
"""Folder under OUT for the review's own files."""
DECISIONS_FILE = "decisions.parquet"
"""File name of the decisions table in :data:`REVIEW_DIR`."""
CLEAR = "clear"
"""Pseudo-decision that removes a key's decision."""


@dataclass(frozen=True)
class Decision:
    """One row of the decisions table."""

    key: str
    decision: str
    note: str
    time: dt.datetime
    reviewer: str

    def as_json(self) -> dict[str, str]:
        return {"key": self.key, "decision": self.decision, "note": self.note,
                "time": self.time.isoformat(timespec="seconds"), "reviewer": self.reviewer}


def decisions_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("note", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("reviewer", pa.string(), nullable=False),
    ], metadata={b"pearl": b"review decisions: one row per person key, the latest decision"})


def default_reviewer() -> str:
    """The OS user name ("unknown" when there is none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def decisions_table(decisions: dict[str, Decision]) -> pa.Table:
    """The rows, sorted by key, as an Arrow table of :func:`decisions_schema`."""
    import pyarrow as pa

    rows = [decisions[k] for k in sorted(decisions)]
    return pa.Table.from_pydict({
        "key": [r.key for r in rows], "decision": [r.decision for r in rows], "note": [r.note for r in rows],
        "time": [r.time for r in rows], "reviewer": [r.reviewer for r in rows],
    }, schema=decisions_schema())


class DecisionStore:
    """The decisions of one run, kept in memory and in ``OUT/review/decisions.parquet``.

    Args:
        fs, root: the run's filesystem and OUT as a path on it.
        reviewer: name written with each decision.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, reviewer: str | None = None) -> None:
        self.fs, self.root = fs, root.rstrip("/")
        self.reviewer = reviewer or default_reviewer()
        self.path = f"{self.root}/{REVIEW_DIR}/{DECISIONS_FILE}"
        self._lock = threading.Lock()
        self._rows = self._read()

    def _read(self) -> dict[str, Decision]:
        import pyarrow.parquet as pq

        self.fs.invalidate_cache(self.path.rsplit("/", 1)[0])
        if not self.fs.exists(self.path):
            return {}
        try:
            table = pq.ParquetFile(io.BytesIO(self.fs.cat_file(self.path))).read()  # not read_table: see read_quarantine
        except Exception as exc:  # noqa: BLE001 - name the file
            raise ValueError(f"{self.path}: not a readable decisions table ({exc}); move it away to start "
                             "afresh") from None
        missing = [c for c in decisions_schema().names if c not in table.column_names]
        if missing:
            raise ValueError(f"{self.path}: decisions table without column(s) {missing}; move it away to start afresh")
        rows = {}
        for r in table.select(decisions_schema().names).to_pylist():
            t = r["time"] if r["time"].tzinfo else r["time"].replace(tzinfo=dt.timezone.utc)
            old = rows.get(r["key"])
            if old is None or t >= old.time:
                rows[r["key"]] = Decision(r["key"], r["decision"], r["note"] or "", t, r["reviewer"] or "")
        return rows

    def all(self) -> dict[str, Decision]:
        """Every decision by key (a copy)."""
        with self._lock:
            return dict(self._rows)

    def get(self, key: str) -> Decision | None:
        with self._lock:
            return self._rows.get(key)

    def set(self, key: str, decision: str, note: str = "", *, time: dt.datetime | None = None) -> Decision | None:
        """Record ``decision`` (``accept``, ``reject``, ``flag``, or ``clear`` to remove it) for ``key`` and
        rewrite the file atomically; returns the stored decision (None after ``clear``)."""
        if decision not in (*DECISIONS, CLEAR):
            raise ValueError(f"decision {decision!r}: expected one of {', '.join([*DECISIONS, CLEAR])}")
        if not isinstance(note, str) or len(note) > 10_000:
            raise ValueError("note: expected a string of at most 10,000 characters")
        now = (time or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
        with self._lock:
            rows = self._read()  # keep what another server wrote meanwhile (latest per key wins)
            for k, mine in self._rows.items():
                if k not in rows or mine.time > rows[k].time:
                    rows[k] = mine
            if decision == CLEAR:
                rows.pop(key, None)
                stored = None
            else:
                stored = rows[key] = Decision(key, decision, note, now, self.reviewer)
            self._write(rows)
            self._rows = rows
        log.info("decision %s: %s%s", key, decision, f" ({note})" if note else "")
        return stored

    def _write(self, rows: dict[str, Decision]) -> None:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(decisions_table(rows), buf, compression="zstd")
        folder = self.path.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex[:8]}-{DECISIONS_FILE}"
        self.fs.pipe_file(tmp, buf.getvalue())
        try:
            self.fs.mv(tmp, self.path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm_file(tmp)
            raise
