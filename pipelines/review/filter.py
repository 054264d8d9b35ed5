"""``pearl filter``: a new shard set holding only the persons a SQL condition (and optionally the review
decisions) selects, with its own manifest naming its parent run and the filter.

The condition is the user's own SQL, run by DuckDB as the ``WHERE`` clause of one ``SELECT`` over the
parent's committed Parquet shards (``SELECT key FROM persons WHERE <condition>``): the columns are the
record fields (``docs/schema.md``), lists are 1-based. It must be a single expression; anything that is
not one ``SELECT`` statement is refused, and the query only reads. ``--decisions accepted`` keeps only the
persons whose latest review decision is ``accept``; ``not-rejected`` drops those rejected.

The selected persons are copied record by record from the parent's WebDataset tars, decoded with pearl's
safe decoders (:func:`pipelines.io.shards.iter_wds`: no pickle is ever loaded) and validated
(:func:`schemas.members_to_record`), then written through :class:`pipelines.io.shards.ShardWriter`, so
the result is a regular pearl shard set (tar + Parquet + stats per shard, the same commit protocol, crops
in the Parquet files too when the parent had them). Persons keep their split; each split's shards are
numbered from 0 and hold ``persons_per_shard`` persons in the parent's order (shard, then key). The
manifest is written last. Nothing depends on time, so the same parent, filter and options give
byte-identical files, stats and manifest included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import schemas
from pipelines.io.shards import ShardWriter, committed_shards, iter_wds
from pipelines.review.data import MANIFEST, ReviewRun

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

DECISION_MODES = {"accepted": "d.decision = 'accept'", "not-rejected": "d.decision IS DISTINCT FROM 'reject'"}
"""``--decisions`` values and the condition each puts on the decisions table."""
PROVENANCE_KEYS = ("code_version", "config_hash", "config", "body_model_kit", "asset_hashes", "backends")
"""Per-split manifest entries copied from the parent (what made the records)."""


class FilterError(ValueError):
    """The filter cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class FilterResult:
    """What :func:`filter_run` wrote."""

    out: str
    persons: int
    shards: dict[str, int]
    """Split -> shards written."""
    manifest: dict[str, Any]


