"""Identity switches of the ``track/iou-oks`` tracker on synthetic multi-person clips with known identities.

Each clip has ``--persons`` people walking across a 1280x720 frame at random speeds and directions (so their
paths cross), seen as boxes and COCO body keypoints with detector-like noise: box and keypoint jitter,
missed detections (``--miss``), and a person mostly hidden behind a nearer one missed 70 % of the time;
people turn round at the frame's edges, so paths cross many times. Known identities make the MOT counts
exact: an identity switch is a person whose track id differs from the one it had when last seen, at most
``max_age`` frames before (a person back after a longer absence gets a new id by design: counted apart).
Each person also has a clothing colour histogram, seen through background and noise in every frame (the
appearance term; the real stage computes it from the image). Prints one JSON object: switches in total and per
100 person-frames (and without the appearance term, side by side), tracks started per person, the share of
person-frames on the person's majority track, and the tracker's time per frame.

    python -m benchmarks.tracking [--clips 20] [--frames 150] [--persons 6] [--miss 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotators.images import box_iou  # noqa: E402
from annotators.track import TrackConfig, track_clip  # noqa: E402

WIDTH, HEIGHT = 1280.0, 720.0
# a standing person's 17 COCO body keypoints, relative to the box (x in widths from the centre, y in heights)
POSE = np.array([[0, .08], [.1, .06], [-.1, .06], [.2, .08], [-.2, .08], [.3, .25], [-.3, .25], [.35, .4],
                 [-.35, .4], [.3, .55], [-.3, .55], [.2, .55], [-.2, .55], [.2, .75], [-.2, .75], [.2, .95],
                 [-.2, .95]])


def clothing(rng: np.random.Generator) -> np.ndarray:
    """A person's hue-saturation histogram (the tracker's 16 x 8 bins): a few dominant colours."""
    hist = np.zeros(16 * 8)
    hist[rng.choice(16 * 8, 3, replace=False)] = rng.dirichlet(np.ones(3))
    return hist


def make_clip(rng: np.random.Generator, frames: int, persons: int, miss: float):
    """Detections of one clip: frames ``[N]``, boxes ``[N, 4]``, keypoints ``[N, 17, 3]``, identity ``[N]`` and
    appearance histograms (the person's clothing, blurred with a uniform background and noise per frame)."""
    height = rng.uniform(180, 320, persons)
    width = height * rng.uniform(0.35, 0.5, persons)
    x = rng.uniform(0, WIDTH, persons)
    y = rng.uniform(height / 2, HEIGHT - height / 2, persons) * 0.3 + HEIGHT * 0.35
    vx = rng.choice([-1, 1], persons) * rng.uniform(2, 9, persons)
    vy = rng.normal(0, 0.5, persons)
    arm = rng.uniform(-0.15, 0.15, persons)  # each person holds the arms a little differently
    clothes = [clothing(rng) for _ in range(persons)]
    out = ([], [], [], [], [])
    for f in range(frames):
        visible = []
        for p in range(persons):
            cx, cy = x[p] + vx[p] * f, y[p] + vy[p] * f
            cx = WIDTH - abs(WIDTH - cx % (2 * WIDTH))  # turn round at the frame's edges
            if rng.random() < miss:
                continue
            box = np.array([cx - width[p] / 2, cy - height[p] / 2, cx + width[p] / 2, cy + height[p] / 2])
            box += rng.normal(0, 0.02 * height[p], 4)
            kp = np.zeros((17, 3))
            kp[:, 0] = cx + (POSE[:, 0] + np.where(np.arange(17) >= 7, arm[p], 0) * (np.arange(17) < 11)) * width[p]
            kp[:, 1] = cy - height[p] / 2 + POSE[:, 1] * height[p]
            kp[:, :2] += rng.normal(0, 0.015 * height[p], (17, 2))
            kp[:, 2] = rng.uniform(0.5, 1.0, 17)
            seen = 0.6 * clothes[p] + 0.4 * rng.dirichlet(np.full(16 * 8, 0.5))  # background, light, noise
            visible.append((box, kp, p, seen / seen.sum()))
        visible.sort(key=lambda v: -(v[0][2] - v[0][0]) * (v[0][3] - v[0][1]))  # the persons stage's order
        if visible:  # a person mostly hidden behind a larger (nearer) one is usually missed
            boxes = np.stack([v[0] for v in visible])
            iou = box_iou(boxes, boxes)
            hidden = [any(iou[j, i] > 0.5 for j in range(i)) and rng.random() < 0.7 for i in range(len(visible))]
            visible = [v for v, h in zip(visible, hidden) if not h]
        for box, kp, p, seen in visible:
            out[0].append(f), out[1].append(box), out[2].append(kp), out[3].append(p), out[4].append(seen)
    return tuple(np.asarray(v) for v in out[:4]) + (out[4],)


def id_switches(frames: np.ndarray, identity: np.ndarray, tracks: np.ndarray, max_gap: int) -> tuple[int, int, float]:
    """(identity switches of people seen again within ``max_gap`` frames, switches after longer absences
    (re-entries, which the tracker does not re-identify by design), share of person-frames on the person's
    majority track)."""
    near, far, majority = 0, 0, 0
    for p in np.unique(identity):
        rows = np.flatnonzero(identity == p)
        order = np.argsort(frames[rows])
        seq, seen = tracks[rows[order]], frames[rows[order]]
        changed = seq[1:] != seq[:-1]
        gap = seen[1:] - seen[:-1]
        near += int((changed & (gap <= max_gap)).sum())
        far += int((changed & (gap > max_gap)).sum())
        majority += int(np.bincount(seq).max())
    return near, far, majority / len(identity)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="synthetic clips (default 20)")
    parser.add_argument("--frames", type=int, default=150, help="frames per clip (default 150)")
    parser.add_argument("--persons", type=int, default=6, help="people per clip (default 6)")
    parser.add_argument("--miss", type=float, default=0.05, help="chance a person is not detected in a frame")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    switches = reentries = person_frames = tracks_started = people = switches_no_appearance = 0
    config = TrackConfig()
    majority, seconds, frames_done = [], 0.0, 0
    for _ in range(args.clips):
        frames, boxes, kp, identity, appearance = make_clip(rng, args.frames, args.persons, args.miss)
        t0 = time.perf_counter()
        tracks = track_clip(frames, boxes, kp, config, appearance)
        seconds += time.perf_counter() - t0
        s, r, m = id_switches(frames, identity, tracks, config.max_age)
        switches += s
        reentries += r
        switches_no_appearance += id_switches(frames, identity, track_clip(frames, boxes, kp, config), config.max_age)[0]
        majority.append(m)
        person_frames += len(identity)
        tracks_started += len(np.unique(tracks))
        people += len(np.unique(identity))
        frames_done += args.frames
    print(json.dumps({
        "clips": args.clips, "frames_per_clip": args.frames, "persons_per_clip": args.persons, "miss_rate": args.miss,
        "person_frames": person_frames, "id_switches": switches,
        "id_switches_per_100_person_frames": round(100 * switches / person_frames, 3),
        "new_ids_after_reentry": reentries,
        "id_switches_without_appearance": switches_no_appearance,
        "tracks_started_per_person": round(tracks_started / people, 3),
        "majority_track_share": round(float(np.mean(majority)), 4),
        "tracker_ms_per_frame": round(1e3 * seconds / frames_done, 3),
    }))


if __name__ == "__main__":
    main()
