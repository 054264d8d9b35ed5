"""The trainer's data stream: URLs, node splitting, mixing, determinism over workers, exact resume, counting
left-out samples, safe decoding, pipe: and s3:// URLs."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from model.networks.pear import PEAR_TINY
from pipelines.io.shards import iter_wds
from pipelines.train import data as train_data
from pipelines.train.augment import SamplePreparer
from pipelines.train.config import config_from_dict
from pipelines.train.data import (
    DataError,
    EpochLoader,
    StreamSpec,
    TrainStream,
    collate,
    rank_stream,
    resolve_urls,
)


def _preparer(mirror, **data) -> SamplePreparer:
    config = config_from_dict({"data": {"train": ["x.tar"], **data}})
    return SamplePreparer(config.data, PEAR_TINY, mirror)


def _keys(stream, n):
    return [s["__key__"] for _, s in zip(range(n), stream)]


def test_urls(corpus):
    wds = corpus / "wds"
    assert resolve_urls(str(wds / "train-{000000..000002}.tar")) == [str(wds / f"train-00000{i}.tar") for i in range(3)]
    assert resolve_urls(str(wds / "train-*.tar")) == resolve_urls(str(wds / "train-{000000..000002}.tar"))
    assert resolve_urls(str(corpus)) == sorted(str(p) for p in wds.glob("*.tar"))  # a run folder: all splits
    assert resolve_urls([str(wds / "val-000000.tar"), "pipe:cat x.tar"]) == [str(wds / "val-000000.tar"), "pipe:cat x.tar"]
    with pytest.raises(DataError, match="does not exist"):
        resolve_urls(str(wds / "train-{000000..000009}.tar"))
    with pytest.raises(DataError, match="no file matches"):
        resolve_urls(str(wds / "nope-*.tar"))


def test_ranks_split_the_shards_disjointly_and_mix_by_weight(corpus):
    urls = tuple(resolve_urls(str(corpus / "wds" / "*.tar")))  # 4 shards of 8
    spec = StreamSpec(((urls, 1.0),), seed=3, resampled=False, shuffle_buffer=1)
    first = [_keys(rank_stream(spec, 0, r, 2), 16) for r in range(2)]
    assert not set(first[0]) & set(first[1]) and len(set(first[0]) | set(first[1])) == 32
    assert _keys(rank_stream(spec, 0, 0, 2), 16) == first[0]  # deterministic ...
    assert _keys(rank_stream(spec, 1, 0, 2), 16) != first[0]  # ... and a new order each epoch
    one = StreamSpec(((urls[:1], 1.0),), seed=3, resampled=False, shuffle_buffer=1)  # fewer shards than ranks
    halves = [set(_keys(rank_stream(one, 0, r, 2), 4)) for r in range(2)]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 8
    mix = StreamSpec(((urls[:3], 3.0), (urls[3:], 1.0)), seed=0, resampled=True, shuffle_buffer=20)
    drawn = _keys(rank_stream(mix, 0, 0, 1), 400)
    val = {s["__key__"] for s in iter_wds(urls[3], decode=False)}
    assert 0.17 < sum(k in val for k in drawn) / 400 < 0.33


def _batches(loader):
    return [(b["image"].float().mean().item(), b["params.betas"].sum().item(), b["n_skipped"].sum().item())
            for b in loader]


def test_batches_do_not_depend_on_the_workers_and_resume_exactly(corpus, mirror):
    urls = tuple(resolve_urls(str(corpus / "wds" / "train-*.tar")))
    spec = StreamSpec(((urls, 1.0),), seed=1, resampled=True, shuffle_buffer=10)

    def loader(workers, skip=0, epoch=0):
        stream = TrainStream(spec, _preparer(mirror), batch_size=4, batches=5)
        return EpochLoader(stream, start_epoch=epoch, skip_batches=skip, num_workers=workers, collate_fn=collate)

    reference = _batches(loader(0))
    assert len(reference) == 5 and len({b[1] for b in reference}) == 5
    assert _batches(loader(2)) == reference
    assert _batches(loader(2, skip=3)) == reference[3:]
    again = loader(0)
    assert _batches(again) == reference and _batches(again) != reference  # the next iter() is the next epoch
    assert _batches(loader(0, epoch=1)) == _batches(loader(1, epoch=1))


def test_gated_and_invalid_samples_are_left_out_and_counted(corpus, mirror, tmp_path, monkeypatch):
    # a shard whose third sample's ehm.npz is broken
    source = corpus / "wds" / "train-000000.tar"
    broken = tmp_path / "broken.tar"
    with tarfile.open(source) as src, tarfile.open(broken, "w") as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()
            if member.name.endswith("ehm.npz") and i // 3 == 2:
                data = b"not a zip"
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    spec = StreamSpec((((str(broken),), 1.0),), seed=0, resampled=False, shuffle_buffer=1)
    samples = list(TrainStream(spec, _preparer(mirror), batch_size=7, batches=1))
    assert len(samples) == 7 and sum(int(s["n_invalid"]) for s in samples) == 1
    # the left hand is gated on every sample, the rest stays (unaugmented: a flip would exchange the hands)
    gated = _preparer(mirror, gates={"left_hand_off": "1 > 0"}, augment={"enabled": False})
    kept = list(TrainStream(spec, gated, batch_size=4, batches=1))
    assert np.stack([s["has_hands"] for s in kept]).sum(0).tolist() == [0.0, 4.0]
    assert all(s["has_body"] == 1 and s["has_face"] == 1 for s in kept)
    # everything gated and no keypoint confident: every sample is skipped, and the stream says so
    nothing = _preparer(mirror, kp2d_min_confidence=2.0,
                        gates={"body_off": "1 > 0", "face_off": "1 > 0", "left_hand_off": "1 > 0", "right_hand_off": "1 > 0"})
    monkeypatch.setattr(train_data, "MAX_UNUSABLE", 20)
    with pytest.raises(DataError, match="unusable samples in a row"):
        list(TrainStream(spec, nothing, batch_size=4, batches=1))


def test_pipe_and_s3_urls_read_the_same_samples(corpus, s3):
    local = str(corpus / "wds" / "val-000000.tar")
    keys = [s["__key__"] for s in iter_wds(local, decode=False)]
    spec = StreamSpec((((f"pipe:cat {local}",), 1.0),), seed=0, resampled=False, shuffle_buffer=1)
    assert _keys(rank_stream(spec, 0, 0, 1), 8) == keys
    s3.mkdir("pearl-train")
    s3.put(str(corpus / "wds"), "pearl-train/run/wds", recursive=True)
    urls = resolve_urls("s3://pearl-train/run/wds/val-{000000..000000}.tar")
    assert _keys(rank_stream(StreamSpec(((tuple(urls), 1.0),), resampled=False, shuffle_buffer=1), 0, 0, 1), 8) == keys


def test_collate_stacks_tensors(corpus, mirror):
    spec = StreamSpec(((tuple(resolve_urls(str(corpus / "wds" / "val-*.tar"))), 1.0),), shuffle_buffer=2)
    batch = collate(list(TrainStream(spec, _preparer(mirror), batch_size=3, batches=1)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, *PEAR_TINY.image_size)
    assert batch["kp2d"].shape == (3, 133, 3) and batch["params.body_pose"].shape == (3, 21, 3)


@pytest.mark.parametrize("resampled", [True, False])
def test_a_set_of_empty_shards_is_an_error_not_an_endless_wait(tmp_path, resampled):
    urls = []
    for name in ("a", "b"):  # shards of a run whose persons were all quarantined: valid tars, no member
        with tarfile.open(tmp_path / f"{name}.tar", "w"):
            pass
        urls.append(str(tmp_path / f"{name}.tar"))
    spec = StreamSpec(((tuple(urls), 1.0),), resampled=resampled, shuffle_buffer=1)
    with pytest.raises(DataError, match="no sample|holds a sample"):
        next(rank_stream(spec, 0, 0, 1))
