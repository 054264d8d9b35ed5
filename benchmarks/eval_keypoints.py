"""Accuracy of the embedded (MediaPipe-based) backends on real images with human ground truth, and their
per-crop latency on the CPU. Prints one JSON object (metric definitions: docs/metrics.md).

Data: ``../shared/evaldata`` beside the repository (or ``--evaldata DIR``), read only:

- COCO-WholeBody (4 images, 14 persons): persons recall of the ``persons/mediapipe`` detector; the
  ``keypoints/mediapipe`` stage on the ground-truth person boxes for body PCK, face NME and hand PCK;
- 300-W (2 faces) and WFLW (4 faces, 98 points reduced to 68): the face landmark model on the ground-truth
  face box (region 1.5 times the box, the stage's passes), for face NME;
- OneHand10K (4) and FreiHAND (8): the hand landmark model on the ground-truth hand box (region 2 times the
  box), for hand PCK;
- every face and hand found above: ``face/flame-fit`` and ``hands/mano-ik`` with the body-model kit.

Keys (fractions in [0, 1]; ``*_nme`` are normalised errors; ``*_ms`` milliseconds):

- ``body_pck_0.05``, ``body_pck_0.1``: COCO-17 body keypoints of the 12 persons with body labels;
- ``face_nme``: 68-point faces found, inter-ocular NME, pooled over 300-W, WFLW and COCO-WholeBody faces;
  ``face_nme_300w_wflw`` and ``face_nme_coco`` split it;
- ``hand_pck_0.2``: hand-box PCK@0.2 over every labelled hand (a hand not found counts as wrong), pooled
  over OneHand10K, FreiHAND and COCO-WholeBody; split as ``hand_pck_0.2_onehand10k`` ... ``_coco``;
  ``found`` counts the faces and hands found per dataset (found/labelled); hands are found by the hand
  landmark model; ``hands_coco_with_pose_only`` also counts the keypoints stage's pose-only hands (hands
  the hand model missed but BlazePose sees: MANO orientation, no finger keypoints);
- ``persons_recall``: labelled COCO-WholeBody persons matched by a detection at IoU >= 0.5;
  ``persons_precision`` the matched share of the detections;
- ``mano_ik_rmse_mm_median``: 3D landmark error of the MANO fit, over hands found;
  ``mano_ik_hand_pck_0.2``: the fitted MANO keypoints seen along the camera axis (scale and shift fitted
  to MediaPipe's 2D landmarks) against the labels, over hands found;
- ``flame_fit_nme_mediapipe``: fitted FLAME landmarks against MediaPipe's, inter-ocular, over faces found;
  ``flame_fit_face_nme68``: FLAME's own 68 landmarks (its static and dynamic embeddings) through the fitted
  camera against the labelled 68 points: with the synthetic kit this measures the kit's face, not a real one;
- ``latency_ms``: per-crop CPU latency (median): ``mediapipe_pose`` (one 256 px person crop),
  ``mediapipe_face`` / ``mediapipe_hands`` (one landmark pass), ``keypoints_stage_per_person`` (the stage with
  its default passes), ``persons_detector_per_image``, ``mano_ik_b1`` / ``flame_fit_b1`` (one hand / face
  alone) and ``mano_ik_b64`` / ``flame_fit_b64`` (per hand / face in a batch of 64).

Usage, from the repository root: ``python -m benchmarks.eval_keypoints [--evaldata DIR]
[--body-models DIR] [--repeats 5] [--threads 1]``. Without ``--body-models`` the synthetic kit is
written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from annotators import keypoints as K
from model import metrics
from schemas import keypoints as wb
from annotators.face.flame_fit import FlameFitConfig, FlameFitStage
from annotators.hands.mano_ik import ManoIkConfig, ManoIkStage
from annotators.base import StageContext
from annotators.images import box_iou, crop_person, decode_image
from annotators.persons import PersonsStage
from fitting.face_fit import FaceFitResult, solve_face_fit
from fitting.hand_ik import HandIkResult, solve_hand_ik
from model.body_models import FLAME
from model.rotations import rotvec_to_rotmat

DEFAULT_EVALDATA = Path(__file__).resolve().parents[2] / "shared" / "evaldata"
WFLW_TO_68 = (list(range(0, 33, 2)) + [33, 34, 35, 36, 37, 42, 43, 44, 45, 46] + list(range(51, 60))
              + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75] + list(range(76, 96)))
"""WFLW's 98 points -> iBUG-68 (jaw every other point, the upper brow contours, both eyes' corners and lids)."""
MISSING = -1e6
"""Coordinate given to points of a part that was not found (always wrong in PCK)."""


# --------------------------------------------------------------------------------------------------
# Ground truth (pixel centres: COCO at integers, 300-W 1-based; converted to continuous px)
# --------------------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _image(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), source=str(path))


def _xyxy(box: list[float]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], np.float64)


def coco_wholebody(root: Path) -> tuple[dict[int, Path], list[dict[str, Any]]]:
    """Image paths by id, and every person: ``box`` (xyxy), ``kp`` ``[133, 3]`` (continuous px), ``ann``."""
    data = _read(root / "coco_wholebody" / "annotations" / "test_coco_wholebody.json")
    images = {i["id"]: root / "coco_wholebody" / "images" / i["file_name"] for i in data["images"]}
    persons = []
    for ann in data["annotations"]:
        parts = ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")
        kp = np.concatenate([np.asarray(ann[k], np.float64).reshape(-1, 3) for k in parts])
        kp[:, :2] += 0.5
        persons.append({"image_id": ann["image_id"], "box": _xyxy(ann["bbox"]), "kp": kp, "ann": ann})
    return images, persons


def crops(root: Path, part: str, names: tuple[str, ...]) -> list[tuple[str, Path, np.ndarray, np.ndarray]]:
    """(dataset, image, box, labelled points ``[K, 3]``) of every annotation of ``root/part/<name>/``: for
    faces 300-W and WFLW as 68 points, for hands OneHand10K and FreiHAND (21 points)."""
    out = []
    for name in names:
        data = _read(root / part / name / f"test_{name}.json")
        files = {i["id"]: root / part / name / i["file_name"] for i in data["images"]}
        for ann in data["annotations"]:
            points = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            if name == "wflw":
                points = points[WFLW_TO_68]
            if name == "300w":
                points[:, :2] -= 0.5
            out.append((name, files[ann["image_id"]], _xyxy(ann["bbox"]), points))
    return out


FACE_SETS, HAND_SETS = ("faces", ("300w", "wflw")), ("hands", ("onehand10k", "freihand"))


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def persons_recall(images: dict[int, Path], persons: list[dict[str, Any]], iou: float = 0.5) -> dict[str, Any]:
    """Greedy one-to-one matching (highest IoU first) of detections to labelled persons, per image."""
    stage = PersonsStage()
    matched = detected = 0
    for image_id, path in images.items():
        truth = np.array([p["box"] for p in persons if p["image_id"] == image_id]).reshape(-1, 4)
        boxes, _ = stage.detector(_image(path))
        detected += len(boxes)
        overlap = box_iou(truth, boxes)
        while overlap.size and overlap.max() >= iou:
            t, d = np.unravel_index(overlap.argmax(), overlap.shape)
            matched += 1
            overlap[t, :] = overlap[:, d] = 0.0
    return {"persons_recall": matched / len(persons), "persons_precision": matched / max(detected, 1),
            "persons_gt": len(persons), "persons_detected": detected}


def run_keypoints(
    images: dict[int, Path], persons: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], K.KeypointsStage]:
    """The keypoints stage (defaults) on every labelled person's ground-truth box."""
    stage = K.KeypointsStage()
    cache: dict[int, np.ndarray] = {}
    outputs = []
    for person in persons:
        image = cache.setdefault(person["image_id"], _image(images[person["image_id"]]))
        outputs.append(stage.annotate(image, person["box"]))
    return outputs, stage


