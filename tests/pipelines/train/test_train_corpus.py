"""pearl corpus synthesize: shards like an annotation run's, with exact answers and the annotate job's crops."""

from __future__ import annotations

import json

import numpy as np
import pytest

import schemas
from annotators.images import crop_person
from pipelines import cli
from pipelines.io.shards import iter_wds, read_parquet


def test_the_corpus_is_a_run_with_known_answers(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"} and manifest["splits"]["train"]["shards"] == 3
    table = read_parquet(corpus)
    assert table.num_rows == 32 and set(table.column("split").to_pylist()) == {"train", "val"}
    records = [schemas.members_to_record(s) for s in iter_wds(str(corpus / "wds" / "val-000000.tar"))]
    assert len(records) == 8 and all(r["has_body"] and r["has_face"] and r["has_hands"].all() for r in records)
    assert json.loads(records[0]["backends"]) == {"corpus": "synthesize@1"} and records[0]["body_model_kit"] == "synthetic"
    for r in records:
        w, h = int(r["image_width"]), int(r["image_height"])
        # the crop region is the annotate job's: crop_person's square of crop_scale box sides
        _, to_image = crop_person(np.zeros((h, w, 3), np.uint8), r["bbox_xyxy"], scale=1.6, out_size=96)
        x0, y0 = to_image[:, 2]
        assert np.allclose(r["crop_xyxy"], [x0, y0, x0 + to_image[0, 0] * 96, y0 + to_image[1, 1] * 96], atol=1e-3)
        kp = r["kp2d_wholebody"]
        outside = (kp[:, 0] < 0) | (kp[:, 0] > w) | (kp[:, 1] < 0) | (kp[:, 1] > h)
        assert (kp[outside, 2] == 0).all() and (kp[~outside, 2] >= 0.7).all()
        assert r["quality_reproj_px_body"] < 3.0  # the exact body against its noisy keypoints
    sample = next(iter_wds(str(corpus / "wds" / "val-000000.tar"), rgb=True))
    assert sample["crop.jpg"].shape == (96, 96, 3)


def test_command_refuses_an_existing_run(corpus, caplog):
    assert cli.main(["corpus", "synthesize", "--out", str(corpus), "--count", "2"]) == 2
    assert "already holds a run" in caplog.text
    with pytest.raises(SystemExit):
        cli.main(["corpus", "synthesize", "--out", str(corpus)])  # --count is required
