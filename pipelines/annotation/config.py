"""Typed configuration of the annotation job (``pearl annotate``).

The job is configured by one :class:`AnnotateConfig`: built from defaults, updated from a YAML or TOML
file (``--config``), then from command-line flags. The resolved config is what ``--dry-run`` prints and
what ``OUT/manifest.json`` stores; :func:`config_hash` (written into every record) covers only the parts
that decide the output bytes (sources, stages and their options, shard layout, seed), not where or how
fast the job runs (output path, mode, Ray address, resources).

A config file mirrors the dataclasses::

    source: {inputs: [examples], video_stride: 5, max_pixels: 40000000}
    stages:
      - persons                      # an annotator name (its single registered backend) ...
      - name: keypoints/mediapipe    # ... or a registry name with resources and stage options
        resources: {num_cpus: 0.5, num_gpus: 0, num_actors: 2}
        options: {}
    sink: {out: runs/demo, split: train, images_per_shard: 64}
    ray: {address: null, num_cpus: null}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotators.base import STAGES, StageConfigError, StageResources, build_config, config_to_dict
from pipelines.io.config_files import ConfigFileError, read_config_mapping

STAGE_ORDER = ("persons", "keypoints", "track", "body", "hands", "face", "refine", "quality")
"""Annotators in data-flow order (``docs/annotate.md``); a stage's registry name is ``"<annotator>/<backend>"``."""

PERSONS_ANNOTATOR = "persons"
"""The annotator whose stage turns image rows into person rows; every plan starts with it."""

DEFAULT_STAGES = (
    "persons/mediapipe",
    "keypoints/mediapipe",
    "track/iou-oks",
    "body/auto",
    "hands/mano-ik",
    "face/flame-fit",
    "refine/ehm",
    "quality/default",
)
"""Stages run when neither the config file nor ``--stages`` names any: the whole EHM annotation with the
embedded backends (MediaPipe, person tracks in videos, SMPL label transfer or keypoint fit, MANO IK, FLAME fit,
refinement, quality).
Their default CPU shares (0.25 each) fit a 2-core machine beside the read tasks."""

MODES = ("incremental", "overwrite")
RUNNERS = ("ray", "loop")


class ConfigError(ValueError):
    """The job configuration is invalid; the message names the setting and what to do."""


@dataclass
class SourceConfig:
    """Where the samples come from."""

    inputs: list[str] = field(default_factory=list)
    """Image folders (recursive), image or video files, or COCO-style ``.json`` files; local paths or fsspec URLs."""
    image_root: str | None = None
    """Folder that COCO ``file_name`` entries are relative to (default: the folder of the json file)."""
    video_stride: int = 1
    """Keep every n-th video frame (frame indices 0, n, 2n, ...)."""
    max_pixels: int = 40_000_000
    """Images with more pixels than this are quarantined unread (decompression-bomb guard)."""
    limit: int | None = None
    """Annotate only the first ``limit`` samples in key order (``None``: all)."""
    max_clip_frames: int = 512
    """Most frames of one video (after ``video_stride``) annotated as one unit: a clip is one shard of its own,
    tracked and sharing identities over all its frames; a longer clip is cut into equal segments of at most this
    many frames, each its own shard with its own tracks (``track_id`` ``<clip>#s<j>#t<k>``). Its decoded frames
    are held in memory together (about 2.7 MB per 720p frame)."""
    load_num_cpus: float = 0.25
    """CPU share of each read-and-decode task (fractional so reads run beside the stage actors)."""


@dataclass
class StageSpec:
    """One stage of the plan: a registry name, its actor-pool resources and its options."""

    name: str
    """Registry name ``"<annotator>/<backend>"`` (see ``annotators.base.STAGES``)."""
    resources: StageResources | None = None
    """Actor-pool resources: CPU and GPU shares per actor, number of actors (default: the stage
    class's ``resources`` attribute, else ``StageResources()``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Fields of the stage's own config dataclass (its ``config_class``; nested configs as mappings). After
    :func:`resolve`: every field, checked and with its default filled in (what the manifest records)."""

    @property
    def annotator(self) -> str:
        """The annotator part of :attr:`name` (``"keypoints"`` for ``"keypoints/mediapipe"``)."""
        return self.name.split("/", 1)[0]


