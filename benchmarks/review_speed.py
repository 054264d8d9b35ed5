"""How fast ``pearl review`` starts and pages through a large run; prints one JSON object.

Makes a run of ``--persons`` persons (default 10,000) in shards of ``--per-shard``: synthetic persons from
:mod:`pipelines.review.sample_run` (``--distinct`` bodies posed and rendered, repeated under new keys), or
the records of an existing run repeated under new keys (``--from-run DIR``, e.g. the demo run). Then it
starts ``pearl review`` as a user would (a subprocess, ``--port 0``) and times over HTTP:

- ``start_s``: from launching the command to its first answer (``/api/info``), Python imports included;
- ``first_page_ms``: the first grid page (48 persons, sorted by key);
- ``filtered_page_ms``: a page with two conditions and a sort by a quality figure, with its counts;
- ``deep_page_ms``: the page at offset 9,900 of the same sort;
- ``detail_ms``: one person's detail (every field and figure);
- ``thumbnail_ms``: one 192 px overlay (mesh + keypoints), median over 20 persons after the first;
- ``first_thumbnail_s``: the first overlay, which waits for the body models to load;
- ``mesh_ms``: one 3D mesh (``/api/mesh.bin``), median over 10;
- ``rss_mb``: the server's resident memory after all of that (the run is never loaded whole).

Page figures are medians over ``--repeats`` requests (the first request of each kind is reported apart).

    python benchmarks/review_speed.py --out /tmp/review-10k
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines.review.sample_run import start_review_server  # noqa: E402

log = logging.getLogger("review_speed")


def repeat_run(source: Path, out: Path, persons: int, per_shard: int) -> None:
    """Write ``persons`` records of run ``source`` (cycled, sample keys suffixed ``#r{i}``) to ``out``."""
    import json as _json

    import schemas
    from pipelines.io.shards import ShardWriter, iter_wds

    samples = []
    for tar in sorted((source / "wds").glob("*.tar")):
        for sample in iter_wds([str(tar)]):
            samples.append((schemas.members_to_record(sample), sample.get("crop.jpg")))
    if not samples:
        raise SystemExit(f"{source} holds no persons to repeat")
    split = samples[0][0]["split"]
    for shard, start in enumerate(range(0, persons, per_shard)):
        with ShardWriter(out, split, shard) as writer:
            for i in range(start, min(persons, start + per_shard)):
                record, crop = samples[i % len(samples)]
                sample_key = f"{record['sample_key']}#r{i:07d}"
                writer.add({**record, "sample_key": sample_key, "split": split,
                            "key": schemas.person_key(sample_key, int(record["person_index"]))}, crop)
            writer.commit({"persons": len(writer)})
    manifest = source / "manifest.json"
    if manifest.exists():
        (out / "manifest.json").write_text(manifest.read_text())
    else:
        (out / "manifest.json").write_text(_json.dumps({"splits": {}}))


def make_run(args: argparse.Namespace, out: Path, body_models: str) -> float:
    t0 = time.perf_counter()
    if args.from_run:
        repeat_run(Path(args.from_run), out, args.persons, args.per_shard)
    else:
        from pipelines.review.sample_run import write_sample_run

        write_sample_run(out, body_models, persons=args.persons, per_shard=args.per_shard,
                         quarantined=args.quarantined, distinct=args.distinct, splits=("train", "val"))
    return time.perf_counter() - t0


def _get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as response:
        data = response.read()
    return (time.perf_counter() - t0) * 1000.0, data


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def measure(out: Path, body_models: str, repeats: int) -> dict:
    t0 = time.perf_counter()
    proc, url = start_review_server([str(out), "--port", "0", "--body-models", body_models], ROOT)
    try:
        if url is None:
            raise SystemExit(f"pearl review did not start: {proc.wait()}")
        _get(url + "api/info")
        start_s = time.perf_counter() - t0

        def page(**params) -> tuple[float, dict]:
            query = urllib.parse.urlencode(params, doseq=True)
            ms, data = _get(f"{url}api/persons?{query}")
            return ms, json.loads(data)

        first_ms, first = page(limit=48)
        filtered = {"f": ["quality_reproj_norm_body:lt:0.02", "conf_body:ge:0.6"], "sort": "quality_final_loss",
                    "order": "desc", "limit": 48}
        filtered_first_ms, fpage = page(**filtered)
        filtered_ms = statistics.median(page(**filtered)[0] for _ in range(repeats))
        deep = {"sort": "quality_final_loss", "order": "desc", "offset": 9900, "limit": 48}
        deep_ms = statistics.median(page(**deep)[0] for _ in range(repeats))
        keys = [r["key"] for r in first["rows"]]
        detail_ms = statistics.median(_get(f"{url}api/person?key={urllib.parse.quote(k)}")[0] for k in keys[:repeats])
        first_thumb_ms, _ = _get(f"{url}api/overlay.jpg?key={urllib.parse.quote(keys[0])}&size=192")
        thumbs = [_get(f"{url}api/overlay.jpg?key={urllib.parse.quote(k)}&size=192")[0] for k in keys[1:21]]
        bodies = [r["key"] for r in first["rows"] if r["has_body"]]
        meshes = [_get(f"{url}api/mesh.bin?key={urllib.parse.quote(k)}")[0] for k in bodies[1:11]]
        return {
            "persons": first["total"],
            "filtered_persons": fpage["total"],
            "start_s": round(start_s, 2),
            "first_page_ms": round(first_ms, 1),
            "filtered_page_first_ms": round(filtered_first_ms, 1),
            "filtered_page_ms": round(filtered_ms, 1),
            "deep_page_ms": round(deep_ms, 1),
            "detail_ms": round(detail_ms, 1),
            "first_thumbnail_s": round(first_thumb_ms / 1000.0, 2),
            "thumbnail_ms": round(statistics.median(thumbs), 1),
            "mesh_ms": round(statistics.median(meshes), 1),
            "rss_mb": _rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/pearl-review-bench"),
                        help="run folder to make (reused when it already holds a run of --persons)")
    parser.add_argument("--persons", type=int, default=10_000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=48, help="synthetic bodies posed and rendered")
    parser.add_argument("--quarantined", type=int, default=10)
    parser.add_argument("--from-run", default=None, metavar="DIR", help="repeat this run's records instead")
    parser.add_argument("--body-models", default=None, help="as for pearl review (default: the synthetic kit)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from pipelines.io.body_models import resolve_body_models
    from pipelines.io.shards import committed_shards
    from pipelines.review.data import ReviewRun

    body_models = args.body_models or resolve_body_models(None).folder
    make_s = None
    existing = committed_shards(args.out) if args.out.exists() else set()
    if not existing or ReviewRun(args.out).count() != args.persons:
        if existing:
            raise SystemExit(f"{args.out} holds another run; delete it or pass another --out")
        make_s = round(make_run(args, args.out, body_models), 1)
    result = {"run": str(args.out), "source": args.from_run or "synthetic", "make_run_s": make_s,
              **measure(args.out, body_models, args.repeats)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
