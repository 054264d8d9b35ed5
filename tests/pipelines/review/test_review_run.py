"""The review's data side on a synthetic run: pages and counts, records and crops against the shards, the
quarantine view, decisions in the sidecar Parquet, overlays, body-model hash warnings, stats."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas
from pipelines.io.shards import iter_wds, read_parquet
from pipelines.review.data import ReviewRun, RunError
from pipelines.review.decisions import DecisionStore
from pipelines.review.query import Condition, PersonQuery, QuarantineQuery


@pytest.fixture(scope="module")
def review(sample_run):
    run = ReviewRun(sample_run.out)
    yield run
    run.close()


@pytest.fixture(scope="module")
def records(sample_run):
    """Every record of the run, read with the shard reader, by key; crops alongside."""
    out = {}
    for tar in sorted((sample_run.out / "wds").glob("*.tar")):
        for sample in iter_wds([str(tar)]):
            record = schemas.members_to_record(sample)
            out[record["key"]] = (record, sample.get("crop.jpg"))
    return out


def test_counts_splits_and_pages(review, sample_run, records):
    assert review.count() == len(sample_run.keys) == len(records) == 12
    assert review.splits() == ["train", "val"]
    page = review.page(PersonQuery(), limit=5)
    assert page["total"] == 12 and len(page["rows"]) == 5 and page["decisions"] == {"undecided": 12}
    seen = [r["key"] for off in range(0, 12, 5) for r in review.page(PersonQuery(), offset=off, limit=5)["rows"]]
    assert seen == sorted(records)  # pages cover every person once, in key order
    val = review.page(PersonQuery(splits=("val",)))
    assert val["total"] == sum(r["split"] == "val" for r, _ in records.values()) > 0
    no_face = review.page(PersonQuery(conditions=(Condition("has_face", "false"),)))
    assert {r["key"] for r in no_face["rows"]} == {k for k, (r, _) in records.items() if not r["has_face"]}
    with pytest.raises(ValueError, match="limit"):
        review.page(PersonQuery(), limit=0)


def test_sorting_by_a_quality_field_matches_the_records(review, records):
    rows = review.page(PersonQuery(sort="quality_final_loss", descending=True))["rows"]
    values = [float(records[r["key"]][0]["quality_final_loss"]) for r in rows]
    measured = [v for v in values if v == v]
    assert len(measured) == 11 and measured == sorted(measured, reverse=True)
    assert rows[0]["quality_final_loss"] == pytest.approx(measured[0])
    assert rows[-1]["quality_final_loss"] is None  # NaN (the person without a body) last, sent as null


def test_record_and_crop_equal_the_shards(review, records):
    for key, (record, crop) in records.items():
        got = review.record(key)
        for name in schemas.FIELD_NAMES:
            if schemas.field(name).dtype == "str":
                assert got[name] == record[name], name
            else:
                np.testing.assert_array_equal(got[name], record[name], err_msg=name)
        assert got["filename"].endswith(".parquet")
        assert review.crop_jpeg(key) == crop and crop[:2] == b"\xff\xd8"
    assert review.record("no/such.jpg/p00") is None
    assert review.crop_jpeg("no/such.jpg/p00") is None
    partial = review.record(next(iter(records)), ["has_body", "kp2d_wholebody"])
    assert set(partial) == {"key", "has_body", "kp2d_wholebody", "filename"}


def test_quarantine_view(review, sample_run):
    page = review.quarantine_page(QuarantineQuery())
    assert page["total"] == 2 and {r["key"] for r in page["rows"]} == set(sample_run.quarantined)
    assert page["stages"] == {"quality": 2} and page["reasons"] == {"quality: RejectedError": 2}
    assert all(r["split"] == "train" and "reprojection" in r["reason"] for r in page["rows"])
    assert review.quarantine_page(QuarantineQuery(reason="0.40"))["total"] == 1
    assert review.quarantine_page(QuarantineQuery(stage="keypoints"))["total"] == 0


def test_decisions_go_to_the_sidecar_and_shards_stay(run_copy):
    before = {p.name: p.read_bytes() for p in (run_copy / "parquet").iterdir()}
    review = ReviewRun(run_copy, reviewer="ada")
    keys = [r["key"] for r in review.page(PersonQuery(), limit=3)["rows"]]
    review.decide(keys[0], "accept", "good fit")
    review.decide(keys[1], "reject")
    review.decide(keys[1], "flag", "hands?")  # the latest decision wins
    review.decide(keys[2], "accept")
    review.decide(keys[2], "clear")
    with pytest.raises(KeyError, match="no person"):
        review.decide("no/such.jpg/p00", "accept")
    with pytest.raises(ValueError, match="decision"):
        review.decide(keys[0], "maybe")
    path = run_copy / "review" / "decisions.parquet"
    table = pq.read_table(path)
    assert table.column_names == ["key", "decision", "note", "time", "reviewer"]
    rows = table.to_pylist()
    assert [(r["key"], r["decision"], r["note"], r["reviewer"]) for r in rows] == [
        (keys[0], "accept", "good fit", "ada"), (keys[1], "flag", "hands?", "ada")]
    assert all(r["time"].tzinfo is not None and r["time"] <= dt.datetime.now(dt.timezone.utc) for r in rows)
    assert sorted(p.name for p in path.parent.iterdir()) == ["decisions.parquet"]  # no temporary left
    assert {p.name: p.read_bytes() for p in (run_copy / "parquet").iterdir()} == before
    page = review.page(PersonQuery(decisions=("accept", "flag")))
    assert {r["key"]: r["decision"] for r in page["rows"]} == {keys[0]: "accept", keys[1]: "flag"}
    assert review.page(PersonQuery())["decisions"] == {"accept": 1, "flag": 1, "undecided": 10}
    review.close()
    again = ReviewRun(run_copy)  # a restarted server sees them
    assert again.page(PersonQuery(decisions=("undecided",)))["total"] == 10
    again.close()


def test_two_stores_on_one_run_keep_each_others_decisions(run_copy):
    import fsspec

    fs = fsspec.filesystem("file")
    a, b = DecisionStore(fs, str(run_copy), "a"), DecisionStore(fs, str(run_copy), "b")
    a.set("k1", "accept")
    b.set("k2", "reject")
    a.set("k3", "flag")
    assert set(DecisionStore(fs, str(run_copy)).all()) == {"k1", "k2", "k3"}


def test_not_a_run_is_refused(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        ReviewRun(tmp_path / "missing")
    with pytest.raises(RunError, match="manifest.json"):
        ReviewRun(tmp_path)


def test_overlay_draws_the_mesh_where_the_person_is(review, records, kit_dir):
    from pipelines.review.overlay import MeshModel, region_intrinsics, render_overlay, to_region

    key = next(k for k, (r, _) in records.items() if r["has_body"])
    record, crop = records[key]
    model = MeshModel(str(kit_dir))
    plain = np.asarray(render_overlay(record, crop, model, size=128, mesh=False, keypoints=False), np.float32)
    meshed = np.asarray(render_overlay(record, crop, model, size=128, keypoints=False), np.float32)
    changed = np.abs(meshed - plain).sum(-1) > 30
    # the sample run's crop is the same body rendered over a backdrop: where the overlay changed the photo is
    # where the person is (the backdrop is a vertical gradient, so a row's pixels are equal off the person)
    person = np.abs(plain - plain[:, :1]).sum(-1) > 30
    overlap = (changed & person).sum() / max(changed.sum(), 1)
    assert changed.sum() > 300 and overlap > 0.9
    # camera and keypoints map into the output the same way
    k = np.asarray(record["cam_intrinsics"], np.float64)
    region = np.asarray(record["crop_xyxy"], np.float64)
    point = np.array([0.1, -0.2, 3.0])
    uv = (k @ point)[:2] / point[2]
    k2 = region_intrinsics(k, region, 128, 128)
    np.testing.assert_allclose(to_region(uv, region, 128, 128), (k2 @ point)[:2] / point[2], atol=1e-9)
    hands_only = np.asarray(render_overlay(record, crop, model, size=128, keypoints=False, parts=["hands"]), np.float32)
    assert 0 < (np.abs(hands_only - plain).sum(-1) > 30).sum() < changed.sum() / 5


def test_person_without_body_gets_keypoints_only(review, records, kit_dir):
    from pipelines.review.overlay import MeshModel, render_overlay

    key = next(k for k, (r, _) in records.items() if not r["has_body"])
    record, crop = records[key]
    model = MeshModel(str(kit_dir))
    assert model.vertices(record) is None
    plain = np.asarray(render_overlay(record, crop, model, size=96, mesh=False, keypoints=False))
    assert np.array_equal(np.asarray(render_overlay(record, crop, model, size=96, keypoints=False)), plain)
    assert not np.array_equal(np.asarray(render_overlay(record, crop, model, size=96)), plain)  # keypoints drawn


def test_hash_warning_when_the_body_models_differ(run_copy, kit_dir):
    from pipelines.review.app import hash_warnings

    review = ReviewRun(run_copy)
    assert hash_warnings(review, str(kit_dir)) == []
    manifest = json.loads((run_copy / "manifest.json").read_text())
    first = sorted(manifest["splits"]["train"]["asset_hashes"])[0]
    for entry in manifest["splits"].values():
        entry["asset_hashes"][first] = "0" * 64
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    warnings = hash_warnings(ReviewRun(run_copy), str(kit_dir))
    assert len(warnings) == 1 and first in warnings[0] and "--body-models" in warnings[0]


def test_stats_figures_match_the_records(review, records, tmp_path):
    from pipelines.review.stats import compute_stats, write_stats

    stats = compute_stats(review)
    values = np.array([float(r["quality_reproj_px_body"]) for r, _ in records.values()])
    body = stats["fields"]["quality_reproj_px_body"]
    assert body["measured"] == np.isfinite(values).sum() == 11
    assert body["mean"] == pytest.approx(np.nanmean(values), rel=1e-4)
    assert body["max"] == pytest.approx(np.nanmax(values), rel=1e-4)
    assert body["p50"] == pytest.approx(np.nanpercentile(values, 50), rel=1e-4)
    pose = [np.linalg.norm(r["smplx_body_pose"]) for r, _ in records.values() if r["has_body"]]
    assert stats["fields"]["norm.smplx_body_pose"]["mean"] == pytest.approx(np.mean(pose), rel=1e-4)
    assert stats["fields"]["norm.smplx_body_pose"]["measured"] == len(pose)
    total = next(e for e in stats["acceptance"] if e["source"] == "(all)")
    assert (total["written"], total["quarantined"]) == (12, 2)
    assert stats["quarantine_reasons"] == {"quality: RejectedError": 2}
    assert set(stats["throughput"]["stages"]) == {"render", "write"} and stats["throughput"]["shards"] == 4
    written = write_stats(review, str(tmp_path / "stats"))
    names = sorted(p.rsplit("/", 1)[-1] for p in written)
    assert names == sorted(["stats.md", "stats.json", "quality.png", "confidence.png", "parameters.png",
                            "acceptance.png", "throughput.png"])
    for name in names:
        data = (tmp_path / "stats" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else len(data) > 100
    markdown = (tmp_path / "stats" / "stats.md").read_text()
    assert "| quality_reproj_px_body | quality | body | 11 |" in markdown
    assert "## Acceptance by source" in markdown and "| (all) | 12 | 2 | 85.71 |" in markdown


def test_shard_reader_agrees_on_the_run(sample_run, review):
    assert read_parquet(sample_run.out).num_rows == review.count()
