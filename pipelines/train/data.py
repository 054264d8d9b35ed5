"""Training data from WebDataset URLs: shard lists, node splitting, resampling, weighted mixing, shuffling,
epochs, exact resume, and the loaders Lightning iterates.

**URLs** (:func:`resolve_urls`): brace patterns (``OUT/wds/train-{000000..000127}.tar``), lists, local
paths and glob patterns (``OUT/wds/train-*.tar``), a folder (every ``*.tar`` of its ``wds/``, all splits),
``pipe:`` commands and fsspec URLs (``s3://...``); shards are read
by :func:`pipelines.io.shards.iter_wds` and decoded only by the project's safe decoders
(:func:`pipelines.io.shards.decode_sample`: ``.npz`` without pickles, JSON; no ``.pyd`` is ever unpickled).

**The stream of one process** (rank ``r`` of ``R``, epoch ``e``), :func:`rank_stream`:

- each shard set is read in its own endless order: ``resampled`` draws a shard at random (with
  replacement) from the set, its own generator per rank; otherwise the set's shards are put in a fresh
  order each pass (the same order on every rank) and rank ``r`` reads shards ``r, r + R, ...`` (or, with
  fewer shards than ranks, every shard and the samples ``r, r + R, ...`` of each);
- several sets are mixed by weight: each sample comes from a set drawn with probability proportional
  to its ``weight`` (HMR2's ``RandomMix``);
- a shuffle buffer of ``shuffle_buffer`` samples;
- samples that fail to decode or validate are counted as ``invalid``, samples whose gated supervision is
  empty as ``skipped``; both are left out.

Every random choice draws from a generator seeded by ``(seed, epoch, rank, ...)``, so the stream is a
function of those alone. An epoch is the first ``batches * batch_size`` usable samples. **Workers**: every
loader worker runs its process's whole stream (reading and parsing each sample's ``ehm.npz`` and
``meta.json``, cheap) and decodes and augments only the images of its own batches (the expensive part);
batch ``b`` goes to worker ``(b - first) mod W`` in the order the loader collects them. The batches are
therefore the same for any number of workers, and a run resumed at batch ``k`` of epoch ``e``
(:class:`EpochLoader` ``skip_batches``) sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import schemas
from pipelines.io.shards import decode_sample, iter_wds
from pipelines.train.augment import SamplePreparer

log = logging.getLogger(__name__)

COUNTERS = ("n_skipped", "n_invalid")
"""Per-sample counts of the samples left out just before it (summed per batch by the training step)."""
MAX_UNUSABLE = 10_000
"""A stream that meets this many unusable (invalid or fully gated) samples in a row stops with a
:class:`DataError`: the shards or the gates leave nothing to train on."""


class DataError(ValueError):
    """Shards cannot be read as asked; the message names them and what to do."""


def resolve_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs of ``spec`` (see the module docstring), in order; :class:`DataError` when a local path
    holds no shard."""
    from webdataset.shardlists import expand_urls

    if not isinstance(spec, str):
        return [u for item in spec for u in resolve_urls(item)]
    spec = os.fspath(spec)
    local = "://" not in spec and not spec.startswith("pipe:")
    if local and any(c in spec for c in "*?["):
        urls = sorted(glob.glob(spec))
        if not urls:
            raise DataError(f"{spec}: no file matches")
        return urls
    if local and os.path.isdir(spec):
        folder = os.path.join(spec, "wds") if os.path.isdir(os.path.join(spec, "wds")) else spec
        urls = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".tar") and not n.startswith("."))
        if not urls:
            raise DataError(f"{spec}: no .tar shards in {folder} (give a run folder, a shard pattern or URLs)")
        return urls
    urls = expand_urls(spec)
    for url in urls:
        if "://" not in url and not url.startswith("pipe:") and not os.path.exists(url):
            raise DataError(f"shard {url} does not exist (from {spec!r})")
    return urls


