"""The ``pearl`` command: subcommands listed, exit codes, and the body-model demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipelines import cli


def test_help_lists_every_registered_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "no-such-command" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "assets" in out.stdout


def test_assets_check_passes_on_the_kit(kit_dir):
    assert cli.main(["assets", "check", str(kit_dir)]) == 0


def test_demo_writes_posed_meshes(kit_dir, tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--body-models", str(kit_dir), "--out", str(out), "--count", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    objs = sorted(out.glob("body_*.obj"))
    assert len(objs) == 2
    lines = objs[0].read_text().splitlines()
    verts = np.array([[float(v) for v in line.split()[1:4]] for line in lines if line.startswith("v ")])
    faces = [line for line in lines if line.startswith("f ")]
    assert verts.shape == (10475, 3)  # EHM keeps SMPL-X topology
    assert len(faces) > 10000
    assert np.isfinite(verts).all()
    # a posed person, not a point cloud: plausible height, and the summary agrees with the mesh
    height = float(np.ptp(verts[:, 1]))
    assert 1.0 < height < 2.5
    assert summary["body_model_kit"] == "synthetic"
    assert [b["mesh"] for b in summary["bodies"]] == [p.name for p in objs]
    assert summary["bodies"][0]["height_m"] == pytest.approx(height, abs=1e-3)


def test_demo_refuses_a_folder_that_fails_the_check(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    assert cli.main(["demo", "--body-models", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert cli.main(["demo", "--body-models", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "summary.json").exists()
