"""The stage contract shared by every annotator, refinement and quality stage: :class:`Stage`.

A **batch** is ``dict[str, np.ndarray]`` (Ray Data's ``map_batches`` contract, ``batch_format="numpy"``;
helpers in :mod:`annotators.batches`). A **stage** is a callable class: ``__init__(config, policy,
context=...)`` keeps its typed options, its error policy and the run's :class:`StageContext`, ``__call__(batch) -> batch`` returns the batch with its
fields added. Models load on first use (:class:`resource`) and are left out when the stage is pickled for
a Ray worker or a Beam ``DoFn``, so the same object runs there, in a plain loop and in a unit test. Stages
import neither Ray nor Beam.

Errors never drop a row silently. Every batch carries two string columns:

- ``error_stage``: ``""`` while the row is good, else the name of the stage that failed it;
- ``error_reason``: ``""`` or a one-line reason (exception type and message, plus a digest of the
  traceback).

A stage skips rows whose ``error_stage`` is set (it still returns them, with its own columns at the
schema's fill values), and the sink sends them to the quarantine table. A row that a stage cannot
annotate goes through :meth:`Stage.fail`, the one failure path: under :attr:`ErrorPolicy.QUARANTINE`
the row is marked failed with its reason and the batch goes on, under :attr:`ErrorPolicy.RAISE` (tests)
the error propagates.

Columns a stage adds for rows it skipped must still exist with the right dtype and shape, so that
downstream concatenation stays rectangular: :meth:`Stage.start` makes them from ``schemas.fill_values``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib
import logging
import traceback
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

import schemas
from annotators.batches import Batch, batch_len, repeat_rows, stack_column

log = logging.getLogger(__name__)

ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"


class ErrorPolicy(str, enum.Enum):
    """What a stage does with a row that raises."""

    RAISE = "raise"  # tests: fail loudly
    QUARANTINE = "quarantine"  # jobs: record the reason on the row and go on


class StageConfigError(ValueError):
    """A stage's options cannot make its config; the message names the stage, the option and the known
    options."""


@dataclass
class StageResources:
    """Resources a stage asks the driver for (mapped to a Ray actor pool / Beam worker)."""

    num_cpus: float = 0.25
    """CPU share per actor. Keep it fractional on small machines so Ray Data's read tasks never starve."""
    num_gpus: float = 0.0
    """GPU share per actor (fractional allowed: 0.25 packs four actors on one GPU)."""
    num_actors: int = 1
    """Actors in the pool (a fixed size)."""


@dataclass(frozen=True)
class StageContext:
    """Run-level values every stage of a job receives beside its own config (never part of the config)."""

    body_models: str = ""
    """Body-model folder in the official layout (``pearl annotate`` resolves it from ``--body-models``)."""
    body_model_kit: str = "synthetic"
    """``synthetic`` or ``official``."""
    body_models_cached: bool = False
    """True when :attr:`body_models` is pearl's cached synthetic kit, which an actor makes on its node if
    it is missing there; a folder the user named is only read."""
    seed: int = 0
    """The job's seed."""

    def body_model_folder(self, stage: str) -> str:
        """:attr:`body_models`, or a ``ValueError`` naming ``stage`` when the context has none."""
        if not self.body_models:
            raise ValueError(f"{stage} stage: the stage context has no body_models folder; build the stage with "
                             "StageContext(body_models=DIR) (pearl annotate fills it from --body-models)")
        return self.body_models


def ensure_error_columns(batch: Batch) -> Batch:
    """Add empty ``error_stage`` / ``error_reason`` columns when a batch has none yet."""
    n = batch_len(batch)
    for col in (ERROR_STAGE, ERROR_REASON):
        if col not in batch:
            batch[col] = np.array([""] * n, dtype=object)
        else:
            batch[col] = np.asarray(batch[col], dtype=object)
    return batch