def _rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints and strings."""
    words = [k if isinstance(k, int) else int.from_bytes(k.encode()[:8].ljust(8, b"\0"), "little") for k in key]
    return np.random.default_rng([w & 0xFFFFFFFF for w in words] + [w >> 32 for w in words])


@dataclass(frozen=True)
class StreamSpec:
    """What a process's stream reads (picklable: it travels to the loader workers)."""

    sources: tuple[tuple[tuple[str, ...], float], ...]
    """``(urls, weight)`` per shard set."""
    seed: int = 0
    resampled: bool = True
    shuffle_buffer: int = 1000


def _source_stream(urls: tuple[str, ...], spec: StreamSpec, index: int, epoch: int, rank: int, world: int,
                   ) -> Iterator[dict[str, Any]]:
    """Endless raw samples of one shard set for one rank (module docstring)."""
    if spec.resampled:
        rng = _rng(spec.seed, epoch, rank, "resample", index)
        empty: set[str] = set()  # shards drawn empty since the last sample
        while True:
            url, yielded = urls[int(rng.integers(len(urls)))], False
            for sample in iter_wds([url], decode=False):
                yielded = True
                yield sample
            if yielded:
                empty.clear()
                continue
            empty.add(url)
            if len(empty) == len(set(urls)):
                raise DataError(f"no shard of {', '.join(sorted(empty)[:3])}{' ...' if len(empty) > 3 else ''} "
                                "holds a sample")
    cycle = 0
    while True:
        order = [urls[i] for i in _rng(spec.seed, epoch, "order", index, cycle).permutation(len(urls))]
        mine, stride = (order[rank::world], 1) if len(order) >= world else (order, world)
        count = 0
        for j, sample in enumerate(iter_wds(mine, decode=False)):
            if stride == 1 or j % stride == rank:
                count += 1
                yield sample
        if count == 0:
            raise DataError(f"shards {list(mine)[:3]}... yielded no sample for rank {rank} of {world}")
        cycle += 1


def rank_stream(spec: StreamSpec, epoch: int, rank: int, world: int) -> Iterator[dict[str, Any]]:
    """The raw (undecoded) samples of rank ``rank`` of ``world`` in epoch ``epoch``, mixed and shuffled
    (module docstring). Endless."""
    streams = [_source_stream(urls, spec, i, epoch, rank, world) for i, (urls, _) in enumerate(spec.sources)]
    weights = np.array([w for _, w in spec.sources], np.float64)
    weights /= weights.sum()
    mix = _rng(spec.seed, epoch, rank, "mix")

    def mixed() -> Iterator[dict[str, Any]]:
        while True:
            i = 0 if len(streams) == 1 else int(mix.choice(len(streams), p=weights))
            yield next(streams[i])

    shuffle = _rng(spec.seed, epoch, rank, "shuffle")
    buffer: list[dict[str, Any]] = []
    for sample in mixed():
        if len(buffer) < spec.shuffle_buffer:
            buffer.append(sample)
            continue
        k = int(shuffle.integers(len(buffer)))
        buffer[k], sample = sample, buffer[k]
        yield sample


