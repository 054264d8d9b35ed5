"""Work units and the shard sink.

**Partition rule.** All samples of the job are sorted by sample key (Python string order) and cut into
consecutive runs of ``images_per_shard`` samples: shard ``i`` holds sorted samples
``[i * n, (i + 1) * n)``. The same inputs and ``images_per_shard`` always give the same shards; the
stats file of a committed shard records the sha256 of its sample keys, so a re-run over changed inputs
is refused instead of silently mixing two partitions.

**Sink.** :class:`ShardSink` receives the pipeline's output rows in any order and any batching. Each row
is one person, one failed sample/person (``error_stage`` set), or one "no person" marker, and carries
``sample_rows``: how many rows its sample produced in total. A sample is complete when that many
distinct rows ``(sample_key, person_index)`` have arrived (a row arriving twice, e.g. after a retried
task, is counted once); a shard is complete when all its samples are. A complete shard is written at
once: persons sorted by key into the WebDataset tar and the Parquet file, failures into its quarantine
file, and its stats file last (which commits it). Nothing in a shard's tar, Parquet or quarantine file
depends on timing or arrival order; the stats file also holds timings.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import schemas
from schemas.keypoints import PARTS as KEYPOINT_PARTS
from annotators.base import ERROR_REASON, ERROR_STAGE, error_digest
from annotators.batches import Batch, batch_len
from pipelines.io.quarantine import QuarantineRow, write_quarantine
from pipelines.io.samples import Sample
from pipelines.io.shards import ShardWriter, shard_name

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

SAMPLE_ROWS = "sample_rows"
"""Column: number of output rows of the row's sample (set right after the persons stage)."""
NO_PERSONS = "no_persons"
"""Column: True on the marker row of a sample in which no person was found."""
CROP_JPEG = "crop_jpeg"
"""Column: JPEG bytes of the person crop (``None``/empty: no crop)."""
SINK_STAGE = "sink"
"""``stage`` of persons whose record fails schema validation."""

HIST_BINS = 20
"""Bins of the confidence histograms over [0, 1] kept in each shard's stats."""


class IncompleteShardsError(RuntimeError):
    """The input stream ended before some shards received all their samples (they stay uncommitted)."""


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: a shard index and its samples (sorted by key)."""

    index: int
    samples: tuple[Sample, ...]

    @property
    def keys(self) -> list[str]:
        return [s.sample_key for s in self.samples]

    @property
    def fingerprint(self) -> str:
        """sha256 of the shard's sample keys (newline-joined)."""
        return keys_sha256(self.keys)


