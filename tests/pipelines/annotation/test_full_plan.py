"""The default plan end to end on the shipped examples: every person written carries a refined EHM
annotation with quality fields, and rejected persons sit in quarantine with their reasons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.io.quarantine import read_quarantine
from pipelines.io.shards import iter_wds, read_parquet
from schemas import QualityFlag

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(annotated_examples):
    return annotated_examples


def test_every_example_person_is_written_or_quarantined_with_a_reason(full_run):
    out, report = full_run
    table = read_parquet(out).to_pandas()
    quarantined = read_quarantine(out)
    assert len(table) + len(quarantined) == 4  # one person per example image
    assert len(table) >= 2
    for row in quarantined.to_pylist():
        assert row["stage"] and row["reason"]
    assert report["totals"]["persons"] == len(table)


def test_written_persons_carry_refined_ehm_and_quality(full_run):
    out, _ = full_run
    table = read_parquet(out).to_pandas()
    for _, row in table.iterrows():
        assert row["has_body"] and row["has_face"]
        assert json.loads(row["backends"]).keys() >= {"body", "hands", "face", "refine", "quality"}
        pose = np.stack(row["smplx_body_pose"]).astype(np.float32)
        assert pose.shape == (21, 3) and np.isfinite(pose).all() and np.abs(pose).max() > 1e-4
        assert np.isfinite(np.stack(row["flame_expression"])).all()
        assert np.isfinite(row["quality_reproj_px_body"]) and row["quality_reproj_px_body"] >= 0
        assert 0.0 <= row["quality_silhouette_iou"] <= 1.0
        assert json.loads(row["quality_loss_terms"])  # refinement ran and reported its terms
        assert row["quality_flags"] & ~int(sum(QualityFlag)) == 0  # only documented bits
        assert row["body_model_kit"] == "synthetic"


def test_every_example_person_gets_face_and_visible_hands(full_run):
    # issue 5's bar: every written example person shows its face; the visible hands (all gloved) are the
    # skier's two and the cameraman's (the right one clears the pose-visibility gate; the left, on the
    # camera, does not). Gloved hands come as pose-only hands: MANO orientation, mean fingers.
    # Grace Hopper's portrait ends at the chest: from the crowd detector's box, MediaPipe places her right
    # wrist (out of frame) on her shoulder, an arm no body reaches, and the quality gate quarantines her by
    # body reprojection rather than writing a body with a wrong arm.
    out, _ = full_run
    table = read_parquet(out).to_pandas()
    table.index = [k.rsplit("/", 1)[-1] for k in table["sample_key"]]
    assert sorted(table.index) == ["astronaut.png", "cameraman.png", "coco_000000000785.jpg"]
    quarantined = {r["sample_key"].rsplit("/", 1)[-1]: r for r in read_quarantine(out).to_pylist()}
    assert list(quarantined) == ["grace_hopper.jpg"]
    assert quarantined["grace_hopper.jpg"]["stage"] == "quality"
    assert quarantined["grace_hopper.jpg"]["reason"].startswith("body reprojection: ")
    assert table["has_face"].all()
    hands = {k: list(v) for k, v in table["has_hands"].items()}
    assert hands == {"astronaut.png": [False, False], "cameraman.png": [False, True],
                     "coco_000000000785.jpg": [True, True]}
    assert not any(np.any(v) for v in table["has_hand_landmarks"])
    for key in ("cameraman.png", "coco_000000000785.jpg"):
        orient = np.stack(table.loc[key, "mano_global_orient"])
        sides = np.array(hands[key])
        assert np.abs(orient[sides]).max() > 0.1  # oriented from the pose, not left at the fill


def test_tar_and_parquet_agree(full_run):
    out, _ = full_run
    table = read_parquet(out).to_pandas().set_index("key")
    samples = list(iter_wds(sorted(str(p) for p in (out / "wds").glob("*.tar"))))
    assert sorted(s["meta.json"]["key"] for s in samples) == sorted(table.index)
    for s in samples:
        assert np.allclose(s["ehm.npz"]["smplx_body_pose"], np.stack(table.loc[s["meta.json"]["key"], "smplx_body_pose"]))
