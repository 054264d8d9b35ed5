"""Typed configuration of ``pearl train`` (and of ``pearl evaluate`` / ``pearl predict``'s checkpoints).

The run is configured by one :class:`TrainConfig`, built from defaults, then a YAML or TOML file
(``--config FILE``), then command-line flags (each flag is a dotted key, ``--set KEY=VALUE`` any key). Unknown
keys are refused by name, wherever they come from. The resolved config is written beside every output
(``OUT/config.yaml``) and into every checkpoint. The docstrings of the fields below are the documentation
(``docs/training.md`` lists them).

A config file mirrors the dataclasses::

    out: runs/train-tiny
    model: {preset: pear-tiny}
    data:
      train: [{urls: "runs/corpus/wds/train-{000000..000031}.tar", weight: 1.0}]
      val: ["runs/corpus/wds/val-000000.tar"]
      batch_size: 32
    optim: {lr: 3.0e-4, warmup_steps: 200}
    trainer: {max_steps: 3000, val_every_n_steps: 500}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from annotators.base import StageConfigError, build_config, config_to_dict
from model.losses import LossWeights
from model.networks.pear import PRESETS, PearConfig
from pipelines.io.config_files import ConfigFileError, read_config_mapping
from pipelines.train.gating import Gate, GateError


class TrainConfigError(ValueError):
    """The training configuration is invalid; the message names the setting and what to do."""


@dataclass
class ModelSection:
    """The regressor."""

    preset: str = "pear-b"
    """Named configuration: ``pear-b`` (ViT-B/16 at 256 x 192, 6-layer decoder) or ``pear-tiny`` (tests, CPU)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`model.networks.pear.PearConfig` that differ from the preset, nested as mappings, e.g.
    ``{num_flame_expression: 100, head: {depth: 4}, backbone: {drop_path_rate: 0.1}}``."""

    def resolved(self) -> PearConfig:
        """The preset with the overrides applied (``ValueError`` naming an unknown preset or key)."""
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        data = PRESETS[self.preset].to_dict()
        _merge(data, self.overrides, "model.overrides")
        return PearConfig.from_dict(data)


@dataclass
class ShardSet:
    """One set of training shards and its share of the mix."""

    urls: str | list[str] = ""
    """WebDataset URLs: a brace pattern (``OUT/wds/train-{000000..000127}.tar``), local paths or glob patterns
    (``OUT/wds/train-*.tar``), a folder (every ``*.tar`` of its ``wds/``, all splits), ``pipe:`` commands or
    fsspec URLs (``s3://bucket/...``); a list for several."""
    weight: float = 1.0
    """Relative sampling weight of this set in the mix (HMR2's weighted mixing)."""


@dataclass
class QualityGates:
    """Expressions over a record's quality fields that turn a part's supervision off (4D-Humans' way: the
    sample stays, the part's ``has_*`` flag goes false). Syntax: :mod:`pipelines.train.gating`; an empty
    string never gates."""

    body_off: str = "quality_reproj_norm_body > 0.04"
    """Turns off the SMPL-X parameters and 3D body keypoints (the 2D keypoints stay)."""
    face_off: str = "(quality_flags & FACE_GATED) or quality_reproj_norm_face > 0.08"
    """Turns off the FLAME parameters and the 3D face landmarks."""
    left_hand_off: str = "(quality_flags & LEFT_HAND_GATED) or quality_reproj_norm_hands[0] > 0.15"
    """Turns off the left hand's pose and 3D keypoints."""
    right_hand_off: str = "(quality_flags & RIGHT_HAND_GATED) or quality_reproj_norm_hands[1] > 0.15"
    """Turns off the right hand's pose and 3D keypoints."""

    def gates(self) -> dict[str, Gate | None]:
        """The parsed gates by field name (None where the expression is empty)."""
        return {f.name: Gate(getattr(self, f.name), f"data.gates.{f.name}") if getattr(self, f.name).strip() else None
                for f in dataclasses.fields(self)}


@dataclass
class AugmentConfig:
    """Training augmentation (HMR2's factors). The crop is the person window (box widened to 192 : 256 and
    scaled by ``model.box_scale``) cut from the stored ``crop.jpg`` through ``crop_xyxy``."""

    enabled: bool = True
    """Augment training samples (evaluation never does)."""
    scale: float = 0.3
    """Window scale factor ``1 + scale * clip(N(0, 1), -1, 1)``."""
    rotation_deg: float = 30.0
    """Rotation ``rotation_deg * clip(N(0, 1), -2, 2)`` degrees about the crop centre, in ``rotation_prob`` of
    the samples (the global orientation turns with it about the camera axis)."""
    rotation_prob: float = 0.6
    """Share of samples rotated."""
    translation: float = 0.02
    """Window shift ``translation * clip(N(0, 1), -1, 1)`` window heights along each axis."""
    flip_prob: float = 0.5
    """Share of samples mirrored (left/right of joints, hands, eyes and keypoints exchanged: :mod:`model.flip`)."""
    color: float = 0.2
    """Per-channel colour scale ``U(1 - color, 1 + color)``."""

    def __post_init__(self) -> None:
        for name in ("scale", "rotation_deg", "rotation_prob", "translation", "flip_prob", "color"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1 or self.rotation_prob > 1 or self.flip_prob > 1 or self.color >= 1:
            raise ValueError("data.augment: scale and color must be < 1, the probabilities <= 1")


@dataclass
class DataConfig:
    """Where samples come from and how they are read (WebDataset URLs only)."""

    train: list[ShardSet] = field(default_factory=list)
    """Training shard sets, mixed by weight."""
    val: list[str] = field(default_factory=list)
    """Held-out shards for the periodic evaluation (URLs as in ``train``); empty: no evaluation."""
    batch_size: int = 32
    """Samples per batch and process (device)."""
    num_workers: int = 2
    """Data-loading worker processes per training process (0: load in the training process)."""
    shuffle_buffer: int = 1000
    """Samples in the process's shuffle buffer (each loader worker runs the same per-process stream and keeps
    its own batches, so batches do not depend on the worker count)."""
    resampled: bool = True
    """Draw shards at random with replacement (an endless stream cut into epochs of ``epoch_size``); False:
    every process reads its own share of the shards in a fresh order each epoch (its loader workers share
    that process's stream)."""
    epoch_size: int = 100_000
    """Samples per epoch over all processes (the stream is cut into epochs of this many)."""
    val_samples: int = 512
    """Held-out samples per evaluation (over all processes)."""
    stats_samples: int = 5000
    """Training samples the mean-parameter pass reads (from the start of the shard lists, no images decoded)."""
    kp2d_min_confidence: float = 0.3
    """2D keypoints below this confidence are not supervised."""
    gates: QualityGates = field(default_factory=QualityGates)
    """Quality gating (which parts a sample supervises)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Training augmentation."""

    def __post_init__(self) -> None:
        self.train = [s if isinstance(s, ShardSet) else _shard_set(s, f"data.train[{i}]") for i, s in enumerate(self.train)]
        self.val = [self.val] if isinstance(self.val, str) else list(self.val)
        for name in ("batch_size", "epoch_size", "val_samples", "stats_samples", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        for i, s in enumerate(self.train):
            if not s.urls or not s.weight > 0:
                raise ValueError(f"data.train[{i}] needs urls and a weight > 0")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (per step), gradient clipping."""

    lr: float = 1.0e-4
    """Peak learning rate."""
    weight_decay: float = 1.0e-4
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 1000
    """Steps of linear warm-up from 0 to ``lr``."""
    min_lr_ratio: float = 0.01
    """The cosine decays from ``lr`` to ``min_lr_ratio * lr`` at ``trainer.max_steps``."""
    grad_clip: float = 1.0
    """Gradient norm clip (0: off)."""


@dataclass
class TrainerConfig:
    """The Lightning loop."""

    max_steps: int = 100_000
    """Optimiser steps of the whole run (also the length of the cosine schedule)."""
    max_time_s: float | None = None
    """Also stop after this many seconds of fitting (the schedule still follows ``max_steps``); None: no limit."""
    val_every_n_steps: int = 1000
    """Evaluate on ``data.val`` every this many steps."""
    checkpoint_every_n_steps: int = 1000
    """Write ``OUT/checkpoints/last.ckpt`` (and keep ``step=N.ckpt``) every this many steps."""
    keep_checkpoints: int = 3
    """Numbered checkpoints kept (the newest; ``last.ckpt`` is always kept)."""
    log_every_n_steps: int = 10
    """Write the losses to the CSV and TensorBoard logs every this many steps."""
    accelerator: str = "auto"
    """``auto`` (a GPU when present), ``cpu`` or ``gpu``."""
    devices: str | int = "auto"
    """Devices per node (``auto``: all; under ``torchrun`` its processes per node)."""
    num_nodes: int = 1
    """Nodes (under ``torchrun``: read from its environment)."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, 32-bit on the CPU), ``32``, ``bf16-mixed`` or ``16-mixed``."""
    torch_threads: int | None = None
    """Intra-op threads of torch per process (None: torch's default)."""
    progress_bar: bool = True
    """Show a progress bar."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (slower on GPU; the CPU is deterministic anyway)."""


@dataclass
class RayTrainConfig:
    """Running the same loop under Ray Train (``--ray-address``)."""

    address: str | None = None
    """Ray cluster to run on (``auto``, ``ray://host:10001``, ``local`` for a new local Ray); None: no Ray."""
    num_workers: int = 1
    """Training workers (one process each, DDP over them)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""


@dataclass
class TrainConfig:
    """The whole run."""

    out: str = ""
    """Output folder: ``config.yaml``, ``mean_params.npz``, ``checkpoints/``, ``logs/`` (CSV, TensorBoard)."""
    body_models: str = "synthetic"
    """Body-model folder in the official layout, or ``synthetic`` for the cached synthetic kit (the losses pose
    the target and predicted EHM bodies)."""
    seed: int = 0
    """Seed of the weights, the shard order, the shuffle buffers and the augmentation."""
    resume: str | None = None
    """A checkpoint to resume from exactly (weights, optimiser, schedule, data position), or ``auto``: the run's
    ``checkpoints/last.ckpt`` when there is one."""
    mean_params: str | None = None
    """A ``mean_params.npz`` to start from instead of the statistics pass over ``data.train``."""
    model: ModelSection = field(default_factory=ModelSection)
    """The regressor."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards, batching, gating, augmentation."""
    loss: LossWeights = field(default_factory=LossWeights)
    """Weights of the loss terms (PEAR eq. 1-3; :class:`model.losses.LossWeights`)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser and its schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The loop."""
    ray: RayTrainConfig = field(default_factory=RayTrainConfig)
    """Ray Train."""


def _shard_set(value: Any, where: str) -> ShardSet:
    if isinstance(value, (str, list)):
        return ShardSet(urls=value)
    try:
        return build_config(ShardSet, value, where)
    except StageConfigError as exc:
        raise ValueError(str(exc)) from None


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> None:
    """Recursively update ``base`` with ``update`` (nested mappings merged, other values replaced)."""
    if not isinstance(update, dict):
        raise ValueError(f"{where} must be a mapping, got {type(update).__name__}")
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{where}.{key}")
        else:
            base[key] = value


def config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from plain data; :class:`TrainConfigError` names an unknown or invalid key."""
    try:
        config = build_config(TrainConfig, data, where)
        config.model.resolved()
        config.data.gates.gates()
    except (StageConfigError, GateError, ValueError, TypeError) as exc:
        raise TrainConfigError(str(exc)) from None
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Plain data of a YAML (``.yaml`` / ``.yml``) or TOML (``.toml``) config file."""
    try:
        return read_config_mapping(path)
    except ConfigFileError as exc:
        raise TrainConfigError(str(exc)) from None


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (intermediate mappings made as needed)."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TrainConfigError(f"--set {dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: the value read as YAML (``3``, ``1e-4``, ``true``, ``[a, b]``, ``{x: 1}``)."""
    if "=" not in text:
        raise TrainConfigError(f"--set {text!r}: use KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    return key.strip(), value


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data (the form saved beside outputs and in checkpoints)."""
    return config_to_dict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (with the resolved model under ``model.resolved`` for reading)."""
    data = to_dict(config)
    data["model"]["resolved"] = config.model.resolved().to_dict()
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def load_saved_config(path: str | Path) -> TrainConfig:
    """A config written by :func:`save_config`."""
    data = read_config_file(path)
    data.get("model", {}).pop("resolved", None)
    return config_from_dict(data, str(path))