def _far_unless(found: bool, points: np.ndarray) -> np.ndarray:
    """``points`` (copied), moved far away when the part was not ``found`` (so PCK counts them wrong)."""
    points = np.array(points, np.float64)
    if not found:
        points[..., :2] = MISSING
    return points


class HandSample(NamedTuple):
    world: np.ndarray  # [21, 3] MediaPipe world landmarks (m)
    image_xy: np.ndarray  # [21, 2] MediaPipe 2D landmarks (px)
    gt: np.ndarray  # [21, 3] labels
    norm: float  # hand box size (px)
    side: int | None  # 0 left, 1 right, None unknown (crops)


class FaceSample(NamedTuple):
    mesh: np.ndarray  # [478, 3] MediaPipe face landmarks
    gt: np.ndarray  # [68, 3] labels


@dataclass
class Found:
    """What the MediaPipe models found, per dataset, for the metrics and the fits."""

    hand_rows: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = field(
        default_factory=lambda: {"onehand10k": [], "freihand": [], "coco": []})
    """(prediction, labels, hand box size) of every labelled hand; predictions far away when not found."""
    face_rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: {"300w_wflw": [], "coco": []})
    """(prediction 68, labels 68) of every face found."""
    counts: dict[str, list[int]] = field(default_factory=dict)
    """``name -> [found, labelled]``."""
    hands: list[HandSample] = field(default_factory=list)
    faces: list[FaceSample] = field(default_factory=list)

    def count(self, name: str, found: bool) -> None:
        counts = self.counts.setdefault(name, [0, 0])
        counts[0] += int(found)
        counts[1] += 1