def parse_record(raw: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The validated record and crop JPEG bytes of a raw WebDataset sample (safe decoders only);
    :class:`schemas.SchemaError` when it has no crop or no crop region."""
    sample = decode_sample({k: v for k, v in raw.items() if k != schemas.CROP_MEMBER})
    record = schemas.members_to_record(sample)
    crop = raw.get(schemas.CROP_MEMBER)
    if not crop:
        raise schemas.SchemaError(f"sample {raw.get('__key__', '?')!r} has no {schemas.CROP_MEMBER} member")
    region = record["crop_xyxy"]
    if not (region[2] > region[0] and region[3] > region[1]):
        raise schemas.SchemaError(f"record {record['key']!r} has no crop region (crop_xyxy {region.tolist()})")
    return record, bytes(crop)


class TrainStream(IterableDataset):
    """The training samples of one process (module docstring), ``batches * batch_size`` per epoch.

    Args:
        spec: shard sets and stream options.
        preparer: turns records into samples.
        batch_size: samples per batch.
        batches: batches per epoch of this process.
        rank, world: this process among all.
    """

    def __init__(self, spec: StreamSpec, preparer: SamplePreparer, *, batch_size: int, batches: int,
                 rank: int = 0, world: int = 1) -> None:
        super().__init__()
        self.spec, self.preparer = spec, preparer
        self.batch_size, self.batches = batch_size, batches
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip_batches = 0

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        first = self.skip_batches
        total = self.batches * self.batch_size
        k, skipped, invalid = 0, 0, 0
        if first >= self.batches:
            return
        for raw in rank_stream(self.spec, self.epoch, self.rank, self.world):
            try:
                record, crop = parse_record(raw)
                supervision = self.preparer.supervision(record)
            except (schemas.SchemaError, ValueError, KeyError, OSError) as exc:
                supervision = None
                invalid += 1
                log.warning("left out sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), exc)
            else:
                skipped += supervision is None
            if supervision is None:
                if skipped + invalid >= MAX_UNUSABLE:
                    raise DataError(f"{skipped + invalid} unusable samples in a row ({skipped} with nothing to "
                                    f"supervise after the gates, {invalid} invalid): check data.gates and the shards")
                continue
            batch = k // self.batch_size
            if batch >= first and (batch - first) % workers == worker:
                rng = _rng(self.spec.seed, self.epoch, self.rank, "augment", k)
                try:
                    sample = self.preparer(record, crop, supervision, rng)
                except (ValueError, OSError) as exc:
                    # its place in the batch is taken (the other workers counted it): a black image that
                    # supervises nothing
                    log.warning("sample %s of %s: its crop cannot be read (%s); nothing supervised", record["key"],
                                raw.get("__url__"), exc)
                    sample = self.preparer(record, None, self.preparer.nothing(), rng)
                    invalid += 1
                sample["n_skipped"], sample["n_invalid"] = np.int64(skipped), np.int64(invalid)
                yield sample
            skipped = invalid = 0
            k += 1
            if k >= total:
                return


class EvalStream(IterableDataset):
    """Held-out samples in shard order, unaugmented: sample ``j`` of the URLs goes to rank ``j mod R`` and,
    within it, to worker ``(j div R) mod W``; at most ``limit`` samples over all ranks."""

    def __init__(self, urls: Sequence[str], preparer: SamplePreparer, *, limit: int, rank: int = 0,
                 world: int = 1) -> None:
        super().__init__()
        self.urls, self.preparer, self.limit = list(urls), preparer, limit
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        used = 0
        for raw in iter_wds(self.urls, decode=False):
            try:
                record, crop = parse_record(raw)
                supervision = self.preparer.supervision(record)
            except (schemas.SchemaError, ValueError, KeyError, OSError) as exc:
                log.warning("left out held-out sample %s: %s", raw.get("__key__"), exc)
                continue
            if supervision is None:
                continue
            j = used
            used += 1
            if used > self.limit:
                return
            if j % self.world == self.rank and (j // self.world) % workers == worker:
                sample = self.preparer(record, crop, supervision, None)
                sample["n_skipped"], sample["n_invalid"] = np.int64(0), np.int64(0)
                yield sample


class EpochLoader(DataLoader):
    """A :class:`torch.utils.data.DataLoader` over a :class:`TrainStream` that starts each ``iter()`` on the
    next epoch, the first one at ``start_epoch`` after ``skip_batches`` batches (exact resume)."""

    def __init__(self, dataset: TrainStream, *, start_epoch: int = 0, skip_batches: int = 0, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=dataset.batch_size, drop_last=True, **kwargs)
        self.next_epoch, self.next_skip = start_epoch, skip_batches

    def __iter__(self) -> Any:
        dataset: TrainStream = self.dataset  # type: ignore[assignment]
        dataset.epoch, dataset.skip_batches = self.next_epoch, self.next_skip
        self.next_epoch, self.next_skip = self.next_epoch + 1, 0
        return super().__iter__()


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack a list of samples into tensors (``image`` stays uint8)."""
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}