def keys_sha256(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


PARTITION_RULE = ("samples sorted by sample_key; the frames of each video clip (segment) are a shard of their own; "
                  "the still images between clips are cut into consecutive runs of images_per_shard")
"""How :func:`plan_shards` cuts samples into shards (recorded in the manifest)."""


def plan_shards(samples: Sequence[Sample], images_per_shard: int) -> list[ShardSpec]:
    """Cut ``samples`` (sorted by key here) into shards (:data:`PARTITION_RULE`): a video clip's frames (video
    samples sharing one ``track_id``, the clip or segment key) are one shard, so the tracker and the identity
    sharing see the whole clip; still images go in runs of ``images_per_shard``."""
    ordered = sorted(samples, key=lambda s: s.sample_key)
    groups: list[list[Sample]] = []
    current: list[Sample] = []
    current_clip: str | None = None
    for sample in ordered:
        clip = sample.track_id if sample.kind == "video" and sample.track_id else None
        if current and (clip != current_clip or (clip is None and len(current) == images_per_shard)):
            groups.append(current)
            current = []
        current_clip = clip
        current.append(sample)
    if current:
        groups.append(current)
    return [ShardSpec(i, tuple(group)) for i, group in enumerate(groups)]


def reason_class(stage: str, reason: str) -> str:
    """``"stage: kind"`` of a failure, where kind is the reason's text before its first ``:``."""
    return f"{stage}: {reason.split(':', 1)[0].strip() or 'unknown'}"


QUALITY_HIST_RANGES: dict[str, tuple[float, float]] = {
    "quality_reproj_norm_body": (0.0, 0.1), "quality_reproj_norm_face": (0.0, 0.2),
    "quality_reproj_norm_hands": (0.0, 0.3), "quality_silhouette_iou": (0.0, 1.0),
    "quality_silhouette_boundary_iou": (0.0, 1.0),
}
"""Quality fields histogrammed in each shard's stats, with the range of their :data:`HIST_BINS` bins (values
beyond the range count in the last bin, NaN "not measured" apart)."""


def quality_histograms(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per quality field of the written persons: ``{"range": [lo, hi], "counts": [HIST_BINS], "nan": n}``
    (both hands of ``quality_reproj_norm_hands`` count)."""
    out = {}
    for name, (lo, hi) in QUALITY_HIST_RANGES.items():
        values = np.array([v for r in records for v in np.asarray(r[name], np.float64).reshape(-1)], np.float64)
        measured = values[~np.isnan(values)]
        counts = np.histogram(np.clip(measured, lo, hi), bins=HIST_BINS, range=(lo, hi))[0]
        out[name] = {"range": [lo, hi], "counts": counts.tolist(), "nan": int(np.isnan(values).sum())}
    return out


def flag_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Written persons carrying each :class:`schemas.QualityFlag` bit, by flag name."""
    flags = np.array([int(r["quality_flags"]) for r in records], dtype=np.int64)
    return {flag.name: int(((flags & int(flag)) != 0).sum()) for flag in schemas.QualityFlag}


def confidence_histograms(records: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Counts over ``HIST_BINS`` bins of [0, 1]: keypoint confidences per part, and per-person conf fields."""
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    if records:
        kp = np.stack([r["kp2d_wholebody"][:, 2] for r in records])  # [P, 133]
        values = {f"kp_{part}": kp[:, part_slice].ravel() for part, part_slice in KEYPOINT_PARTS.items()}
        values["conf_body"] = np.array([r["conf_body"] for r in records])
        values["conf_face"] = np.array([r["conf_face"] for r in records])
        hands = np.stack([r["conf_hands"] for r in records])  # [P, 2]
        values["conf_left_hand"], values["conf_right_hand"] = hands[:, 0], hands[:, 1]
    else:
        values = {}
    return {name: np.histogram(np.clip(v, 0.0, 1.0), bins=edges)[0].tolist() for name, v in values.items()}


@dataclass
class _ShardState:
    spec: ShardSpec
    remaining: set[str]
    seen: Counter = field(default_factory=Counter)
    rows: set[tuple[str, int]] = field(default_factory=set)
    persons: dict[str, tuple[dict[str, Any], bytes | None]] = field(default_factory=dict)
    quarantine: dict[str, QuarantineRow] = field(default_factory=dict)
    no_persons: list[str] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class SinkTotals:
    """Counts over the shards this sink committed."""

    shards: int = 0
    samples: int = 0
    persons: int = 0
    samples_without_persons: int = 0
    quarantined: Counter = field(default_factory=Counter)
    """``reason_class`` -> count."""
    duplicates_dropped: int = 0
    write_s: float = 0.0


class ShardSink:
    """Collects output rows per shard and commits each shard as soon as all its samples are in.

    Args:
        fs, root: output filesystem and root path on it.
        split: split name of the shards.
        shards: the shards to write (their samples define completeness).
        run_fields: record fields that are the same for the whole run (``code_version``, ``config_hash``,
            ``body_model_kit``, ``asset_hashes``, ``backends``, ``split``).
        parquet_images: store crop JPEGs in the Parquet files too.
        on_commit: called with ``(shard name, stats)`` after each commit.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, split: str, shards: Sequence[ShardSpec],
                 run_fields: Mapping[str, str], *, parquet_images: bool = False,
                 on_commit: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.fs, self.root, self.split = fs, root, split
        self.run_fields = dict(run_fields)
        self.parquet_images = parquet_images
        self.on_commit = on_commit
        ordered = sorted(shards, key=lambda s: s.index)
        self._first_keys = [s.samples[0].sample_key for s in ordered]
        self._specs = ordered
        self._open: dict[int, _ShardState] = {}
        self._done: set[int] = set()
        self._sources = {s.sample_key: s.source for spec in ordered for s in spec.samples}
        self.totals = SinkTotals()

    @property
    def pending(self) -> list[int]:
        """Indices of shards not committed yet."""
        return [s.index for s in self._specs if s.index not in self._done]

    def _state_for(self, sample_key: str) -> _ShardState | None:
        pos = bisect.bisect_right(self._first_keys, sample_key) - 1
        spec = self._specs[pos] if pos >= 0 else None
        if spec is None or sample_key not in self._sources or spec.index in self._done:
            return None
        state = self._open.get(spec.index)
        if state is None:
            state = self._open[spec.index] = _ShardState(spec, remaining=set(spec.keys))
        return state

    def add(self, batch: Batch) -> None:
        """Take a batch of output rows; commits every shard it completes."""
        n = batch_len(batch)
        columns = list(batch)
        touched: set[int] = set()
        for i in range(n):
            row = {c: batch[c][i] for c in columns}
            sample_key = str(row["sample_key"])
            state = self._state_for(sample_key)
            if state is None:
                if sample_key not in self._sources:
                    raise KeyError(f"the pipeline returned a row for sample {sample_key!r}, which no pending shard holds")
                self.totals.duplicates_dropped += 1  # its shard is already committed
                continue
            ident = (sample_key, int(row.get("person_index", -1)))
            if ident in state.rows:
                state.duplicates += 1
                continue
            state.rows.add(ident)
            self._take_row(state, row)
            state.seen[sample_key] += 1
            if state.seen[sample_key] >= int(row[SAMPLE_ROWS]):
                state.remaining.discard(sample_key)
            touched.add(state.spec.index)
        for index in sorted(touched):
            if not self._open[index].remaining:
                self._commit(self._open.pop(index))

    def _take_row(self, state: _ShardState, row: dict[str, Any]) -> None:
        sample_key = str(row["sample_key"])
        person_index = int(row.get("person_index", -1))
        if bool(row.get(NO_PERSONS, False)):
            state.no_persons.append(sample_key)
            return
        stage, reason = str(row.get(ERROR_STAGE, "") or ""), str(row.get(ERROR_REASON, "") or "")
        key = schemas.person_key(sample_key, person_index) if person_index >= 0 else sample_key
        if not stage:
            try:
                record = build_record(row, self.run_fields)
            except (schemas.SchemaError, KeyError, TypeError, ValueError) as exc:
                stage, reason = SINK_STAGE, error_digest(exc)
            else:
                crop = row.get(CROP_JPEG)
                state.persons[record["key"]] = (record, bytes(crop) if crop is not None and len(crop) else None)
                return
        state.quarantine[key] = QuarantineRow(key, sample_key, self._sources[sample_key], stage, reason)

    def _commit(self, state: _ShardState) -> None:
        t0 = time.perf_counter()
        spec = state.spec
        keys = sorted(state.persons)
        records = [state.persons[k][0] for k in keys]
        quarantine = sorted(state.quarantine.values())
        write_quarantine(self.fs, self.root, self.split, spec.index, quarantine)
        by_reason = Counter(reason_class(q.stage, q.reason) for q in quarantine)
        with ShardWriter(self.root, self.split, spec.index, filesystem=self.fs,
                         parquet_images=self.parquet_images) as writer:
            for key in keys:
                record, crop = state.persons[key]
                writer.add(record, crop)
            write_s = time.perf_counter() - t0
            stats = {
                "samples": len(spec.samples),
                "samples_sha256": spec.fingerprint,
                "persons": len(records),
                "samples_without_persons": sorted(state.no_persons),
                "quarantined": len(quarantine),
                "quarantined_by_reason": dict(sorted(by_reason.items())),
                "duplicates_dropped": state.duplicates,
                "confidence_histograms": confidence_histograms(records),
                "quality_histograms": quality_histograms(records),
                "quality_flags": flag_counts(records),
                "config_hash": self.run_fields.get("config_hash", ""),
                "code_version": self.run_fields.get("code_version", ""),
                "timings": {"write_s": round(write_s, 4)},
            }
            writer.commit(stats)
        self._done.add(spec.index)
        t = self.totals
        t.shards += 1
        t.samples += len(spec.samples)
        t.persons += len(records)
        t.samples_without_persons += len(state.no_persons)
        t.quarantined.update(by_reason)
        t.duplicates_dropped += state.duplicates
        t.write_s += time.perf_counter() - t0
        log.info("committed shard %s: %d samples, %d persons, %d quarantined",
                 shard_name(self.split, spec.index), len(spec.samples), len(records), len(quarantine))
        if self.on_commit is not None:
            self.on_commit(shard_name(self.split, spec.index), stats)

    def finish(self) -> None:
        """Check that every shard was committed; raise :class:`IncompleteShardsError` naming the rest."""
        missing = self.pending
        if missing:
            detail = []
            for index in missing[:5]:
                state = self._open.get(index)
                lost = sorted(state.remaining) if state else [s.sample_key for s in self._specs if s.index == index][:1]
                detail.append(f"{shard_name(self.split, index)} (e.g. sample {lost[0]!r})")
            raise IncompleteShardsError(
                f"{len(missing)} shard(s) did not receive all their samples and were not committed: "
                f"{', '.join(detail)}; re-run with --mode incremental to finish them"
            )


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """``[3, 3]`` float32 pinhole intrinsics for an image whose camera is unknown: focal length = the image
    diagonal in px, principal point at the image centre."""
    f = float(np.hypot(width, height))
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=np.float32)


def build_record(row: Mapping[str, Any], run_fields: Mapping[str, str]) -> dict[str, Any]:
    """A canonical (validated) record from one output row plus the run-level fields; ``cam_intrinsics``
    defaults to :func:`default_intrinsics` when no stage estimated the camera."""
    values = {f: _plain(row[f]) for f in schemas.FIELD_NAMES if f in row and f not in run_fields}
    values.update(run_fields)
    if "cam_intrinsics" not in values:
        values["cam_intrinsics"] = default_intrinsics(int(row["image_width"]), int(row["image_height"]))
    values["key"] = schemas.person_key(str(row["sample_key"]), int(row["person_index"]))
    return schemas.validate(schemas.empty_record(**values))


def _plain(value: Any) -> Any:
    """Numpy string scalars as ``str``; everything else unchanged."""
    return str(value) if isinstance(value, np.str_) else value


def shard_stats_totals(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counts and histograms of shard stats (committed in this run or before)."""
    totals: dict[str, Any] = {"shards": len(stats), "samples": 0, "persons": 0, "samples_without_persons": 0,
                              "quarantined": 0, "quarantined_by_reason": Counter(), "duplicates_dropped": 0}
    hist: dict[str, np.ndarray] = {}
    for s in stats:
        for k in ("samples", "persons", "quarantined", "duplicates_dropped"):
            totals[k] += int(s.get(k, 0))
        totals["samples_without_persons"] += len(s.get("samples_without_persons", []))
        totals["quarantined_by_reason"].update(s.get("quarantined_by_reason", {}))
        for name, counts in s.get("confidence_histograms", {}).items():
            hist[name] = hist.get(name, np.zeros(HIST_BINS, dtype=np.int64)) + np.asarray(counts, dtype=np.int64)
    totals["quarantined_by_reason"] = dict(sorted(totals["quarantined_by_reason"].items()))
    totals["confidence_histograms"] = {k: v.tolist() for k, v in sorted(hist.items())}
    quality: dict[str, dict[str, Any]] = {}
    flags: Counter = Counter()
    for s in stats:
        for name, h in s.get("quality_histograms", {}).items():
            q = quality.setdefault(name, {"range": h["range"], "counts": [0] * len(h["counts"]), "nan": 0})
            q["counts"] = [a + b for a, b in zip(q["counts"], h["counts"])]
            q["nan"] += int(h["nan"])
        flags.update(s.get("quality_flags", {}))
    totals["quality_histograms"] = dict(sorted(quality.items()))
    totals["quality_flags"] = dict(sorted(flags.items()))
    return totals
