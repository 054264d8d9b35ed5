"""Fixtures of the trainer's tests: a small known-answer corpus (``pearl corpus synthesize`` on the synthetic
kit), the kit's shape mirror and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus(kit_dir, tmp_path_factory) -> Path:
    """24 training persons in 3 shards and 8 held-out persons in one, 96 px crops."""
    from pipelines.train.corpus import CorpusConfig, synthesize

    out = tmp_path_factory.mktemp("corpus") / "run"
    synthesize(out, kit_dir, CorpusConfig(count=24, val_count=8, per_shard=8, crop_size=96, crop_scale=1.6, seed=5))
    return out


@pytest.fixture(scope="session")
def mirror(kit_dir):
    from model.ehm import EHM
    from model.flip import ShapeMirror

    return ShapeMirror.from_ehm(EHM.from_dir(kit_dir))


def tiny_config(out: Path, corpus: Path, kit_dir: Path, **sections) -> dict:
    """Plain data of a tiny training run on ``corpus`` (sections are merged in)."""
    data = {
        "out": str(out), "body_models": str(kit_dir), "seed": 0, "model": {"preset": "pear-tiny"},
        "data": {"train": [{"urls": str(corpus / "wds" / "train-{000000..000002}.tar")}],
                 "val": [str(corpus / "wds" / "val-000000.tar")], "batch_size": 4, "num_workers": 0,
                 "shuffle_buffer": 8, "epoch_size": 16, "val_samples": 8, "stats_samples": 24},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "trainer": {"max_steps": 6, "val_every_n_steps": 3, "checkpoint_every_n_steps": 3, "log_every_n_steps": 1,
                    "progress_bar": False, "torch_threads": 1},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


@pytest.fixture(scope="session")
def make_config():
    """:func:`tiny_config`."""
    return tiny_config
