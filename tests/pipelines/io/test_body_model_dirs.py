"""Body-model folders of the job and the demo: a user's folder is checked and only read (also when it holds
a synthetic kit); the cached synthetic kit is written once, also by concurrent makers."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from model.assets import synthetic
from model.assets.catalog import MARKER_FILE
from model.assets.check import asset_hashes
from pipelines.annotation.job import run_job
from annotators.base import Stage, StageContext
from pipelines.annotation.runner import StageAdapter
from pipelines.commands import annotate as command
from pipelines.io import body_models as bm


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of everything under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


class Passthrough(Stage):
    """A stage that returns its batch (the adapter's own behaviour is under test)."""

    def __call__(self, batch: dict) -> dict:
        return batch


@pytest.fixture
def fake_synthesize(monkeypatch):
    """Replace ``synthesize_kit`` by a fast writer of a marked kit; returns the folders it was called on.
    Each call writes ``payload`` naming its call number, then the marker (last, as the real one)."""
    calls: list[Path] = []

    def write(out: Path, seed: int = 0, *, before_marker=None) -> Path:
        calls.append(Path(out))
        (Path(out) / "payload").write_text(str(len(calls)))
        if before_marker is not None:
            before_marker()
        marker = {"kit": "pearl-synthetic", "kit_version": synthetic.KIT_VERSION, "seed": seed}
        (Path(out) / MARKER_FILE).write_text(json.dumps(marker))
        return Path(out)

    monkeypatch.setattr(synthetic, "synthesize_kit", write)
    return calls


def test_job_uses_a_users_synthetic_kit_in_place(kit_dir, labelled_examples, tmp_path, job_config,
                                                 monkeypatch) -> None:
    # regression: a folder made by `pearl assets synthesize` was rebuilt by each stage adapter and renamed
    # onto itself (OSError: Directory not empty)
    monkeypatch.setenv("PEARL_CACHE", str(tmp_path / "cache"))
    before = snapshot(kit_dir)
    config = job_config([labelled_examples], tmp_path / "out", stages=["persons"])
    config.body_models = str(kit_dir)
    report = run_job(config)
    assert snapshot(kit_dir) == before
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["train"]
    assert entry["body_model_kit"] == "synthetic" and entry["asset_hashes"] == asset_hashes(kit_dir)
    assert report["totals"]["persons"] == report["totals"]["samples"] > 0
    assert not (tmp_path / "cache").exists()  # the cache kit was neither needed nor made


def test_adapter_reads_a_users_folder_and_makes_only_the_cache_kit(kit_dir, tmp_path, fake_synthesize) -> None:
    before = snapshot(kit_dir)
    StageAdapter(Passthrough, "quality/passthrough", {},
                 StageContext(body_models=str(kit_dir), body_model_kit="synthetic"))
    assert snapshot(kit_dir) == before and fake_synthesize == []
    cache = tmp_path / "kits" / "synthetic"  # a worker node without the driver's cache kit
    adapter = StageAdapter(Passthrough, "quality/passthrough", {},
                           StageContext(body_models=str(cache), body_models_cached=True))
    assert bm.is_cached_kit(cache) and len(fake_synthesize) == 1
    batch = {"sample_key": np.array(["a"], dtype=object)}
    assert list(adapter(batch)["sample_key"]) == ["a"]


def test_a_folder_that_fails_the_check_is_refused_and_left_alone(labelled_examples, tmp_path, caplog) -> None:
    models = tmp_path / "models"
    (models / "smplx").mkdir(parents=True)
    (models / "smplx" / "SMPLX_NEUTRAL.npz").write_bytes(b"not an npz")
    before = snapshot(models)
    with pytest.raises(bm.AssetsCheckError) as err:
        bm.resolve_body_models(str(models))
    message = str(err.value)
    assert "WRONG    smplx/SMPLX_NEUTRAL.npz" in message and "MISSING  mano/MANO_RIGHT.pkl" in message
    assert "OK " not in message and snapshot(models) == before
    with pytest.raises(bm.BodyModelsError, match="no such folder"):
        bm.resolve_body_models(str(tmp_path / "missing"))
    # the command line: refused with status 2 before any output is made, also in a dry run
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--input", str(labelled_examples), "--out", str(tmp_path / "o"),
                              "--body-models", str(models), "--dry-run"])
    assert command.run(args) == 2 and "failed `pearl assets check`" in caplog.text
    args = parser.parse_args(["--input", str(labelled_examples), "--out", str(tmp_path / "o"),
                              "--body-models", str(tmp_path / "missing")])
    assert command.run(args) == 2 and "no such folder" in caplog.text
    assert not (tmp_path / "o").exists()


def test_environment_names_the_folder(kit_dir, monkeypatch) -> None:
    monkeypatch.setenv(bm.ENV_BODY_MODELS, str(kit_dir))
    assert bm.resolve_body_models(None) == bm.BodyModels(str(kit_dir.resolve()), "synthetic", cached=False)
    assert bm.resolve_body_models(bm.SYNTHETIC, create=False).cached


def test_cache_kit_is_made_once_by_concurrent_makers(tmp_path, monkeypatch, fake_synthesize) -> None:
    monkeypatch.setenv("PEARL_CACHE", str(tmp_path / "cache"))
    path = bm.cached_kit_dir()
    assert path == tmp_path / "cache" / "kits" / f"synthetic-v{synthetic.KIT_VERSION}-seed0"
    both_built = threading.Barrier(2)
    write = synthetic.synthesize_kit
    monkeypatch.setattr(synthetic, "synthesize_kit",
                        lambda out, seed=0: write(out, seed, before_marker=lambda: both_built.wait(timeout=30)))
    results, errors = [], []

    def make() -> None:
        try:
            results.append(bm.cached_kit())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    makers = [threading.Thread(target=make) for _ in range(2)]
    for t in makers:
        t.start()
    for t in makers:
        t.join(timeout=60)
    assert errors == [] and results == [path, path] and len(fake_synthesize) == 2  # both built, one rename won
    assert bm.is_cached_kit(path) and (path / "payload").read_text() in ("1", "2")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the loser's copy is gone
    monkeypatch.setattr(synthetic, "synthesize_kit", write)
    assert bm.resolve_body_models(None) == bm.BodyModels(str(path), "synthetic", cached=True)
    assert len(fake_synthesize) == 2  # made once, then reused


def test_a_foreign_folder_at_the_cache_path_is_not_replaced(tmp_path, monkeypatch, fake_synthesize) -> None:
    monkeypatch.setenv("PEARL_CACHE", str(tmp_path / "cache"))
    path = bm.cached_kit_dir()
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    with pytest.raises(bm.BodyModelsError, match="delete it"):
        bm.cached_kit()
    old = {"kit": "pearl-synthetic", "kit_version": synthetic.KIT_VERSION + 1, "seed": 0}
    (path / MARKER_FILE).write_text(json.dumps(old))  # a kit of another pearl version
    with pytest.raises(bm.BodyModelsError, match="delete it"):
        bm.cached_kit()
    assert fake_synthesize == [] and (path / "notes.txt").read_text() == "mine"
    shutil.rmtree(path)
    assert bm.cached_kit() == path and len(fake_synthesize) == 1
