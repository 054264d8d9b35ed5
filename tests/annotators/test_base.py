"""The stage base: typed configs from plain options, lazily built resources left out of pickles, the one
failure path under each error policy, outputs started from the schema's fill values, and the registry."""

from __future__ import annotations

import dataclasses
import enum
import pickle

import numpy as np
import pytest

from annotators.base import (
    ERROR_REASON,
    ERROR_STAGE,
    STAGES,
    ErrorPolicy,
    Stage,
    StageConfigError,
    StageContext,
    build_config,
    config_to_dict,
    resource,
)


class Mode(str, enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclasses.dataclass
class Inner:
    steps: int = 3

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"Inner.steps must be at least 1, got {self.steps}")


@dataclasses.dataclass
class Options:
    scale: float = 1.0
    sizes: tuple[float, ...] = (1.0,)
    mode: Mode = Mode.FAST
    inner: Inner = dataclasses.field(default_factory=Inner)
    label: str | None = None


class Counting(Stage):
    """A stage whose resource counts how often it is built, failing rows whose ``x`` is negative."""

    name = "toy"
    config_class = Options
    required = ("x",)
    outputs = ("has_face", "conf_face", "head_scale")
    builds = 0

    @resource
    def model(self) -> dict:
        type(self).builds += 1
        return {"weights": np.arange(3)}

    def __call__(self, batch):
        n, out = self.start(batch)
        self.model  # noqa: B018 - built on first use
        for i, _ in self.per_row(batch, lambda i: _positive(batch["x"][i])):
            out["has_face"][i] = True
            out["conf_face"][i] = batch["x"][i]
        batch.update(out)
        return batch


def _positive(x: float) -> float:
    if x < 0:
        raise ValueError(f"x is negative: {x}")
    return x


def test_build_config_makes_nested_typed_configs():
    cfg = build_config(Options, {"scale": 2, "sizes": [1.25, 1.5], "mode": "slow", "inner": {"steps": 5}}, "stages[1]")
    assert cfg == Options(scale=2, sizes=(1.25, 1.5), mode=Mode.SLOW, inner=Inner(steps=5))
    assert config_to_dict(cfg) == {"scale": 2, "sizes": [1.25, 1.5], "mode": "slow", "inner": {"steps": 5},
                                   "label": None}
    assert build_config(Options, config_to_dict(cfg), "again") == cfg  # the manifest's form round-trips


def test_build_config_names_the_option_and_the_known_ones():
    with pytest.raises(StageConfigError, match=r"stages\[1\] \(toy\): unknown option\(s\) scael; known options: "
                                               r"scale, sizes, mode, inner, label"):
        build_config(Options, {"scael": 2}, "stages[1] (toy)")
    with pytest.raises(StageConfigError, match=r"stages\[1\]\.inner: unknown option\(s\) step"):
        build_config(Options, {"inner": {"step": 2}}, "stages[1]")
    with pytest.raises(StageConfigError, match=r"stages\[1\]\.mode: 'medium' is not one of \['fast', 'slow'\]"):
        build_config(Options, {"mode": "medium"}, "stages[1]")
    with pytest.raises(StageConfigError, match=r"stages\[1\]\.inner: Inner.steps must be at least 1"):
        build_config(Options, {"inner": {"steps": 0}}, "stages[1]")


def test_every_registered_stage_config_builds_from_its_own_dict():
    for name in STAGES.names():
        cls = STAGES.get(name)
        if not cls.__module__.startswith("annotators."):
            continue  # test stages of other suites
        assert issubclass(cls, Stage) and cls.name == name.split("/")[0], name
        if cls.config_class is None:
            continue
        required = {f.name for f in dataclasses.fields(cls.config_class)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        options = {"checkpoint": "x.ckpt", "onnx": "x.onnx", "pose_model": "x.onnx", "detector_model": "x.onnx"}
        try:
            cfg = cls.config_class()
        except ValueError:  # reference backends need their weights' path
            fields = {f.name for f in dataclasses.fields(cls.config_class)}
            cfg = build_config(cls.config_class, {k: v for k, v in options.items() if k in fields}, name)
        assert not required, name
        assert build_config(cls.config_class, config_to_dict(cfg), name) == cfg, name


def test_resources_are_built_once_and_left_out_of_pickles():
    Counting.builds = 0
    stage = Counting(context=StageContext(body_models="/kits/a", seed=3))
    batch = {"x": np.array([0.5, -1.0, 0.25])}
    stage(dict(batch))
    stage(dict(batch))
    assert Counting.builds == 1
    clone = pickle.loads(pickle.dumps(stage))
    assert "model" not in clone.__dict__ and clone.context == stage.context and clone.config == stage.config
    clone(dict(batch))
    assert Counting.builds == 2


def test_one_failure_path_follows_the_policy():
    out = Counting()({"x": np.array([0.5, -1.0, 0.25])})
    assert list(out[ERROR_STAGE]) == ["", "toy", ""]
    assert out[ERROR_REASON][1].startswith("ValueError: x is negative: -1.0 [tb ")
    np.testing.assert_array_equal(out["has_face"], [True, False, True])
    np.testing.assert_array_equal(out["head_scale"], np.ones((3, 3), np.float32))  # the schema's fill, not zeros
    with pytest.raises(ValueError, match="x is negative"):
        Counting(policy=ErrorPolicy.RAISE)({"x": np.array([-1.0])})
    with pytest.raises(KeyError, match="toy stage needs a 'x' column"):
        Counting()({"y": np.zeros(2)})


def test_rows_failed_upstream_are_skipped_and_kept():
    batch = {"x": np.array([1.0, 2.0]), ERROR_STAGE: np.array(["keypoints", ""], object),
             ERROR_REASON: np.array(["no skeleton", ""], object)}
    out = Counting()(batch)
    assert list(out[ERROR_STAGE]) == ["keypoints", ""] and list(out[ERROR_REASON]) == ["no skeleton", ""]
    np.testing.assert_array_equal(out["has_face"], [False, True])


def test_map_rows_fills_skipped_rows():
    class PerRow(Stage):
        name = "toy"
        required = ("x",)

        def __call__(self, batch):
            return self.map_rows(batch, lambda row: {"y": np.full(2, _positive(row["x"]))}, {"y": np.zeros(2)})

    out = PerRow()({"x": np.array([1.0, -1.0])})
    np.testing.assert_array_equal(out["y"], [[1.0, 1.0], [0.0, 0.0]])
    assert list(out[ERROR_STAGE]) == ["", "toy"]


def test_stage_checks_its_config_type_and_context():
    with pytest.raises(TypeError, match="Counting takes a Options, got dict"):
        Counting({"scale": 2})
    with pytest.raises(ValueError, match="toy stage: the stage context has no body_models folder"):
        StageContext().body_model_folder("toy")
