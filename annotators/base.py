"""The stage contract shared by every annotator, refinement and quality stage.

A **batch** is ``dict[str, np.ndarray]`` (Ray Data's ``map_batches`` contract, ``batch_format="numpy"``):
every column has the same length ``B`` along axis 0. Variable-size things (images, crops) travel as
``dtype=object`` columns holding one ``np.ndarray`` per row.

A **stage** is a callable class: ``__init__(config)`` loads weights once, ``__call__(batch) -> batch``
returns the batch with its fields added. The same object runs under Ray Data actor pools, in a Beam
``DoFn``, and in a plain loop or unit test. Stages import neither Ray nor Beam.

Errors never drop a row silently. Every batch carries two string columns:

- ``error_stage``: ``""`` while the row is good, else the name of the stage that failed it;
- ``error_reason``: ``""`` or a one-line reason (exception type and message, plus a digest of the
  traceback).

A stage skips rows whose ``error_stage`` is set (it still returns them, with its own columns filled by
placeholders), and the sink sends them to the quarantine table. :func:`apply_per_row` implements that
policy for stages that work one row at a time; batched stages use :func:`good_rows` and
:func:`mark_failed`.

Columns a stage adds for rows it skipped must still exist with the right dtype and shape (fill with
zeros/NaN and a ``has_*`` flag of False), so that downstream concatenation stays rectangular.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"


class ErrorPolicy(str, enum.Enum):
    """What a stage does with a row that raises."""

    RAISE = "raise"  # tests: fail loudly
    QUARANTINE = "quarantine"  # jobs: record the reason on the row and go on


@dataclass
class StageResources:
    """Resources a stage asks the driver for (mapped to a Ray actor pool / Beam worker)."""

    num_cpus: float = 0.25
    """CPU share per actor. Keep it fractional on small machines so Ray Data's read tasks never starve."""
    num_gpus: float = 0.0
    """GPU share per actor (fractional allowed: 0.25 packs four actors on one GPU)."""
    batch_size: int = 8
    """Rows per call of the stage."""
    num_actors: int = 1
    """Actors in the pool (an upper bound when ``autoscale`` is set)."""


@runtime_checkable
class Stage(Protocol):
    """A pipeline stage: a callable class over batches."""

    name: str

    def __call__(self, batch: Batch) -> Batch: ...


def batch_len(batch: Mapping[str, np.ndarray]) -> int:
    """Number of rows of a batch; raises ``ValueError`` naming the column whose length disagrees."""
    n = None
    for key, col in batch.items():
        length = len(col)
        if n is None:
            n = length
        elif length != n:
            raise ValueError(f"batch column {key!r} has {length} rows, expected {n}")
    return 0 if n is None else n


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


def apply_per_row(
    batch: Batch,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    stage: str,
    placeholders: Mapping[str, Any],
    policy: ErrorPolicy = ErrorPolicy.QUARANTINE,
) -> Batch:
    """Run ``fn(row) -> new fields`` on every good row; fill ``placeholders`` for skipped/failed rows.

    ``placeholders`` maps each column ``fn`` returns to the value used for rows it did not produce
    (an array of the right shape/dtype, or a scalar/string). Columns are stacked into arrays; object
    columns stay object arrays.
    """
    n = batch_len(batch)
    ensure_error_columns(batch)
    ok = good_rows(batch)
    outputs: list[dict[str, Any]] = []
    for i in range(n):
        out: dict[str, Any] | None = None
        if ok[i]:
            row = {k: v[i] for k, v in batch.items()}
            try:
                out = fn(row)
            except Exception as exc:  # noqa: BLE001 - the policy decides
                if policy is ErrorPolicy.RAISE:
                    raise
                reason = error_digest(exc)
                log.debug("stage %s failed row %d: %s", stage, i, reason)
                mark_failed(batch, i, stage, reason)
        outputs.append(out if out is not None else dict(placeholders))
    for key, placeholder in placeholders.items():
        values = [o.get(key, placeholder) for o in outputs]
        batch[key] = stack_column(values, like=placeholder)
    return batch


def stack_column(values: list[Any], like: Any) -> np.ndarray:
    """Stack per-row values into one column; object dtype for strings and ragged arrays."""
    if isinstance(like, str) or any(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    try:
        arr = np.stack([np.asarray(v) for v in values]) if values else np.zeros((0,) + np.shape(like))
    except ValueError:  # ragged
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
    return arr


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
        "body": "annotators.body",
        "hands": "annotators.hands",
        "face": "annotators.face",
        "refine": "annotators.refine",
        "quality": "annotators.refine",
    },
)
"""Every pipeline stage class, by ``"<annotator>/<backend>"`` name (``"persons/mediapipe"``, ...)."""