@dataclass
class SinkConfig:
    """Where and how shards are written."""

    out: str = ""
    """Output folder: a local path or ``s3://bucket/prefix`` (any fsspec URL)."""
    split: str = "train"
    """Split name in shard names and records (letters, digits and ``_``)."""
    images_per_shard: int = 64
    """Still images per shard: the unit of work, commit and resume (a video clip is a shard of its own, see
    ``source.max_clip_frames``)."""
    crop_scale: float = 2.0
    """Side of each person's ``crop.jpg``, in person-box sides (``crop_xyxy`` records its exact image region):
    room for a trainer's scale, rotation and shift augmentation around the box."""
    crop_size: int = 384
    """Side of ``crop.jpg`` in px."""
    parquet_images: bool = False
    """Also store each person's crop JPEG in the Parquet shards (``crop_jpeg`` column)."""
    mode: str = "incremental"
    """``incremental``: keep committed shards and do the rest; ``overwrite``: delete OUT's outputs first."""
    lock_stale_s: float = 120.0
    """A run lock whose heartbeat is older than this many seconds is stale and may be taken over."""


@dataclass
class RayConfig:
    """How the job reaches Ray."""

    address: str | None = None
    """Cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); default: ``RAY_ADDRESS``, else a new
    private local Ray that lives as long as the job (another Ray running on the machine is never joined
    unless named)."""
    num_cpus: int | None = None
    """CPUs of a newly started local Ray (default: all of this machine's)."""
    object_store_memory: int | None = None
    """Object-store bytes of a newly started local Ray (default: Ray's choice)."""
    progress_bars: bool = True
    """Show Ray Data's per-operator progress bars."""


@dataclass
class AnnotateConfig:
    """The whole job."""

    source: SourceConfig = field(default_factory=SourceConfig)
    """Inputs and how they are read."""
    stages: list[StageSpec] = field(default_factory=list)
    """The stage plan, in data-flow order (filled from :data:`DEFAULT_STAGES` when empty)."""
    sink: SinkConfig = field(default_factory=SinkConfig)
    """Output location and shard layout."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection (ignored by the plain-loop runner)."""
    body_models: str = "synthetic"
    """Body-model folder in the official layout, or ``synthetic`` for the cached synthetic kit."""
    seed: int = 0
    """The job's seed, handed to every stage through its stage context."""
    torch_threads: int = 1
    """Intra-op threads of torch in every stage call (Ray actors and the plain loop alike): the fitted values'
    last bits depend on it, so it is part of the config hash."""
    runner: str = "ray"
    """``ray`` (Ray Data actor pools) or ``loop`` (the same stages in one process, for debugging)."""


def stage_class(name: str) -> type:
    """The stage class registered as ``name`` (``"<annotator>/<backend>"``; its module is imported)."""
    try:
        return STAGES.get(name)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None


def resolve_stage_name(name: str) -> str:
    """A full registry name for ``name``: itself, or for an annotator name its single registered backend
    (among several, the one whose class sets ``default_backend = True``)."""
    if "/" in name:
        stage_class(name)
        return name
    backends = [n for n in STAGES.names() if n.split("/", 1)[0] == name]
    if len(backends) > 1:
        backends = [n for n in backends if getattr(STAGES.get(n), "default_backend", False)] or backends
    if len(backends) != 1:
        known = ", ".join(STAGES.names()) or "none"
        what = "no backend" if not backends else f"{len(backends)} backends"
        raise ConfigError(f"stage {name!r} has {what}; name one of the registered stages: {known}")
    return backends[0]


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys (the message names them and ``where``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(names))}")
    return cls(**data)


def _stage_spec(item: Any, where: str) -> StageSpec:
    if isinstance(item, str):
        return StageSpec(name=item)
    if not isinstance(item, dict) or "name" not in item:
        raise ConfigError(f"{where} must be a stage name or a mapping with a 'name'")
    data = dict(item)
    if data.get("resources") is not None:
        if isinstance(data["resources"], dict) and "batch_size" in data["resources"]:
            raise ConfigError(f"{where}.resources.batch_size: a stage is called once per shard with all its rows, so "
                              "there is no per-call batch to size; set the stage's own batching option instead "
                              "(chunk_size of the fitting stages, batch_size of the network backends)")
        data["resources"] = _from_dict(StageResources, data["resources"], f"{where}.resources")
    return _from_dict(StageSpec, data, where)


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> AnnotateConfig:
    """An :class:`AnnotateConfig` from plain data (a parsed YAML/TOML file or ``to_dict`` output)."""
    data = dict(data)
    sections = {"source": SourceConfig, "sink": SinkConfig, "ray": RayConfig}
    for key, cls in sections.items():
        data[key] = _from_dict(cls, data.get(key) or {}, f"{where}.{key}")
    stages = data.get("stages") or []
    if not isinstance(stages, list):
        raise ConfigError(f"{where}.stages must be a list of stage names or mappings")
    data["stages"] = [_stage_spec(s, f"{where}.stages[{i}]") for i, s in enumerate(stages)]
    return _from_dict(AnnotateConfig, data, where)


def load_config_file(path: str | Path) -> AnnotateConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file."""
    try:
        data = read_config_mapping(path)
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    return config_from_dict(data, where=str(path))


def to_dict(config: AnnotateConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (the form saved in the manifest)."""
    return dataclasses.asdict(config)