def check_where(where: str) -> None:
    """Refuse a condition that is not a single SQL expression (a ``;``, a second statement...)."""
    import duckdb

    if not where.strip():
        raise FilterError("--where is empty: give a SQL condition over the Parquet columns, e.g. \"has_body AND "
                          "quality_reproj_norm_body < 0.05\"")
    try:
        statements = duckdb.extract_statements(f"SELECT key FROM persons WHERE ({where})")
    except duckdb.Error as exc:
        raise FilterError(f"--where {where!r} is not valid SQL: {exc}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise FilterError(f"--where {where!r} must be one SQL condition (a WHERE clause), not statements")


def _selected(run: ReviewRun, where: str, decisions: str | None) -> list[tuple[str, str]]:
    """``(parquet filename, key)`` of the chosen persons, in shard then key order."""
    import duckdb

    inner = f"SELECT filename, key FROM persons WHERE ({where})"
    if decisions is None:
        sql = f"SELECT filename, key FROM ({inner}) ORDER BY filename, key"
    else:
        sql = (f"SELECT p.filename, p.key FROM ({inner}) p LEFT JOIN decisions d ON p.key = d.key "
               f"WHERE {DECISION_MODES[decisions]} ORDER BY p.filename, p.key")
    try:
        with run.cursor() as cur:
            return [(str(f), str(k)) for f, k in cur.execute(sql).fetchall()]
    except duckdb.Error as exc:
        raise FilterError(f"--where {where!r} failed over the Parquet columns of {run.out}: {exc}") from None


def _parent_id(run: ReviewRun) -> dict[str, Any]:
    path = f"{run.root}/{MANIFEST}"
    digest = hashlib.sha256(run.fs.cat_file(path)).hexdigest() if run.fs.exists(path) else None
    out = os.path.abspath(run.out) if run.local else run.out.rstrip("/")
    return {"out": out, "manifest_sha256": digest, "persons": run.count(), "shards": len(run.shards)}


def _check_target(fs: AbstractFileSystem, root: str, out: str, parent: ReviewRun) -> None:
    same = os.path.abspath(root) == os.path.abspath(parent.root) if parent.local else root == parent.root
    if same:
        raise FilterError("--out must be another folder than the run being filtered")
    if fs.exists(f"{root}/{MANIFEST}") or committed_shards(root, filesystem=fs):
        raise FilterError(f"--out {out} already holds a run (manifest.json or committed shards): choose a new folder "
                          "or delete it first")


def filter_run(parent: str, out: str, where: str | None = None, *, decisions: str | None = None,
               persons_per_shard: int = 1000, parent_filesystem: AbstractFileSystem | None = None) -> FilterResult:
    """Write the persons of run ``parent`` that ``where`` (SQL over the Parquet columns; None: all) and
    ``decisions`` (``accepted``, ``not-rejected`` or None) select into a new shard set ``out`` (see the
    module docstring). ``out`` is a local path or fsspec URL."""
    import fsspec

    if decisions is not None and decisions not in DECISION_MODES:
        raise FilterError(f"--decisions {decisions!r}: expected one of {', '.join(DECISION_MODES)}")
    if persons_per_shard < 1:
        raise FilterError(f"--persons-per-shard must be at least 1, got {persons_per_shard}")
    condition = "TRUE" if where is None else where
    check_where(condition)
    run = ReviewRun(parent, filesystem=parent_filesystem)
    try:
        fs, root = fsspec.core.url_to_fs(out)
        root = root.rstrip("/")
        _check_target(fs, root, out, run)
        if decisions is not None and not run.decisions.all():
            raise FilterError(f"--decisions {decisions}: {run.url(run.decisions.path)} holds no decisions yet (review "
                              "the run with `pearl review` first)")
        selected = _selected(run, condition, decisions)
        by_file: dict[str, set[str]] = defaultdict(set)
        for filename, key in selected:
            by_file[filename].add(key)
        counts = _copy(run, by_file, fs, root, persons_per_shard)
        entries = run.split_entries()
        manifest = {
            "schema_version": schemas.SCHEMA_VERSION,
            "parent": _parent_id(run),
            "filter": {"where": where, "decisions": decisions, "persons_per_shard": persons_per_shard},
            "persons": len(selected),
            "splits": {split: {**{k: entries.get(split, {})[k] for k in PROVENANCE_KEYS if k in entries.get(split, {})},
                               "shards": c["shards"], "persons": c["persons"]}
                       for split, c in sorted(counts.items())},
        }
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        fs.makedirs(root, exist_ok=True)
        tmp = f"{root}/.tmp-{uuid.uuid4().hex[:8]}-{MANIFEST}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, f"{root}/{MANIFEST}")
    finally:
        run.close()
    log.info("filter: %d of %d persons of %s -> %s (%s)", len(selected), manifest["parent"]["persons"], parent, out,
             ", ".join(f"{s}: {c['shards']} shard(s)" for s, c in sorted(counts.items())) or "no shards")
    return FilterResult(out, len(selected), {s: c["shards"] for s, c in counts.items()}, manifest)


def _copy(run: ReviewRun, by_file: dict[str, set[str]], fs: AbstractFileSystem, root: str,
          persons_per_shard: int) -> dict[str, dict[str, int]]:
    """Copy the chosen records shard by shard; returns per split ``{"shards", "persons"}``."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"shards": 0, "persons": 0})
    writer: ShardWriter | None = None
    parents: list[str] = []

    def commit() -> None:
        nonlocal writer, parents
        if writer is not None:
            writer.commit({"persons": len(writer), "parent_shards": sorted(set(parents))})
            counts[writer.split]["shards"] += 1
            writer, parents = None, []

    try:
        for filename in sorted(by_file):
            wanted = by_file[filename]
            name = filename.rsplit("/", 1)[-1][: -len(".parquet")]
            split = name.rsplit("-", 1)[0]
            found = set()
            tar = run.tar_path(filename)
            for sample in iter_wds([tar], filesystem=None if run.local else run.fs):
                key = str(sample.get(schemas.META_MEMBER, {}).get("key", ""))
                if key not in wanted:
                    continue
                record = schemas.members_to_record(sample)
                if writer is not None and (writer.split != split or len(writer) >= persons_per_shard):
                    commit()
                if writer is None:
                    writer = ShardWriter(root, split, counts[split]["shards"], filesystem=fs,
                                         parquet_images=run.parquet_images)
                crop = sample.get(schemas.CROP_MEMBER)
                writer.add(record, bytes(crop) if crop is not None else None)
                parents.append(name)
                counts[split]["persons"] += 1
                found.add(key)
            missing = sorted(wanted - found)
            if missing:
                raise FilterError(f"{tar} lacks {len(missing)} person(s) its Parquet file lists (e.g. {missing[0]!r}): "
                                  "the parent shard is damaged")
        commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return dict(counts)
