"""The run report keeps every failure's reason, and shows the written persons' quality fields and flags."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from pipelines.annotation import config as cfg
from pipelines.annotation.job import run_job


@pytest.mark.slow
def test_report_keeps_reasons_and_shows_quality(labelled_examples, tmp_path: Path, job_config) -> None:
    config = job_config([labelled_examples], tmp_path / "out", images_per_shard=4)
    config.source.limit = 2
    config.stages = [cfg.StageSpec(n) for n in ("persons", "keypoints", "body", "hands", "face")] + [
        cfg.StageSpec("quality/default", options={"max_reproj_norm_body": 1e-9, "silhouette": False})]
    report = run_job(config)
    totals = report["totals"]
    assert totals["quarantined"] == 2 and totals["quarantined_by_reason"] == {"quality: body reprojection": 2}
    reasons = [q["reason"] for q in report["quarantine_examples"]]
    assert len(reasons) == 2 and all(r.startswith("body reprojection: ") and "> max_reproj_norm_body 1e-09" in r
                                     for r in reasons)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "quality: body reprojection" in page and html.escape(reasons[0]) in page
    # a second run, all persons kept: quality histograms and flag counts of what was written
    config = job_config([labelled_examples], tmp_path / "kept", images_per_shard=4)
    config.source.limit = 2
    config.stages = [cfg.StageSpec(n) for n in ("persons", "keypoints", "body", "hands", "face")] + [
        cfg.StageSpec("quality/default", options={"max_reproj_norm_body": None, "max_reproj_norm_face": None,
                                                  "max_reproj_norm_hands": None, "silhouette": False})]
    kept = run_job(config)["totals"]
    body = kept["quality_histograms"]["quality_reproj_norm_body"]
    assert kept["persons"] == 2 and sum(body["counts"]) + body["nan"] == 2 and sum(body["counts"]) == 2
    assert kept["quality_flags"]["BODY_FROM_KEYPOINTS"] == 2  # labels have boxes only: bodies fitted to keypoints
    page = (tmp_path / "kept" / "report.html").read_text()
    assert "quality histograms" in page and "BODY_FROM_KEYPOINTS" in page
    assert json.loads((tmp_path / "kept" / "report.json").read_text())["totals"]["quality_flags"] == kept["quality_flags"]