def collect_persons(outputs: list[dict[str, Any]], persons: list[dict[str, Any]], found: Found) -> None:
    """Faces and hands of the keypoints stage's outputs on COCO-WholeBody persons."""
    for out, person in zip(outputs, persons):
        ann, kp = person["ann"], out["kp2d_wholebody"]
        for side, name in enumerate(("lefthand", "righthand")):
            if not ann[f"{name}_valid"]:
                continue
            part = wb.HANDS[side]
            # keypoint metrics count the hand model's hands; pose-only hands (gloves...) have no keypoints
            hit, gt, norm = bool(out["has_hand_landmarks"][side]), person["kp"][part], metrics.box_size(_xyxy(ann[f"{name}_box"]))
            found.hand_rows["coco"].append((_far_unless(hit, kp[part]), gt, norm))
            found.count("hands_coco", hit)
            found.count("hands_coco_with_pose_only", bool(out["has_hands"][side]))
            if hit:
                found.hands.append(HandSample(out["mp_hand_landmarks_3d"][side], kp[part, :2], gt, norm, side))
        if ann["face_valid"]:
            found.count("faces_coco", bool(out["has_face"]))
            if out["has_face"]:
                found.face_rows["coco"].append((kp[wb.FACE], person["kp"][wb.FACE]))
                found.faces.append(FaceSample(out["mp_face_landmarks"], person["kp"][wb.FACE]))


def collect_crops(evaldata: Path, stage: K.KeypointsStage, found: Found) -> None:
    """The face and hand landmark models on the labelled face and hand boxes of the crop datasets."""
    models, cfg = stage.models(), stage.config
    for name, path, box, gt in crops(evaldata, *FACE_SETS):
        face = K.face_landmarks_in(models.face, _image(path), K.Roi.from_box(box, 1.5), cfg.face_passes)
        hit = face is not None and face.presence >= cfg.min_face_presence
        found.count(f"faces_{name}", hit)
        if hit:
            found.face_rows["300w_wflw"].append((face.mesh[list(wb.FACE_MESH_TO_IBUG68)], gt))
            found.faces.append(FaceSample(face.mesh, gt))
    for name, path, box, gt in crops(evaldata, *HAND_SETS):
        hand = K.hand_landmarks_in(models.hand, _image(path), K.Roi.from_box(box, 2.0), cfg.hand_passes)
        hit = hand.presence >= cfg.min_hand_presence
        found.hand_rows[name].append((_far_unless(hit, hand.points), gt, metrics.box_size(box)))
        found.count(f"hands_{name}", hit)
        if hit:
            found.hands.append(HandSample(hand.world, hand.points[:, :2], gt, metrics.box_size(box), None))


def pck_split(rows: dict[str, list[tuple[np.ndarray, np.ndarray, float]]], threshold: float) -> dict[str, float]:
    """PCK per dataset and pooled (``all``), for (prediction, labels, normaliser) rows."""
    def pck(items: list[tuple[np.ndarray, np.ndarray, float]]) -> float:
        pred, gt, norm = (np.array([r[i] for r in items]) for i in range(3))
        return metrics.pck(pred, gt, gt[..., 2] > 0, norm, threshold)

    out = {name: pck(items) for name, items in rows.items() if items}
    out["all"] = pck([r for items in rows.values() for r in items])
    return out


def nme_split(rows: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, float]:
    """Inter-ocular NME per dataset and pooled (``all``), for (prediction 68, labels 68) rows."""
    def nme(items: list[tuple[np.ndarray, np.ndarray]]) -> float:
        pred, gt = np.array([r[0] for r in items]), np.array([r[1] for r in items])
        return metrics.nme(pred, gt, gt[..., 2] > 0, metrics.interocular(gt))

    out = {name: nme(items) for name, items in rows.items() if items}
    out["all"] = nme([r for items in rows.values() for r in items])
    return out


