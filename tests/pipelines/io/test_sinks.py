"""The shard plan: stills in runs of images_per_shard, each video clip (segment) a shard of its own."""

from __future__ import annotations

from pipelines.io.samples import Sample
from pipelines.io.sinks import plan_shards


def _still(name: str) -> Sample:
    return Sample(sample_key=f"d/{name}", source=name, uri=name)


def _frames(clip: str, count: int, segment: str | None = None) -> list[Sample]:
    return [Sample(sample_key=f"d/{clip}/f{i:06d}", source=f"{clip}#f{i}", uri=clip, kind="video",
                   track_id=segment or f"d/{clip}", frame_index=i) for i in range(count)]


def test_stills_are_cut_in_runs_and_clips_stay_whole():
    samples = [_still("a.jpg"), _still("b.jpg"), _still("c.jpg"), *_frames("m.mp4", 5), _still("n.jpg"),
               _still("o.jpg")]
    shards = plan_shards(list(reversed(samples)), 2)  # order of the input does not matter
    assert [[s.sample_key.removeprefix("d/") for s in spec.samples] for spec in shards] == [
        ["a.jpg", "b.jpg"], ["c.jpg"], [f"m.mp4/f{i:06d}" for i in range(5)], ["n.jpg", "o.jpg"]]
    assert [spec.index for spec in shards] == [0, 1, 2, 3]


def test_clip_segments_and_neighbouring_clips_are_separate_shards():
    seg = _frames("m.mp4", 6)
    seg = [s if s.frame_index < 3 else Sample(**{**s.__dict__, "track_id": "d/m.mp4#s1"}) for s in seg]
    seg = [s if s.frame_index >= 3 else Sample(**{**s.__dict__, "track_id": "d/m.mp4#s0"}) for s in seg]
    shards = plan_shards(seg + _frames("n.mp4", 2), 64)
    assert [len(spec.samples) for spec in shards] == [3, 3, 2]
    assert {s.track_id for s in shards[1].samples} == {"d/m.mp4#s1"}
