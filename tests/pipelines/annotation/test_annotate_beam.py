"""The Beam runner (DirectRunner): same shard layout and bytes as the loop runner, quarantine, resume, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.annotation import beam as annotate_beam
from pipelines.annotation.job import run_job
from pipelines.io.quarantine import read_quarantine
from pipelines.io.shards import read_parquet

DIRECT = ["--runner=DirectRunner"]
STAGES = ["persons/mediapipe", "keypoints/mediapipe"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, examples_dir) -> Path:
    """Two example images plus a zero-byte 'image' that must end in quarantine (two shards of two)."""
    folder = tmp_path_factory.mktemp("beam-inputs") / "images"
    folder.mkdir()
    for src in sorted(p for p in examples_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:2]:
        shutil.copy(src, folder / src.name)
    (folder / "broken.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs, pearl_cache, job_config):
    """The same job on the loop runner and on Beam's DirectRunner."""
    root = tmp_path_factory.mktemp("beam-vs-loop")
    loop = run_job(job_config([inputs], root / "loop", stages=STAGES))
    beam = annotate_beam.run_beam_job(job_config([inputs], root / "beam", stages=STAGES), DIRECT)
    return root, loop, beam


@pytest.mark.slow
def test_beam_writes_the_same_shards_as_the_loop(runs, inputs, file_hashes) -> None:
    root, loop, beam = runs
    loop_out, beam_out = root / "loop", root / "beam"
    for name in ("manifest.json", "report.json", "report.html"):
        assert (beam_out / name).is_file()
    hashes = file_hashes(beam_out)
    assert hashes == file_hashes(loop_out)  # tar, Parquet and quarantine files, byte for byte
    n_images = len(list(inputs.iterdir()))
    assert sum(1 for k in hashes if k.startswith("wds/")) == (n_images + 1) // 2
    beam_rows, loop_rows = read_parquet(beam_out), read_parquet(loop_out)
    assert beam_rows.schema == loop_rows.schema and beam_rows.num_rows == loop_rows.num_rows > 0
    assert json.dumps(beam_rows.to_pylist()) == json.dumps(loop_rows.to_pylist())  # NaN-aware: NaN prints as NaN
    for stats in sorted((beam_out / "stats").glob("*.json")):
        mine, theirs = json.loads(stats.read_text()), json.loads((loop_out / "stats" / stats.name).read_text())
        mine["timings"] = theirs["timings"] = None
        assert mine == theirs
    manifest = json.loads((beam_out / "manifest.json").read_text())["splits"]["train"]
    assert manifest["config_hash"] == json.loads((loop_out / "manifest.json").read_text())["splits"]["train"][
        "config_hash"]
    assert beam["totals"] == loop["totals"]
    assert beam["run"]["runner"] == "beam" and beam["run"]["shards_committed"] == beam["totals"]["shards"]
    stages = beam["throughput"]["stages"]
    assert stages["load"]["rows_in"] == n_images  # Beam metrics carry the stage clock
    assert set(stages) == set(loop["throughput"]["stages"])
    assert not (beam_out / ".pearl-lock.json").exists()


@pytest.mark.slow
def test_beam_quarantines_the_broken_file(runs) -> None:
    root, _, beam = runs
    rows = read_quarantine(str(root / "beam")).to_pylist()
    assert [(r["sample_key"], r["stage"]) for r in rows] == [("images/broken.jpg", "load")]
    assert beam["totals"]["quarantined"] == 1
    assert "broken.jpg" not in {r["sample_key"] for r in read_parquet(root / "beam").to_pylist()}


@pytest.mark.slow
def test_beam_resume_skips_committed_shards(runs, inputs, job_config, file_hashes) -> None:
    root, _, beam = runs
    before = file_hashes(root / "beam", ("wds", "parquet", "quarantine", "stats"))
    report = annotate_beam.run_beam_job(job_config([inputs], root / "beam", stages=STAGES), DIRECT)
    assert report["run"]["shards_skipped"] == beam["run"]["shards_total"]
    assert report["run"]["shards_committed"] == 0 and report["totals"] == beam["totals"]
    assert file_hashes(root / "beam", ("wds", "parquet", "quarantine", "stats")) == before


def test_cli_dry_run_passes_beam_options_through(inputs, pearl_cache, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = annotate_beam.main(["--input", str(inputs), "--out", str(out), "--dry-run", "--runner", "FlinkRunner",
                               "--flink_master", "localhost:8081", "--images-per-shard", "3",
                               "--stages", ",".join(STAGES)])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "--runner=FlinkRunner --flink_master localhost:8081" in printed
    n_images = len(list(inputs.iterdir()))
    assert "keypoints/mediapipe" in printed and f"shards: {(n_images + 2) // 3} of up to 3" in printed
    assert "runner beam," in printed and "runner ray" not in printed


def test_cli_refuses_a_bad_config(inputs, tmp_path, caplog) -> None:
    out = str(tmp_path / "o")
    assert annotate_beam.main(["--input", str(inputs), "--out", out, "--stages", "keypoints/mediapipe"]) == 2
    assert "must start with a persons stage" in caplog.text
    assert annotate_beam.main(["--input", str(tmp_path / "missing"), "--out", out]) == 2
    assert "does not exist" in caplog.text and not (tmp_path / "o").exists()
