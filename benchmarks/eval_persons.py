"""Recall, precision and time per image of the persons stage's detectors on real COCO images and on crowds
composed at run time from person cut-outs with known boxes. Prints one JSON object.

Data (read only, nothing is written or copied):

- ``coco``: the 4 COCO val2017 images of ``../shared/evaldata/coco_wholebody`` (or ``--evaldata DIR``), 14
  labelled persons (2 of them tiny: 11x68 and 17x32 px).
- Cut-outs: the 4 license-clean pictures of ``examples/`` (astronaut, cameraman, Grace Hopper: cut out by
  MediaPipe's selfie segmentation; the COCO 785 skier: its COCO polygon) and the COCO persons of the evaldata
  images with at least 12 labelled keypoints and a box at least 100 px tall (their COCO polygons; an occluded
  person's polygon is its visible part).
- ``group_clean``: side-by-side group pictures of 3-6 people made from the 4 license-clean cut-outs only;
  ``group``: 4-7 people from every cut-out; ``pairs``: two people, overlapping by 30-60 % of the nearer one's
  width. People are scaled to a common height (+-10 %), flipped at random and pasted left
  to right with random overlaps onto a smooth random background (960x640; pairs 640x480); people cut by the
  frame (the portraits) stand on the bottom edge. A composition is redrawn until every person keeps at
  least half of their pixels. The true box of a person is the box of their whole pasted cut-out.
  ``crowd`` pools ``group_clean``, ``group`` and ``pairs``.

A person is found when a detection matches their box with IoU >= 0.5 (greedy one-to-one, highest IoU first);
precision is the matched share of the detections (the detectors are deterministic: repeats give the same
boxes); ``recall_iou_0.3`` counts matches at IoU >= 0.3 (people found with a loose box: a portrait's cut-out
box takes in what they hold, e.g. the astronaut's helmet, which no landmark reaches). Time: wall clock per
image of the detector call (built and warmed up first; the least of ``--repeats`` runs), on one CPU core
(the process is pinned to one core unless ``--all-cores``); the load average before and after is reported,
since other processes on the machine slow it down. For ``mediapipe_crowd`` the model calls per image (pose
detector, landmark model, face detector) are counted too: they do not depend on the load (about 8, 15 and
3.5 ms each on a quiet core).

Detectors, side by side on the same images: ``mediapipe_pose`` (the old default: Tasks PoseLandmarker over
tiles, verified per candidate), ``mediapipe_crowd`` (the default, see docs/persons.md) and
``mediapipe_crowd`` without face seeds; ``--configs '{"name": {...}}'`` adds PersonsConfig variants.

Usage, from the repository root: ``python -m benchmarks.eval_persons [--evaldata DIR] [--images 16]
[--seed 1] [--repeats 1] [--configs JSON] [--all-cores]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotators.images import box_iou, decode_image  # noqa: E402
from annotators.persons import PERSON_DETECTORS, PersonsConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVALDATA = ROOT.parent / "shared" / "evaldata"
PORTRAITS = ("astronaut.png", "cameraman.png", "grace_hopper.jpg")
"""License-clean examples cut out by segmentation; they are cut by their frame at the bottom."""
DETECTORS = {
    "mediapipe_pose": {"detector": "mediapipe_pose"},
    "mediapipe_crowd": {},
    "mediapipe_crowd_no_face_seeds": {"face_seeds": False},
}


class Cutout:
    """A person cut out of a picture: ``rgb [h, w, 3]`` uint8, ``alpha [h, w]`` float32 in [0, 1], and whether
    the picture's frame cuts them at the bottom (then they are pasted standing on the bottom edge)."""

    def __init__(self, rgb: np.ndarray, alpha: np.ndarray, cut_at_bottom: bool) -> None:
        ys, xs = np.nonzero(alpha > 0.5)
        self.rgb = rgb[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        self.alpha = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
        self.cut_at_bottom = cut_at_bottom


def polygon_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (flat x, y lists, px) -> ``[H, W]`` float32 mask."""
    mask = np.zeros((height, width), np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.round(np.asarray(polygon).reshape(-1, 2)).astype(np.int32)], 1)
    return mask.astype(np.float32)


def segmented(rgb: np.ndarray) -> np.ndarray:
    """The largest person blob of MediaPipe's selfie segmentation (general model, in the wheel) as a mask."""
    import mediapipe

    with mediapipe.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as model:
        mask = (model.process(rgb).segmentation_mask > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count < 2:
        raise ValueError("the selfie segmentation found no person")
    return (labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.float32)


def cutouts(evaldata: Path) -> tuple[list[Cutout], list[Cutout]]:
    """(license-clean cut-outs, COCO evaldata cut-outs)."""
    coco = json.loads((evaldata / "coco_wholebody" / "annotations" / "test_coco.json").read_text())
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    clean = []
    for name in PORTRAITS:
        rgb = decode_image((ROOT / "examples" / name).read_bytes(), source=name)
        clean.append(Cutout(rgb, segmented(rgb), cut_at_bottom=True))
    skier = decode_image((ROOT / "examples" / "coco_000000000785.jpg").read_bytes(), source="785")
    (ann,) = [a for a in coco["annotations"] if a["image_id"] == 785]
    clean.append(Cutout(skier, polygon_mask(ann["segmentation"], *skier.shape[:2]), cut_at_bottom=False))
    others = []
    for ann in coco["annotations"]:
        if ann["image_id"] == 785 or ann["num_keypoints"] < 12 or ann["bbox"][3] < 100:
            continue
        path = evaldata / "coco_wholebody" / "images" / files[ann["image_id"]]
        rgb = decode_image(path.read_bytes(), source=str(path))
        others.append(Cutout(rgb, polygon_mask(ann["segmentation"], *rgb.shape[:2]), cut_at_bottom=False))
    return clean, others


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random colours with pixel noise, float32 ``[H, W, 3]``."""
    colours = rng.uniform(40, 220, (3, 5, 3)).astype(np.float32)
    base = cv2.resize(colours, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 12, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    return base + noise.astype(np.float32)


def paste(canvas: np.ndarray, person: Cutout, x: float, y: float, height: float,
          flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blend ``person`` scaled to ``height`` px with its top-left corner at ``(x, y)``; returns its box
    ``[4]`` (clipped to the canvas) and its pixel mask ``[H, W]`` bool."""
    s = height / person.alpha.shape[0]
    w, h = max(1, round(person.alpha.shape[1] * s)), max(1, round(person.alpha.shape[0] * s))
    interpolation = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(person.rgb, (w, h), interpolation=interpolation).astype(np.float32)
    alpha = cv2.resize(person.alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    if flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    H, W = canvas.shape[:2]
    x0, y0 = round(x), round(y)
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    a = alpha[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
    canvas[cy0:cy1, cx0:cx1] = a * rgb[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] + (1 - a) * canvas[cy0:cy1, cx0:cx1]
    mask = np.zeros((H, W), bool)
    mask[cy0:cy1, cx0:cx1] = a[..., 0] > 0.5
    return np.array([cx0, cy0, cx1, cy1], np.float64), mask


def compose(pool: list[Cutout], rng: np.random.Generator, kind: str,
            min_visible: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One composed picture of ``kind`` (``group_clean``, ``group``, ``pairs``): ``(image [H, W, 3] uint8, true
    boxes [N, 4])``, redrawn until every person keeps ``min_visible`` of their pixels."""
    for _ in range(100):
        if kind == "pairs":
            width, height, n = 640, 480, 2
            overlap = np.array([0.0, rng.uniform(0.3, 0.6)])
        else:
            width, height = 960, 640
            n = int(rng.integers(3, 7) if kind == "group_clean" else rng.integers(4, 8))
            overlap = np.r_[0.0, rng.uniform(0.0, 0.3, n - 1)]
        people = [pool[i] for i in rng.integers(0, len(pool), n)]
        tall = height * rng.uniform(0.55, 0.85) * rng.uniform(0.9, 1.1, n)
        wide = np.array([p.alpha.shape[1] * t / p.alpha.shape[0] for p, t in zip(people, tall)])
        starts = np.cumsum(np.r_[0.0, wide[:-1]]) - np.cumsum(overlap * wide)
        scale = min(1.0, (width - 10) / (starts[-1] + wide[-1]), (height - 5) / tall.max())
        left = rng.uniform(5, max(5.0, width - 5 - (starts[-1] + wide[-1]) * scale))
        canvas = background(rng, height, width)
        boxes, masks, areas = [], [], []
        order = rng.permutation(n) if kind != "pairs" else np.arange(n)  # later pasted = nearer
        for i in order:
            h = tall[i] * scale
            lift = 0.0 if people[i].cut_at_bottom else rng.uniform(0, 0.3) * max(0.0, height - h)
            box, mask = paste(canvas, people[i], left + starts[i] * scale, height - h - lift, h, bool(rng.integers(2)))
            for earlier in masks:
                earlier &= ~mask
            boxes.append(box)
            masks.append(mask)
            areas.append(mask.sum())
        if all(m.sum() >= min_visible * a for m, a in zip(masks, areas)):
            return np.clip(canvas, 0, 255).astype(np.uint8), np.array(boxes)
    raise RuntimeError(f"no {kind} composition keeps {min_visible:.0%} of every person visible")


def coco_images(evaldata: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, true boxes ``[N, 4]`` xyxy) of the 4 COCO-WholeBody images."""
    data = json.loads((evaldata / "coco_wholebody" / "annotations" / "test_coco_wholebody.json").read_text())
    out = []
    for info in data["images"]:
        path = evaldata / "coco_wholebody" / "images" / info["file_name"]
        labelled = (a["bbox"] for a in data["annotations"] if a["image_id"] == info["id"])
        boxes = [[x, y, x + w, y + h] for x, y, w, h in labelled]
        out.append((decode_image(path.read_bytes(), source=str(path)), np.array(boxes, np.float64).reshape(-1, 4)))
    return out


def matched(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Greedy one-to-one matches (highest IoU first) with IoU >= ``iou``."""
    if len(pred) == 0 or len(truth) == 0:
        return 0
    overlaps = box_iou(pred, truth)
    count = 0
    while overlaps.max() >= iou:
        i, j = np.unravel_index(np.argmax(overlaps), overlaps.shape)
        overlaps[i, :] = overlaps[:, j] = -1.0
        count += 1
    return count


def count_calls(detector: Any) -> dict[str, int]:
    """Wrap the model calls of a ``mediapipe_crowd`` detector (pose detector, landmark model, face detector) to
    count them; the counts are independent of the machine's load. Other detectors: nothing counted."""
    calls = {"pose_detector": 0, "landmark_model": 0, "face_detector": 0}

    def counted(fn: Any, name: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    graphs = getattr(detector, "graphs", None)
    if graphs is not None:
        graphs.detect = counted(graphs.detect, "pose_detector")
        graphs.landmarks = counted(graphs.landmarks, "landmark_model")
    if getattr(detector, "_faces", None) is not None:
        detector._faces.process = counted(detector._faces.process, "face_detector")
    return calls


def run(detector: Any, images: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> dict[str, Any]:
    """Counts and per-image milliseconds (the least of ``repeats`` runs) of one detector on (image, boxes) pairs."""
    counts: dict[str, Any] = {"found": 0, "found_iou_0.3": 0, "detections": 0, "persons": 0, "ms": []}
    for image, truth in images:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            boxes, _ = detector(image)
            times.append(1e3 * (time.perf_counter() - start))
        counts["ms"].append(min(times))
        counts["found"] += matched(boxes, truth)
        counts["found_iou_0.3"] += matched(boxes, truth, 0.3)
        counts["detections"] += len(boxes)
        counts["persons"] += len(truth)
    return counts


def summary(counts: dict[str, Any]) -> dict[str, Any]:
    return {"recall": counts["found"] / max(counts["persons"], 1),
            "precision": counts["found"] / max(counts["detections"], 1),
            "recall_iou_0.3": counts["found_iou_0.3"] / max(counts["persons"], 1),
            "persons": counts["persons"], "detections": counts["detections"],
            "ms_per_image_median": statistics.median(counts["ms"]), "ms_per_image_mean": statistics.mean(counts["ms"]),
            "ms_per_image_max": max(counts["ms"])}


def evaluate(evaldata: Path, images: int, seed: int, configs: dict[str, dict[str, Any]],
             repeats: int) -> dict[str, Any]:
    clean, others = cutouts(evaldata)
    rng = np.random.default_rng(seed)
    sets = {"coco": coco_images(evaldata)}
    for kind, pool in (("group_clean", clean), ("group", clean + others), ("pairs", clean + others)):
        sets[kind] = [compose(pool, rng, kind) for _ in range(images)]
    result: dict[str, Any] = {
        "data": {name: {"images": len(pairs), "persons": int(sum(len(b) for _, b in pairs))}
                 for name, pairs in sets.items()},
        "cutouts": {"license_clean": len(clean), "coco_evaldata": len(others)}, "seed": seed}
    result["data"]["crowd"] = {k: sum(result["data"][s][k] for s in ("group_clean", "group", "pairs"))
                               for k in ("images", "persons")}
    result["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
    result["detectors"] = {}
    for name, options in configs.items():
        config = PersonsConfig(**options)
        detector = PERSON_DETECTORS.get(config.detector)(config)
        detector(sets["coco"][0][0])  # build the graphs, warm up
        calls = count_calls(detector)
        counts = {kind: run(detector, pairs, repeats) for kind, pairs in sets.items()}
        crowd = {k: sum(counts[s][k] for s in ("group_clean", "group", "pairs"))
                 for k in ("found", "found_iou_0.3", "detections", "persons")}
        crowd["ms"] = [t for s in ("group_clean", "group", "pairs") for t in counts[s]["ms"]]
        result["detectors"][name] = {"options": options, **{kind: summary(c) for kind, c in counts.items()},
                                     "crowd": summary(crowd)}
        if any(calls.values()):
            result["detectors"][name]["model_calls_per_image"] = {
                k: v / repeats / sum(len(p) for p in sets.values()) for k, v in calls.items()}
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return result


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaldata", type=Path, default=DEFAULT_EVALDATA,
                        help=f"evaluation data folder (default: {DEFAULT_EVALDATA})")
    parser.add_argument("--images", type=int, default=16, help="composed pictures per crowd set (default 16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the compositions (default 1; the defaults "
                        "were chosen on seed 0)")
    parser.add_argument("--configs", default="{}", help="JSON object of extra detectors: name -> PersonsConfig options")
    parser.add_argument("--repeats", type=int, default=1, help="runs per image; its time is the least (default 1)")
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one CPU core")
    args = parser.parse_args(argv)
    if not (args.evaldata / "coco_wholebody").is_dir():
        print(f"--evaldata {args.evaldata}: no coco_wholebody/ there; give the evaluation data folder", file=sys.stderr)
        return 2
    if not args.all_cores:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    configs = {**DETECTORS, **json.loads(args.configs)}
    result = evaluate(args.evaldata, args.images, args.seed, configs, max(1, args.repeats))
    result["cpu_cores"] = len(os.sched_getaffinity(0))
    print(json.dumps(_rounded(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
