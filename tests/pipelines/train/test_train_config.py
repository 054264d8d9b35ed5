"""The trainer's config: files (YAML, TOML), flags and --set overriding them, unknown keys refused by name."""

from __future__ import annotations

import pytest
import yaml

from pipelines import cli
from pipelines.train.config import TrainConfigError, config_from_dict, load_saved_config, save_config


def test_yaml_and_toml_files_with_flags_on_top(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("out: a\nmodel: {preset: pear-tiny}\ndata:\n  train: [{urls: x.tar, weight: 2}]\n"
                                       "  batch_size: 4\noptim: {lr: 1.0e-3}\n")
    (tmp_path / "run.toml").write_text('out = "a"\n[model]\npreset = "pear-tiny"\n[data]\nbatch_size = 4\n'
                                       '[[data.train]]\nurls = "x.tar"\nweight = 2.0\n[optim]\nlr = 1e-3\n')
    for name in ("run.yaml", "run.toml"):
        assert cli.main(["train", "--config", str(tmp_path / name), "--dry-run", "--batch-size", "8", "--out", "b",
                         "--set", "optim.warmup_steps=7", "--set", "data.augment.flip_prob=0"]) == 0
        data = yaml.safe_load(capsys.readouterr().out)
        assert data["out"] == "b" and data["data"]["batch_size"] == 8 and data["optim"]["lr"] == 1e-3
        assert data["optim"]["warmup_steps"] == 7 and data["data"]["augment"]["flip_prob"] == 0
        assert data["data"]["train"] == [{"urls": "x.tar", "weight": 2.0}] and data["model"]["preset"] == "pear-tiny"


@pytest.mark.parametrize("text, error", [
    ("optim: {lrr: 1}", "unknown option.*lrr"),
    ("data: {augment: {flip: 0.5}}", "unknown option.*flip"),
    ("model: {overrides: {head: {depht: 2}}}", "unknown key.*depht"),
    ("model: {preset: pear-huge}", "pear-huge"),
    ("data: {gates: {body_off: 'quality_nope > 1'}}", "quality_nope"),
    ("data: {batch_size: 0}", "batch_size must be >= 1"),
])
def test_bad_files_are_refused_by_name(tmp_path, caplog, text, error):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["train", "--config", str(path), "--dry-run"]) == 2
    assert any(__import__("re").search(error, r.getMessage()) for r in caplog.records), caplog.text


def test_set_refuses_unknown_keys_and_bad_syntax(caplog):
    assert cli.main(["train", "--dry-run", "--set", "trainer.max_stepz=3"]) == 2
    assert "max_stepz" in caplog.text
    assert cli.main(["train", "--dry-run", "--set", "trainer.max_steps"]) == 2
    assert "KEY=VALUE" in caplog.text


def test_saved_config_reads_back(tmp_path):
    config = config_from_dict({"out": "o", "model": {"preset": "pear-tiny", "overrides": {"num_flame_expression": 30}},
                               "data": {"train": ["a.tar"]}})
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["resolved"]["num_flame_expression"] == 30
    assert load_saved_config(tmp_path / "config.yaml") == config
    with pytest.raises(TrainConfigError, match="no such|does not exist"):
        load_saved_config(tmp_path / "missing.yaml")


def _field_paths(cls, prefix=""):
    import dataclasses

    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            yield from _field_paths(type(default), f"{path}.")
        else:
            yield path


def test_docs_explain_every_setting_and_flag():
    """No config key or flag the docs do not explain (docs/training.md)."""
    import argparse
    from pathlib import Path

    from pipelines.train.config import TrainConfig

    text = (Path(__file__).resolve().parents[3] / "docs" / "training.md").read_text()
    missing = [p for p in _field_paths(TrainConfig) if f"`{p}`" not in text
               and not (p.startswith(("loss.", "data.gates.")) and p.split(".")[-1] in text)]
    assert not missing, missing
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "evaluate", "predict", "corpus"):
        sub = subparsers.choices[name]
        actions = list(sub._actions)
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                actions += [a for p in action.choices.values() for a in p._actions]
        flags = {o for a in actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        undocumented = sorted(f for f in flags if f not in text)
        assert not undocumented, (name, undocumented)
