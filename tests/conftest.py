"""Shared fixtures: tiny synthetic assets made on the fly, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

# One math thread per process: the suite runs MediaPipe, torch fits and Ray workers side by side on
# small machines, where oversubscribed thread pools made fits up to 10x slower. Ray workers inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory) -> Path:
    """A complete synthetic body-model kit (official formats and layouts), made once per session."""
    from model.assets.synthetic import synthesize_kit

    out = tmp_path_factory.mktemp("kit")
    synthesize_kit(out, seed=0)
    return out
