"""Fixtures of the review tests: a synthetic run with known answers (``pipelines.review.sample_run``),
written once per session through the shard writer, and a fresh copy of it for tests that record decisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, kit_dir):
    """12 persons in 4 shards over the splits train and val (one without a body, some without a face or a
    hand), 2 quarantined persons; made with the session's synthetic kit."""
    from pipelines.review.sample_run import write_sample_run

    return write_sample_run(tmp_path_factory.mktemp("review") / "run", kit_dir, persons=12, per_shard=3,
                            quarantined=2, splits=("train", "val"), seed=0)


@pytest.fixture
def run_copy(sample_run, tmp_path) -> Path:
    """A copy of :func:`sample_run`'s folder that a test may write decisions into."""
    out = tmp_path / "run"
    shutil.copytree(sample_run.out, out)
    return out