def weak_perspective_xy(points3d: np.ndarray, image_xy: np.ndarray) -> np.ndarray:
    """``points3d  # [K, 3]`` seen along z: x, y scaled and shifted (least squares, no rotation) onto
    ``image_xy  # [K, 2]``."""
    xy = points3d[:, :2] - points3d[:, :2].mean(0)
    target = image_xy - image_xy.mean(0)
    return (xy * target).sum() / (xy * xy).sum() * xy + image_xy.mean(0)


def flame68_in_image(flame: FLAME, fit: FaceFitResult) -> np.ndarray:
    """FLAME's 68 landmarks ``[N, 68, 2]`` through the fitted weak-perspective camera (contour by head yaw)."""
    def padded(values: torch.Tensor, size: int) -> torch.Tensor:
        return torch.nn.functional.pad(values, (0, size - values.shape[1]))

    sizes = flame.shape_sizes
    out = flame(betas=padded(fit.shape, sizes["betas"]), expression=padded(fit.expression, sizes["expression"]),
                global_orient=fit.head_rotation, jaw_pose=fit.jaw_pose, eye_pose=fit.eye_pose)
    # FLAME turns the head about its root joint, the fit's camera about the origin
    root = out.joints[:, 0]
    shift = (rotvec_to_rotmat(fit.head_rotation) @ root[..., None])[..., 0] - root
    return (fit.scale[:, None, None] * (out.landmarks68 + shift[:, None]) + fit.translation[:, None])[..., :2].numpy()


def evaluate_mano_ik(stage: ManoIkStage, hands: list[HandSample]) -> dict[str, Any]:
    """Fit every hand found; a hand of unknown side (crops) is fitted both ways and the better fit kept."""
    if not hands:
        return {"mano_ik_hands": 0}
    world = torch.as_tensor(np.stack([h.world for h in hands]), dtype=torch.float64)
    fits: list[HandIkResult] = [solve_hand_ik(stage.layer(), world, torch.full((len(hands),), side == 0), stage.config)
                                for side in (0, 1)]
    rows, rmse = [], []
    for i, hand in enumerate(hands):
        best = hand.side if hand.side is not None else int(fits[1].rmse[i] < fits[0].rmse[i])
        rmse.append(float(fits[best].rmse[i]) * 1e3)
        rows.append((weak_perspective_xy(fits[best].keypoints[i].numpy(), hand.image_xy), hand.gt, hand.norm))
    pred, gt, norm = (np.array([r[i] for r in rows]) for i in range(3))
    return {"mano_ik_hands": len(hands), "mano_ik_rmse_mm_median": statistics.median(rmse),
            "mano_ik_hand_pck_0.2": metrics.pck(pred, gt, gt[..., 2] > 0, norm, 0.2)}