def good_rows(batch: Batch) -> np.ndarray:
    """Boolean mask ``[B]`` of rows no stage has failed yet."""
    ensure_error_columns(batch)
    return np.array([not s for s in batch[ERROR_STAGE]], dtype=bool)


def error_digest(exc: BaseException) -> str:
    """One-line reason for an exception: type, message and a short digest of its traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    digest = hashlib.sha1(tb.encode("utf-8", "replace")).hexdigest()[:10]
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message} [tb {digest}]"


def mark_failed(batch: Batch, index: int, stage: str, reason: str) -> None:
    """Record that ``stage`` failed row ``index`` for ``reason`` (first failure wins)."""
    ensure_error_columns(batch)
    if not batch[ERROR_STAGE][index]:
        batch[ERROR_STAGE][index] = stage
        batch[ERROR_REASON][index] = reason


# --------------------------------------------------------------------------------------------------
# Typed stage configs from plain options
# --------------------------------------------------------------------------------------------------


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (plain data from YAML/JSON/CLI) as type ``tp``: nested dataclasses from mappings, tuples
    from lists, enums from their values; everything else as given (the dataclass checks it)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return build_config(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or len(args) != 1:
            return value
        return _convert(args[0], value, where)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and not isinstance(value, tp):
        try:
            return tp(value)
        except ValueError:
            raise StageConfigError(f"{where}: {value!r} is not one of {[e.value for e in tp]}") from None
    return value


def build_config(cls: type, options: Mapping[str, Any] | None, where: str) -> Any:
    """An instance of the config dataclass ``cls`` from plain ``options`` (nested configs as mappings).

    Raises :class:`StageConfigError` naming ``where``, the unknown option(s) and the known ones, or the
    option whose value the dataclass refuses.
    """
    options = dict(options or {})
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise StageConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    values = {k: _convert(hints.get(k, Any), v, f"{where}.{k}") for k, v in options.items()}
    try:
        return cls(**values)
    except StageConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise StageConfigError(f"{where}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A stage config as plain JSON-able data (tuples as lists, enums as values): what manifests record."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


# --------------------------------------------------------------------------------------------------
# The stage base
# --------------------------------------------------------------------------------------------------


class resource(functools.cached_property):  # noqa: N801 - used like functools.cached_property
    """A model, session or graph a stage builds on first use and keeps (like ``functools.cached_property``);
    :class:`Stage` leaves it out when pickled, so workers build their own."""


class Stage:
    """Base of every pipeline stage (see the module docstring).

    Subclasses set the class attributes below and implement ``__call__``; models are :class:`resource`
    properties. ``config`` is the typed config (default: ``config_class()``), ``context`` the run's
    :class:`StageContext`, ``policy`` the :class:`ErrorPolicy`.
    """

    name: ClassVar[str] = ""
    """``error_stage`` of the rows this stage fails; the annotator name (``"hands"``)."""
    version: ClassVar[str] = "1"
    """Written into records' ``backends``; bump when the output changes for the same input."""
    config_class: ClassVar[type | None] = None
    """Dataclass of the stage's options (``stages[].options`` in the job config); None: no options."""
    resources: ClassVar[StageResources] = StageResources()
    """Default actor resources."""
    default_backend: ClassVar[bool] = False
    """The backend an annotator name (``--stages hands``) means when the annotator has several."""
    required: ClassVar[tuple[str, ...]] = ()
    """Columns the stage reads; a batch without one is the job's configuration error (``KeyError``)."""
    outputs: ClassVar[tuple[str, ...]] = ()
    """Record fields the stage writes (:meth:`start` makes them at the schema's fill values)."""
    requirement_hint: ClassVar[str] = ""
    """What to run first when a required column is missing (appended to the error)."""
    weight_options: ClassVar[tuple[str, ...]] = ()
    """Options naming weight files the stage loads (paths or fsspec URLs): the driver checks that they exist
    before the job starts, ``--dry-run`` included."""

    def __init__(self, config: Any = None, policy: ErrorPolicy | str = ErrorPolicy.QUARANTINE, *,
                 context: StageContext | None = None) -> None:
        if config is None and self.config_class is not None:
            config = self.config_class()
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}; "
                            "build it with annotators.base.build_config(cls.config_class, options, where)")
        self.config = config
        self.context = context or StageContext()
        self.policy = ErrorPolicy(policy)

    def __getstate__(self) -> dict[str, Any]:
        lazy = {n for c in type(self).__mro__ for n, v in vars(c).items() if isinstance(v, resource)}
        return {k: v for k, v in self.__dict__.items() if k not in lazy}

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    # -- inputs and outputs -----------------------------------------------------------------------

    def check_columns(self, batch: Batch, columns: Sequence[str] | None = None) -> int:
        """Number of rows; a ``KeyError`` naming the first of ``columns`` (default :attr:`required`) the batch
        lacks."""
        for col in self.required if columns is None else columns:
            if col not in batch:
                hint = f" ({self.requirement_hint})" if self.requirement_hint else ""
                raise KeyError(f"{self.name} stage needs a {col!r} column{hint}; got {sorted(batch)}")
        n = batch_len(batch)
        ensure_error_columns(batch)
        return n

    def start(self, batch: Batch) -> tuple[int, Batch]:
        """Checks the inputs; returns the row count and the :attr:`outputs` columns at the schema's fill
        values (to be filled for the rows the stage annotates)."""
        n = self.check_columns(batch)
        return n, repeat_rows(schemas.fill_values(self.outputs), n)

    # -- failures ---------------------------------------------------------------------------------

    def fail(self, batch: Batch, row: int, error: BaseException | str) -> None:
        """Row ``row`` cannot be annotated: mark it failed by this stage with the reason (an exception's
        :func:`error_digest`, or the text), or under :attr:`ErrorPolicy.RAISE` raise (the exception itself,
        or a ``ValueError`` with the text)."""
        if self.policy is ErrorPolicy.RAISE:
            if isinstance(error, BaseException):
                raise error
            raise ValueError(error)
        reason = error_digest(error) if isinstance(error, BaseException) else str(error)
        log.debug("stage %s failed row %d: %s", self.name, row, reason)
        mark_failed(batch, row, self.name, reason)

    def fail_rows(self, batch: Batch, rows: Sequence[int] | np.ndarray, error: BaseException) -> None:
        """Fail every row of ``rows`` with one error (a batch-level failure); raises under ``RAISE``."""
        if self.policy is ErrorPolicy.RAISE:
            raise error
        reason = error_digest(error)
        log.warning("stage %s failed a batch of %d rows: %s", self.name, len(rows), reason)
        for i in rows:
            mark_failed(batch, int(i), self.name, reason)

    def per_row(self, batch: Batch, fn: Callable[[int], Any], rows: np.ndarray | None = None) -> list[tuple[int, Any]]:
        """``(i, fn(i))`` for each good row ``i`` (of the mask ``rows  # [B]`` when given); a row whose ``fn``
        raises goes through :meth:`fail`."""
        good = good_rows(batch) if rows is None else good_rows(batch) & np.asarray(rows, bool)
        done = []
        for i in np.flatnonzero(good):
            try:
                done.append((int(i), fn(int(i))))
            except Exception as exc:  # noqa: BLE001 - the policy decides
                self.fail(batch, int(i), exc)
        return done

    def map_rows(self, batch: Batch, fn: Callable[[dict[str, Any]], dict[str, Any]],
                 fills: Mapping[str, Any]) -> Batch:
        """Run ``fn(row) -> new fields`` on every good row and write the fields as columns; rows it skipped or
        that failed (:meth:`fail`) get ``fills`` (column -> one row's value: the schema's fill values, or
        per-stage values for columns outside the schema). Columns are stacked; object columns stay object."""
        n = self.check_columns(batch)
        columns = list(batch)
        results = dict(self.per_row(batch, lambda i: fn({k: batch[k][i] for k in columns})))
        outputs = [results.get(i) or dict(fills) for i in range(n)]
        for key, fill in fills.items():
            batch[key] = stack_column([o.get(key, fill) for o in outputs], like=fill)
        return batch


