"""Quarantine tables: written atomically, read back in order, and readable by a short script that exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsspec

from pipelines.io.quarantine import QuarantineRow, read_quarantine, write_quarantine

REPO = Path(__file__).resolve().parents[3]


def _rows(n: int, shard: int) -> list[QuarantineRow]:
    return [QuarantineRow(f"s{shard}/img{i}.jpg/p00", f"s{shard}/img{i}.jpg", f"/data/img{i}.jpg", "quality",
                          f"body reprojection: 0.{i + 6} > max_reproj_norm_body 0.05") for i in range(n)]


def test_rows_round_trip_in_file_then_key_order(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    write_quarantine(fs, str(tmp_path), "train", 1, list(reversed(_rows(2, 1))))
    write_quarantine(fs, str(tmp_path), "train", 0, _rows(3, 0))
    table = read_quarantine(str(tmp_path))
    assert table.column("key").to_pylist() == [r.key for r in _rows(3, 0) + _rows(2, 1)]
    assert table.column("reason").to_pylist()[0] == "body reprojection: 0.6 > max_reproj_norm_body 0.05"
    assert read_quarantine(str(tmp_path), limit=2).num_rows == 2
    assert read_quarantine(str(tmp_path / "none")).num_rows == 0


def test_a_script_that_reads_the_quarantine_exits_cleanly(tmp_path: Path) -> None:
    # pyarrow 21's read_table on an in-memory file made the interpreter abort at exit (status 134)
    write_quarantine(fsspec.filesystem("file"), str(tmp_path), "train", 0, _rows(2, 0))
    script = ("import sys\nfrom pipelines.io.quarantine import read_quarantine\n"
              "print(read_quarantine(sys.argv[1]).num_rows)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "2"
