"""Shared fixtures: tiny synthetic assets made on the fly, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory) -> Path:
    """A complete synthetic body-model kit (official formats and layouts), made once per session."""
    from model.assets.synthetic import synthesize_kit

    out = tmp_path_factory.mktemp("kit")
    synthesize_kit(out, seed=0)
    return out