@dataclass(frozen=True)
class FitStageConfig:
    """Settings every fitting stage has (``hands/mano-ik``, ``face/flame-fit``): where and how it solves."""

    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: str = "float64"
    """``float64`` or ``float32`` for the solve."""
    chunk_size: int = 256
    """Most hands / faces per solve (larger batches are split)."""
    residual_scale: float = 1.0
    """Fit error at which the confidence factor is ``exp(-1)`` (unit: see each stage)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{name}.dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.residual_scale <= 0 or self.chunk_size < 1:
            raise ValueError(f"{name}.residual_scale must be positive and chunk_size at least 1")
        check_options = getattr(super(), "__post_init__", None)
        if check_options is not None:  # the solver options this config also is
            check_options()


class FitStage(Stage):
    """A stage that solves a body-model fit in torch: the solver's layer (:meth:`build_layer`) is built on
    first use on the configured device and dtype, and the rows to fit are solved ``chunk_size`` at a time."""

    config: FitStageConfig
    resources = StageResources(num_cpus=0.25)
    """Default actor resources (give it ``num_gpus`` in the stage spec to solve on a GPU)."""
    default_backend = True

    def build_layer(self) -> Any:
        """Load the body model and make the solver's layer (a ``torch.nn.Module``; subclasses)."""
        raise NotImplementedError

    @resource
    def layer(self) -> Any:
        """The model layer the solver uses, on the configured device and dtype (built once)."""
        import torch

        from model.checkpoints import torch_device

        dtype = {"float32": torch.float32, "float64": torch.float64}[self.config.dtype]
        return self.build_layer().to(device=torch_device(self.config.device), dtype=dtype)

    def chunks(self, where: np.ndarray, values: np.ndarray) -> Any:
        """``(where[i:j], values[i:j])``, ``chunk_size`` at a time, the values as a tensor on the layer's
        device and dtype (``where  # [M, ...]`` says where each of ``values  # [M, ...]`` goes)."""
        import torch

        ref = next(b for b in self.layer.buffers() if b.is_floating_point())
        for start in range(0, len(where), self.config.chunk_size):
            stop = start + self.config.chunk_size
            yield where[start:stop], torch.as_tensor(values[start:stop], dtype=ref.dtype, device=ref.device)


