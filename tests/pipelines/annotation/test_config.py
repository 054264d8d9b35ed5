"""Job config: files, flags, resolution, hashing, --dry-run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotators.base import STAGES, StageResources
from pipelines.annotation import config as cfg
from pipelines.annotation.job import add_arguments, config_from_args

REPO = Path(__file__).resolve().parents[3]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_yaml_and_toml_files_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "source: {inputs: [a, b], video_stride: 5}\n"
        "stages:\n  - persons\n  - name: keypoints/mediapipe\n"
        "    resources: {num_cpus: 0.5, num_actors: 2, num_gpus: 0.25}\n"
        "sink: {out: o, images_per_shard: 8}\nseed: 3\n"
    )
    (tmp_path / "job.toml").write_text(
        'seed = 3\nstages = ["persons", {name = "keypoints/mediapipe", resources = {num_cpus = 0.5, '
        'num_actors = 2, num_gpus = 0.25}}]\n'
        '[source]\ninputs = ["a", "b"]\nvideo_stride = 5\n[sink]\nout = "o"\nimages_per_shard = 8\n'
    )
    a, b = cfg.load_config_file(tmp_path / "job.yaml"), cfg.load_config_file(tmp_path / "job.toml")
    assert a == b
    assert a.source.video_stride == 5 and a.sink.images_per_shard == 8 and a.seed == 3
    assert a.stages[1].resources == StageResources(num_cpus=0.5, num_gpus=0.25, num_actors=2)
    assert a.stages[0] == cfg.StageSpec(name="persons")
    old = tmp_path / "old.yaml"
    old.write_text("stages:\n  - name: persons\n    resources: {batch_size: 4}\n")
    with pytest.raises(cfg.ConfigError, match=r"stages\[0\]\.resources\.batch_size: a stage is called once per shard"):
        cfg.load_config_file(old)


def test_unknown_settings_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("sink: {out: o, shard_size: 3}\n")
    with pytest.raises(cfg.ConfigError, match="shard_size"):
        cfg.load_config_file(tmp_path / "bad.yaml")
    (tmp_path / "bad.ini").write_text("x")
    with pytest.raises(cfg.ConfigError, match="yaml"):
        cfg.load_config_file(tmp_path / "bad.ini")


def test_flags_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "source: {inputs: [a], video_stride: 5}\nsink: {out: o, split: val}\n"
        "stages: [{name: keypoints/mediapipe, resources: {num_actors: 3}}]\n"
    )
    c = config_from_args(_args("--config", str(tmp_path / "job.yaml"), "--input", "x", "y", "--split", "test",
                               "--stages", "persons,keypoints/mediapipe", "--runner", "loop", "--no-progress"))
    assert c.source.inputs == ["x", "y"] and c.source.video_stride == 5  # given flag wins, the rest stays
    assert c.sink.split == "test" and c.sink.out == "o" and c.runner == "loop" and not c.ray.progress_bars
    assert [s.name for s in c.stages] == ["persons", "keypoints/mediapipe"]
    assert c.stages[1].resources.num_actors == 3  # a --stages name keeps the file's settings for it


def test_resolve_checks_and_orders(tmp_path: Path) -> None:
    base = cfg.AnnotateConfig(source=cfg.SourceConfig(inputs=["x"]), sink=cfg.SinkConfig(out="o"))
    resolved = cfg.resolve(base)
    assert [s.annotator for s in resolved.stages] == list(cfg.STAGE_ORDER)  # the whole embedded plan
    assert sum(s.resources.num_cpus for s in resolved.stages) + base.source.load_num_cpus <= 2.0  # fits 2 cores
    assert all("/" in s.name and isinstance(s.resources, StageResources) for s in resolved.stages)
    assert [s.name for s in resolved.stages] == list(cfg.DEFAULT_STAGES)
    short = cfg.resolve(dataclasses.replace(base, stages=[cfg.StageSpec("persons"), cfg.StageSpec("quality/fault")]))
    assert [s.name for s in short.stages] == ["persons/mediapipe", "quality/fault"]  # persons' only backend
    with pytest.raises(cfg.ConfigError, match="order"):
        cfg.resolve(dataclasses.replace(base, stages=[cfg.StageSpec("persons"), cfg.StageSpec("quality/fault"),
                                                      cfg.StageSpec("keypoints/mediapipe")]))
    with pytest.raises(cfg.ConfigError, match="start with a persons"):
        cfg.resolve(dataclasses.replace(base, stages=[cfg.StageSpec("keypoints/mediapipe")]))
    quality = [n for n in STAGES.names() if n.startswith("quality/")]  # quality/fault and the real ones
    defaults = [n for n in quality if getattr(STAGES.get(n), "default_backend", False)]
    spec = [cfg.StageSpec("persons"), cfg.StageSpec("quality")]
    if len(defaults) == 1:
        assert cfg.resolve(dataclasses.replace(base, stages=spec)).stages[1].name == defaults[0]
    else:  # an annotator name must not pick one of several backends at random
        with pytest.raises(cfg.ConfigError, match="backends; name one of"):
            cfg.resolve(dataclasses.replace(base, stages=spec))
    with pytest.raises(cfg.ConfigError, match="unknown stage 'keypoints/nope'"):
        cfg.resolve(dataclasses.replace(base, stages=[cfg.StageSpec("persons"), cfg.StageSpec("keypoints/nope")]))
    with pytest.raises(cfg.ConfigError, match="--input"):
        cfg.resolve(dataclasses.replace(base, source=cfg.SourceConfig()))
    with pytest.raises(cfg.ConfigError, match="split"):
        cfg.resolve(dataclasses.replace(base, sink=cfg.SinkConfig(out="o", split="a-b")))


def test_config_hash_covers_outputs_only() -> None:
    base = cfg.resolve(cfg.AnnotateConfig(source=cfg.SourceConfig(inputs=["x"]), sink=cfg.SinkConfig(out="o")))
    h = cfg.config_hash(base)
    faster = dataclasses.replace(base, stages=[dataclasses.replace(s, resources=StageResources(num_actors=4))
                                               for s in base.stages],
                                 sink=dataclasses.replace(base.sink, out="elsewhere", mode="overwrite"),
                                 ray=cfg.RayConfig(address="auto"), runner="loop")
    assert cfg.config_hash(faster) == h
    assert cfg.config_hash(dataclasses.replace(base, seed=1)) != h
    assert cfg.config_hash(dataclasses.replace(base, sink=dataclasses.replace(base.sink, images_per_shard=3))) != h
    options = {**base.stages[1].options, "face": False}
    assert cfg.config_hash(dataclasses.replace(base, stages=[
        base.stages[0], dataclasses.replace(base.stages[1], options=options)])) != h


def test_stage_options_are_typed_and_checked_when_the_plan_is_made() -> None:
    base = cfg.AnnotateConfig(source=cfg.SourceConfig(inputs=["x"]), sink=cfg.SinkConfig(out="o"))
    plan = cfg.resolve(dataclasses.replace(base, stages=[
        cfg.StageSpec("persons", options={"tile_fractions": [1.0]}),
        cfg.StageSpec("refine/ehm", options={"refine": {"ehm": {"iterations": 7}}})]))
    persons, refine = plan.stages
    assert persons.options["tile_fractions"] == [1.0] and persons.options["max_persons"] == 20  # defaults filled in
    assert refine.options["refine"]["ehm"]["iterations"] == 7 and refine.options["refine"]["flame"]["iterations"] > 0
    assert json.loads(json.dumps(cfg.to_dict(plan)))["stages"][1]["options"] == refine.options  # manifest-ready
    assert cfg.resolve(plan).stages == plan.stages  # resolving the resolved plan changes nothing
    for stage, options, named in (
            ("keypoints/mediapipe", {"hand_pases": 3}, r"stages\[1\] \(keypoints/mediapipe\): unknown option\(s\) "
                                                       r"hand_pases; known options: crop_scales, .*hand_passes"),
            ("refine/ehm", {"refine": {"ehm": {"iteration": 3}}}, r"stages\[1\] \(refine/ehm\)\.refine\.ehm: "
                                                                  r"unknown option\(s\) iteration"),
            ("hands/mano-ik", {"dtype": "float16"}, r"stages\[1\] \(hands/mano-ik\): .*dtype"),
            ("hands/hamer", {}, r"stages\[1\] \(hands/hamer\): .*checkpoint is empty")):
        with pytest.raises(cfg.ConfigError, match=named):
            cfg.resolve(dataclasses.replace(base, stages=[cfg.StageSpec("persons"), cfg.StageSpec(stage, options=options)]))


def test_dry_run_exits_2_naming_a_misspelled_stage_option(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("stages:\n  - persons\n  - name: keypoints/mediapipe\n    options: {min_face_presense: 0.4}\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "annotate.py"), "--input", str(REPO / "examples"), "--out",
         str(tmp_path / "out"), "--config", str(config), "--dry-run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PEARL_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "unknown option(s) min_face_presense" in proc.stderr and "min_face_presence" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.jpg", "b.PNG", "c.webp"):
        (images / name).write_bytes(b"not read in a dry run")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "annotate.py"), "--input", str(images), "--out", str(out),
         "--dry-run", "--images-per-shard", "2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PEARL_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    resolved = json.loads(text[text.index("{"): text.index("\n}\n") + 2])
    assert resolved["sink"]["images_per_shard"] == 2 and resolved["source"]["inputs"] == [str(images)]
    assert "keypoints/" in text and "num_cpus=" in text and "called once per shard" in text
    assert "samples: 3, shards: 2" in text and "synthetic" in text
    assert not out.exists() and not (tmp_path / "cache").exists()


def _dry_run(tmp_path: Path, config_text: str, *flags: str) -> subprocess.CompletedProcess:
    (tmp_path / "job.yaml").write_text(config_text)
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "annotate.py"), "--input", str(REPO / "examples"), "--out",
         str(tmp_path / "out"), "--config", str(tmp_path / "job.yaml"), "--dry-run", *flags],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PEARL_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path),
             "CUDA_VISIBLE_DEVICES": ""},
    )


def test_dry_run_refuses_missing_weights_and_a_plan_that_cannot_fit(tmp_path: Path) -> None:
    weights = tmp_path / "hamer.ckpt"
    missing = _dry_run(tmp_path, f"stages:\n  - persons\n  - keypoints\n  - name: hands/hamer\n"
                                 f"    options: {{checkpoint: {weights}}}\n")
    assert missing.returncode == 2
    assert f"stages[2] (hands/hamer): option checkpoint: {weights} is not a file" in missing.stderr
    weights.write_bytes(b"present")  # existence is what the driver checks; loading is the actor's
    assert _dry_run(tmp_path, f"stages:\n  - persons\n  - keypoints\n  - name: hands/hamer\n"
                              f"    options: {{checkpoint: {weights}}}\n").returncode == 0
    too_big = _dry_run(tmp_path, "stages:\n  - name: persons\n    resources: {num_cpus: 8, num_actors: 5}\n",
                       "--num-cpus", "2")
    assert too_big.returncode == 2 and "reserve 40 CPUs" in too_big.stderr and "has 2" in too_big.stderr
    gpu = _dry_run(tmp_path, "stages:\n  - persons\n  - name: keypoints\n    resources: {num_gpus: 0.5}\n")
    assert gpu.returncode == 2 and "stages[1] (keypoints/mediapipe) asks for num_gpus 0.5" in gpu.stderr
    joined = _dry_run(tmp_path, "stages:\n  - name: persons\n    resources: {num_cpus: 8, num_actors: 5}\n",
                      "--ray-address", "10.0.0.1:6379")
    assert joined.returncode == 0 and "checked against the plan when the job joins it" in joined.stdout


def test_dry_run_says_which_default_stages_a_plan_leaves_out(tmp_path: Path) -> None:
    short = _dry_run(tmp_path, "stages:\n  - persons\n  - keypoints\n")
    assert short.returncode == 0
    assert ("note: this plan runs 2 stage(s) and leaves out the default stage(s) track/iou-oks, body/auto, "
            "hands/mano-ik, face/flame-fit, refine/ehm, quality/default") in short.stdout
    assert "leaves out" not in _dry_run(tmp_path, "stages: []\n").stdout
