"""The three curator commands through ``pearl``: ``review`` serves the page from the command line,
``stats`` writes its files, ``filter`` writes a shard set; bad input exits with status 2. Also the review
and the filter over S3 (a moto server)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.review.sample_run import start_review_server


def test_commands_are_registered(capsys):
    for name in ("review", "stats", "filter"):
        assert name in cli.COMMANDS
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        assert "OUT" in capsys.readouterr().out


def test_stats_command_writes_its_files(sample_run, tmp_path):
    assert cli.main(["stats", str(sample_run.out), "--out", str(tmp_path / "s")]) == 0
    assert {p.name for p in (tmp_path / "s").iterdir()} >= {"stats.md", "stats.json", "quality.png"}
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["persons"] == 12 and stats["quarantined"] == 2


def test_filter_command(sample_run, tmp_path, capsys):
    assert cli.main(["filter", str(sample_run.out), "--where", "split = 'val'", "--out", str(tmp_path / "val")]) == 0
    assert "6 persons" in capsys.readouterr().out
    assert json.loads((tmp_path / "val" / "manifest.json").read_text())["splits"].keys() == {"val"}
    assert cli.main(["filter", str(sample_run.out), "--where", "nope > 1", "--out", str(tmp_path / "bad")]) == 2
    assert cli.main(["stats", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_review_command_serves_the_run(sample_run):
    proc, url = start_review_server([str(sample_run.out), "--port", "0", "--no-mesh"], Path(__file__).resolve().parents[3])
    try:
        assert url is not None and url.startswith("http://127.0.0.1:")
        info = json.loads(urllib.request.urlopen(url + "api/info", timeout=30).read())
        assert info["persons"] == 12 and info["quarantined"] == 2 and info["mesh"] is False
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "/static/review.js" in page and "http" not in page.split("<body>")[1].split("</body>")[0]
        key = sample_run.keys[0].replace("/", "%2F")
        thumb = urllib.request.urlopen(f"{url}api/overlay.jpg?key={key}", timeout=30)
        assert thumb.headers["Content-Type"] == "image/jpeg" and thumb.read()[:2] == b"\xff\xd8"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_review_and_filter_over_s3(sample_run, tmp_path, s3):
    from pipelines.io.shards import read_parquet
    from pipelines.review.data import ReviewRun
    from pipelines.review.filter import filter_run
    from pipelines.review.query import PersonQuery

    fs = s3
    fs.mkdir("review-test")
    fs.put(str(sample_run.out), "review-test/run", recursive=True)
    review = ReviewRun("s3://review-test/run")
    page = review.page(PersonQuery(sort="quality_final_loss"), limit=4)
    assert page["total"] == 12 and review.quarantine_count() == 2
    key = page["rows"][0]["key"]
    local = ReviewRun(sample_run.out)
    assert review.crop_jpeg(key) == local.crop_jpeg(key)
    review.decide(key, "accept", "over s3")
    assert fs.exists("review-test/run/review/decisions.parquet")
    review.close()
    result = filter_run("s3://review-test/run", "s3://review-test/accepted", None, decisions="accepted")
    assert result.persons == 1
    assert read_parquet("s3://review-test/accepted").column("key").to_pylist() == [key]
    local.close()