@dataclass
class Registry:
    """Name -> factory map for a family of components (``keypoints/mediapipe``, ``hands/hamer``...).

    Components register with the decorator; drivers build them by name from config, so adding a
    backend never means editing an if/elif chain. ``modules`` maps the part of a name before ``/``
    to the module (or modules, tried in order) that register it, imported on first lookup.
    """

    kind: str
    modules: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    _entries: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        for module in self._modules_of(name.split("/", 1)[0]):
            if name in self._entries:
                break
            importlib.import_module(module)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def _modules_of(self, prefix: str) -> tuple[str, ...]:
        modules = self.modules.get(prefix, ())
        return (modules,) if isinstance(modules, str) else tuple(modules)

    def names(self) -> list[str]:
        """Every registered name (imports the known modules that are installed first)."""
        for module in sorted({m for prefix in self.modules for m in self._modules_of(prefix)}):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a broken import inside the module is an error, not absence
                    raise
        return sorted(self._entries)


STAGES = Registry(
    "stage",
    modules={
        "persons": "annotators.persons",
        "keypoints": ("annotators.keypoints", "annotators.wholebody_onnx"),
        "track": "annotators.track",
        "body": ("annotators.body", "annotators.body_pear"),
        "hands": "annotators.hands",
        "face": "annotators.face",
        "refine": "annotators.refine",
        "quality": "annotators.quality",
    },
)
"""Every pipeline stage class, by ``"<annotator>/<backend>"`` name (``"persons/mediapipe"``, ...)."""