def evaluate_flame_fit(stage: FlameFitStage, flame: FLAME, faces: list[FaceSample]) -> dict[str, Any]:
    """Fit every face found; NME of the fit against MediaPipe and of FLAME's 68 points against the labels."""
    if not faces:
        return {"flame_fit_faces": 0}
    layer = stage.layer()
    meshes = torch.as_tensor(np.stack([f.mesh for f in faces]), dtype=torch.float64)
    fit = solve_face_fit(layer, meshes, stage.config)
    gt = np.stack([f.gt for f in faces])
    interocular = metrics.interocular(gt)
    target = meshes[:, layer.landmark_indices, :2].numpy()
    mp_error = np.linalg.norm(fit.landmarks[..., :2].numpy() - target, axis=-1).mean(1) / interocular
    return {"flame_fit_faces": len(faces), "flame_fit_nme_mediapipe": float(mp_error.mean()),
            "flame_fit_face_nme68": metrics.nme(flame68_in_image(flame, fit), gt, gt[..., 2] > 0, interocular)}


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def latencies(evaldata: Path, person: tuple[np.ndarray, np.ndarray], stage: K.KeypointsStage, found: Found,
              hand_stage: ManoIkStage, face_stage: FlameFitStage, repeats: int) -> dict[str, float]:
    """Per-crop CPU milliseconds of each backend (see the module docstring)."""
    models = stage.models()
    image, box = person
    crop, _ = crop_person(image, box, scale=1.25, out_size=stage.config.pose_crop_size)
    _, face_path, face_box, _ = crops(evaldata, *FACE_SETS)[0]
    _, hand_path, hand_box, _ = crops(evaldata, *HAND_SETS)[0]
    face_image, face_roi = _image(face_path), K.Roi.from_box(face_box, 1.5)
    hand_image, hand_roi = _image(hand_path), K.Roi.from_box(hand_box, 2.0)
    world = torch.as_tensor(np.stack([h.world for h in found.hands] * 64)[:64], dtype=torch.float64)
    meshes = torch.as_tensor(np.stack([f.mesh for f in found.faces] * 64)[:64], dtype=torch.float64)
    left = torch.zeros(64, dtype=torch.bool)
    hands, faces = hand_stage.layer(), face_stage.layer()
    detector = PersonsStage().detector
    return {
        "mediapipe_pose": median_ms(lambda: models.pose.process(np.ascontiguousarray(crop)), repeats),
        "mediapipe_face": median_ms(lambda: K.face_landmarks_in(models.face, face_image, face_roi, 1), repeats),
        "mediapipe_hands": median_ms(lambda: K.hand_landmarks_in(models.hand, hand_image, hand_roi, 1), repeats),
        "keypoints_stage_per_person": stage.latency_ms()["total"],
        "persons_detector_per_image": median_ms(lambda: detector(image), max(1, repeats // 2)),
        "mano_ik_b1": median_ms(lambda: solve_hand_ik(hands, world[:1], left[:1], hand_stage.config), repeats),
        "mano_ik_b64": median_ms(lambda: solve_hand_ik(hands, world, left, hand_stage.config), repeats) / 64,
        "flame_fit_b1": median_ms(lambda: solve_face_fit(faces, meshes[:1], face_stage.config), repeats),
        "flame_fit_b64": median_ms(lambda: solve_face_fit(faces, meshes, face_stage.config), repeats) / 64,
    }


def evaluate(evaldata: Path, body_models: str, repeats: int) -> dict[str, Any]:
    """Every figure of the module docstring."""
    images, persons = coco_wholebody(evaldata)
    result: dict[str, Any] = {"evaldata": str(evaldata), "mediapipe": K.MEDIAPIPE_VERSION}
    result.update(persons_recall(images, persons))

    outputs, stage = run_keypoints(images, persons)
    body = [(_far_unless(bool(o["has_kp_body"]), o["kp2d_wholebody"][wb.BODY]), p["kp"][wb.BODY], metrics.box_size(p["box"]))
            for o, p in zip(outputs, persons) if p["kp"][wb.BODY, 2].sum() > 0]
    pred, gt, norm = (np.array([r[i] for r in body]) for i in range(3))
    for t in (0.05, 0.1):
        result[f"body_pck_{t}"] = metrics.pck(pred, gt, gt[..., 2] > 0, norm, t)
    result["body_persons"] = len(body)

    found = Found()
    collect_persons(outputs, persons, found)
    collect_crops(evaldata, stage, found)
    faces, hands = nme_split(found.face_rows), pck_split(found.hand_rows, 0.2)
    result.update({"face_nme": faces["all"], "face_nme_300w_wflw": faces.get("300w_wflw"),
                   "face_nme_coco": faces.get("coco"), "hand_pck_0.2": hands["all"]})
    result.update({f"hand_pck_0.2_{name}": hands.get(name) for name in found.hand_rows})
    result["found"] = {name: f"{hit}/{total}" for name, (hit, total) in found.counts.items()}

    context = StageContext(body_models=str(body_models))
    hand_stage = ManoIkStage(ManoIkConfig(device="cpu"), context=context)
    face_stage = FlameFitStage(FlameFitConfig(device="cpu"), context=context)
    result.update(evaluate_mano_ik(hand_stage, found.hands))
    result.update(evaluate_flame_fit(face_stage, FLAME.from_dir(body_models).to(torch.float64), found.faces))
    first = persons[0]
    result["latency_ms"] = latencies(evaldata, (_image(images[first["image_id"]]), first["box"]), stage, found,
                                     hand_stage, face_stage, repeats)
    return result


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals, through dicts."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaldata", type=Path, default=DEFAULT_EVALDATA,
                        help=f"evaluation data folder (default: {DEFAULT_EVALDATA})")
    parser.add_argument("--body-models", type=Path, help="body-model folder (default: a fresh synthetic kit)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per latency figure (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if not (args.evaldata / "coco_wholebody").is_dir():
        print(f"--evaldata {args.evaldata}: no coco_wholebody/ there; give the evaluation data folder", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pearl-eval-kit-") as tmp:
        if args.body_models is None:
            from model.assets.synthetic import synthesize_kit

            body_models, kit = str(synthesize_kit(Path(tmp) / "kit", seed=0)), "synthetic"
        else:
            from model.assets.check import kit_kind

            body_models, kit = str(args.body_models), kit_kind(args.body_models)
        result = evaluate(args.evaldata, body_models, args.repeats)
    result.update(body_model_kit=kit, torch_threads=args.threads)
    print(json.dumps(_rounded(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