def resolve(config: AnnotateConfig) -> AnnotateConfig:
    """Check ``config`` and fill defaults: full stage names in data-flow order; raises :class:`ConfigError`."""
    if not config.source.inputs:
        raise ConfigError("no inputs: pass --input PATH (an image folder, image/video files or a COCO json)")
    if not config.sink.out:
        raise ConfigError("no output: pass --out OUT (a local folder or s3://bucket/prefix)")
    if config.sink.mode not in MODES:
        raise ConfigError(f"mode {config.sink.mode!r}: use one of {', '.join(MODES)}")
    if config.runner not in RUNNERS:
        raise ConfigError(f"runner {config.runner!r}: use one of {', '.join(RUNNERS)}")
    if config.sink.images_per_shard < 1:
        raise ConfigError(f"images_per_shard must be >= 1, got {config.sink.images_per_shard}")
    if not config.sink.crop_scale > 0 or config.sink.crop_size < 1:
        raise ConfigError(f"crop_scale must be > 0 and crop_size >= 1, got {config.sink.crop_scale} and "
                          f"{config.sink.crop_size}")
    if config.source.video_stride < 1:
        raise ConfigError(f"video_stride must be >= 1, got {config.source.video_stride}")
    if config.source.max_clip_frames < 1:
        raise ConfigError(f"max_clip_frames must be >= 1, got {config.source.max_clip_frames}")
    if config.torch_threads < 1:
        raise ConfigError(f"torch_threads must be >= 1, got {config.torch_threads}")
    if not config.sink.split or not all(c.isalnum() or c == "_" for c in config.sink.split):
        raise ConfigError(f"split {config.sink.split!r}: use letters, digits and '_' only")
    specs = config.stages or [StageSpec(name=n) for n in DEFAULT_STAGES]
    resolved = []
    for spec in specs:
        name = resolve_stage_name(spec.name)
        default = getattr(stage_class(name), "resources", None)
        resources = spec.resources or (dataclasses.replace(default) if isinstance(default, StageResources)
                                       else StageResources())
        resolved.append(dataclasses.replace(spec, name=name, resources=resources,
                                            options=resolve_options(name, spec.options, f"stages[{len(resolved)}]")))
    check_stage_order(resolved)
    for spec in resolved:
        r = spec.resources
        if r.num_actors < 1 or r.num_cpus < 0 or r.num_gpus < 0:
            raise ConfigError(f"stage {spec.name}: resources {r} need num_actors >= 1 and shares >= 0")
    return dataclasses.replace(config, stages=resolved)


def resolve_options(name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Stage ``name``'s options checked against its typed config and completed with the defaults (plain data);
    raises :class:`ConfigError` naming the stage, the option and the known options."""
    config_class = stage_class(name).config_class
    if config_class is None:
        if options:
            raise ConfigError(f"{where} ({name}): the stage takes no options, got {', '.join(sorted(options))}")
        return {}
    try:
        return config_to_dict(build_config(config_class, options, f"{where} ({name})"))
    except StageConfigError as exc:
        raise ConfigError(f"{exc}; see the stage's options in docs/") from None


def check_stage_order(specs: list[StageSpec]) -> None:
    """Raise :class:`ConfigError` unless ``specs`` start with persons and follow :data:`STAGE_ORDER`."""
    annotators = [s.annotator for s in specs]
    unknown = [a for a in annotators if a not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"stage annotator {unknown[0]!r} is not one of {', '.join(STAGE_ORDER)}")
    if not annotators or annotators[0] != PERSONS_ANNOTATOR:
        raise ConfigError(f"the plan must start with a {PERSONS_ANNOTATOR} stage (it makes the person rows)")
    ranks = [STAGE_ORDER.index(a) for a in annotators]
    if ranks != sorted(ranks) or len(set(ranks)) != len(ranks):
        raise ConfigError(f"stages {', '.join(s.name for s in specs)} are not in the order {' -> '.join(STAGE_ORDER)}"
                          " (one stage per annotator)")


def config_hash(config: AnnotateConfig) -> str:
    """sha256 (16 hex digits) of what decides the output bytes: source settings, stage names and options,
    split and shard layout, seed. Excluded: ``out``, ``mode``, resources, Ray settings, runner."""
    data = to_dict(config)
    decisive = {
        "source": {k: v for k, v in data["source"].items() if k != "load_num_cpus"},
        "stages": [{"name": s["name"], "options": s["options"]} for s in data["stages"]],
        "sink": {k: data["sink"][k] for k in ("split", "images_per_shard", "parquet_images", "crop_scale", "crop_size")},
        "seed": data["seed"],
        "torch_threads": data["torch_threads"],
    }
    text = json.dumps(decisive, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
