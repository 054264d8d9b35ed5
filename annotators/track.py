"""The ``track/iou-oks`` stage: persons linked across the frames of a video clip, one ``track_id`` each.

Video frames arrive from the source with ``track_id`` holding their clip's key (``"<clip>"``, the video's
sample-key prefix) and ``frame_index`` their frame number; the whole clip (or its segment, see
``docs/annotate.md``) is in one shard, so this stage sees all of its frames at once. Per clip, in frame
order, it keeps a set of tracks and matches each frame's persons to them:

1. **Motion model.** A track predicts its box centre at the new frame from its last centre and a smoothed
   velocity (constant velocity per frame index, so strides and skipped frames are handled); the box size is
   its last one. The motion term is ``exp(-d^2 / 2 s^2)``, ``d`` the distance of the person's box centre from
   the prediction in box heights and ``s = motion_sigma * (1 + gap_growth * (frames since seen - 1))``: a track
   unseen for a while is searched for farther away.
2. **Appearance**: a hue-saturation histogram of the box's central part (the ``image`` column), the track's
   a running mean; the term is the Bhattacharyya coefficient of the two histograms. It tells apart people who
   cross or whom the detector misses for a few frames.
3. **Similarity** of a track and a person: the weighted mean of the motion term, the appearance term and the
   COCO object-keypoint similarity (OKS) of the track's last body keypoints and the person's (the 17 body
   keypoints of ``kp2d_wholebody`` confident in both, scale = the box area); a term that cannot be measured
   (no image, fewer than ``min_keypoints`` keypoints confident in both) leaves the mean. The track's keypoints
   are first moved along its predicted motion.
4. **Assignment.** The Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on ``1 - similarity``;
   pairs under ``min_similarity`` are not matched. Unmatched persons start new tracks; a track unseen for more
   than ``max_age`` frame indices ends.

Tracks are numbered in the order they start (frame, then ``person_index``) and written as
``track_id = "<clip>#t<k>"``: the same inputs give the same ids. Still images (``track_id`` empty) and rows
without a person pass through unchanged. The refinement stage shares the identity parameters (SMPL-X
betas, FLAME shape, head and hand scales) of all rows with one ``track_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from annotators.base import STAGES, Stage, StageResources, good_rows
from annotators.batches import Batch
from schemas import keypoints as kpl

log = logging.getLogger(__name__)

COCO_BODY_SIGMAS = np.array([0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107,
                             0.107, 0.087, 0.087, 0.089, 0.089])
"""COCO's per-keypoint OKS constants of the 17 body keypoints (the COCO keypoint evaluation's ``sigmas``)."""


@dataclass
class TrackConfig:
    """Settings of the ``track/iou-oks`` stage."""

    motion_weight: float = 1.0
    """Weight of the motion term (distance of the box centre from the track's prediction) in the similarity."""
    motion_sigma: float = 0.3
    """Distance from the prediction, in box heights, at which the motion term of a track seen in the previous
    frame is ``exp(-1/2)``."""
    gap_growth: float = 0.5
    """How much farther per missed frame a track's motion term reaches (``s`` grows by this fraction of
    ``motion_sigma`` per frame index since it was last seen)."""
    appearance_weight: float = 1.0
    """Weight of the colour-histogram term in the similarity (0: off)."""
    keypoint_weight: float = 1.0
    """Weight of the body-keypoint OKS in the similarity."""
    min_similarity: float = 0.3
    """A track and a person with a lower similarity are never matched."""
    min_keypoints: int = 4
    """Body keypoints confident in both sets that the OKS term needs (else the IoU term alone decides)."""
    keypoint_threshold: float = 0.3
    """Confidence a keypoint needs to count in the OKS."""
    max_age: int = 30
    """A track not matched for more than this many frame indices ends (a later person starts a new one)."""
    velocity_smoothing: float = 0.5
    """Weight of the newest centre motion in the track's velocity, after the first (1: last motion only, 0: no
    velocity: a track is looked for where it was last seen)."""

    def __post_init__(self) -> None:
        checks = {"motion_weight": self.motion_weight > 0, "motion_sigma": self.motion_sigma > 0,
                  "gap_growth": self.gap_growth >= 0, "appearance_weight": self.appearance_weight >= 0,
                  "keypoint_weight": self.keypoint_weight >= 0, "min_similarity": 0 <= self.min_similarity <= 1,
                  "min_keypoints": self.min_keypoints >= 1, "keypoint_threshold": 0 <= self.keypoint_threshold <= 1,
                  "max_age": self.max_age >= 0, "velocity_smoothing": 0 <= self.velocity_smoothing <= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ValueError(f"TrackConfig: out of range: {values}")


# --------------------------------------------------------------------------------------------------
# The tracker (pure numpy)
# --------------------------------------------------------------------------------------------------


def keypoint_similarity(a: np.ndarray, b: np.ndarray, area: float, threshold: float, min_keypoints: int) -> float | None:
    """COCO OKS of two body keypoint sets ``a, b  # [17, 3]`` (x, y, confidence) at object ``area`` (px²),
    over the keypoints confident in both; ``None`` when fewer than ``min_keypoints`` are."""
    both = (a[:, 2] >= threshold) & (b[:, 2] >= threshold)
    if int(both.sum()) < min_keypoints:
        return None
    d2 = ((a[both, :2] - b[both, :2]) ** 2).sum(-1)
    var = (2 * COCO_BODY_SIGMAS[both]) ** 2
    return float(np.mean(np.exp(-d2 / (2 * max(area, 1.0) * var))))


HIST_BINS = (16, 8)
"""Hue and saturation bins of the appearance histograms."""


def appearance_histogram(image: np.ndarray, box_xyxy: np.ndarray) -> np.ndarray | None:
    """Normalised hue-saturation histogram ``[16 * 8]`` of the central half (in each direction) of a person box
    in ``image  # [H, W, 3]`` RGB uint8, or None when that region is empty."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    a, b = int(max(0, round(cx - hw))), int(min(w, round(cx + hw)))
    c, d = int(max(0, round(cy - hh))), int(min(h, round(cy + hh)))
    if b <= a or d <= c:
        return None
    hsv = cv2.cvtColor(np.ascontiguousarray(image[c:d, a:b]), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(HIST_BINS), [0, 180, 0, 256]).reshape(-1).astype(np.float64)
    total = hist.sum()
    return hist / total if total > 0 else None


def bhattacharyya(p: np.ndarray, q: np.ndarray) -> float:
    """Bhattacharyya coefficient of two normalised histograms, in [0, 1] (1: identical)."""
    return float(np.sqrt(p * q).sum())


@dataclass
class _Track:
    number: int
    box: np.ndarray  # [4]
    velocity: np.ndarray  # [2] box-centre change per frame index
    keypoints: np.ndarray | None  # [17, 3]
    appearance: np.ndarray | None  # normalised histogram
    last_frame: int
    seen: int = 1

    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2

    def predict(self, frame: int) -> np.ndarray:
        """Predicted box centre ``[2]`` at ``frame``."""
        return self.centre() + self.velocity * (frame - self.last_frame)


@dataclass
class ClipTracker:
    """Links the persons of one clip's frames (see the module docstring); call :meth:`step` frame by frame."""

    config: TrackConfig
    tracks: list[_Track] = field(default_factory=list)
    started: int = 0

    def step(self, frame: int, boxes: np.ndarray, keypoints: np.ndarray | None,
             appearance: list[np.ndarray | None] | None = None) -> np.ndarray:
        """Track numbers ``[P]`` of the persons of frame ``frame``: ``boxes  # [P, 4]`` xyxy px,
        ``keypoints  # [P, 17, 3]`` or None, ``appearance``: a histogram per person (or None). Frames must come
        in increasing order."""
        cfg = self.config
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= cfg.max_age]
        n = len(boxes)
        appearance = appearance if appearance is not None else [None] * n
        numbers = np.full(n, -1, dtype=np.int64)
        if self.tracks and n:
            sim = self.similarity(frame, boxes, keypoints, appearance)
            cost = np.where(sim >= cfg.min_similarity, 1.0 - sim, 1e6)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if sim[r, c] >= cfg.min_similarity:
                    self._update(self.tracks[r], frame, boxes[c], None if keypoints is None else keypoints[c],
                                 appearance[c])
                    numbers[c] = self.tracks[r].number
        for c in np.flatnonzero(numbers < 0):
            track = _Track(self.started, np.asarray(boxes[c], np.float64), np.zeros(2),
                           None if keypoints is None else np.asarray(keypoints[c], np.float64), appearance[c], frame)
            self.tracks.append(track)
            numbers[c] = self.started
            self.started += 1
        return numbers

    def similarity(self, frame: int, boxes: np.ndarray, keypoints: np.ndarray | None,
                   appearance: list[np.ndarray | None]) -> np.ndarray:
        """``[T, P]`` similarity of the live tracks and the frame's persons."""
        cfg = self.config
        out = np.empty((len(self.tracks), len(boxes)))
        centres = (np.asarray(boxes[:, :2]) + np.asarray(boxes[:, 2:])) / 2
        for i, track in enumerate(self.tracks):
            gap = frame - track.last_frame
            sigma = cfg.motion_sigma * (1 + cfg.gap_growth * max(gap - 1, 0))
            height = max(float(track.box[3] - track.box[1]), 1.0)
            d = np.linalg.norm(centres - track.predict(frame), axis=1) / height
            motion = np.exp(-0.5 * (d / sigma) ** 2)
            moved = None
            if track.keypoints is not None:  # the last keypoints carried along the predicted motion
                moved = track.keypoints.copy()
                moved[:, :2] += track.velocity * gap
            for j, box in enumerate(boxes):
                terms = [(cfg.motion_weight, float(motion[j]))]
                if cfg.appearance_weight > 0 and track.appearance is not None and appearance[j] is not None:
                    terms.append((cfg.appearance_weight, bhattacharyya(track.appearance, appearance[j])))
                if keypoints is not None and moved is not None and cfg.keypoint_weight > 0:
                    area = float((box[2] - box[0]) * (box[3] - box[1]))
                    oks = keypoint_similarity(moved, keypoints[j], area, cfg.keypoint_threshold, cfg.min_keypoints)
                    if oks is not None:
                        terms.append((cfg.keypoint_weight, oks))
                out[i, j] = sum(w * v for w, v in terms) / sum(w for w, _ in terms)
        return out

    def _update(self, track: _Track, frame: int, box: np.ndarray, keypoints: np.ndarray | None,
                appearance: np.ndarray | None) -> None:
        a = self.config.velocity_smoothing
        dt = max(frame - track.last_frame, 1)
        box = np.asarray(box, np.float64)
        step = ((box[:2] + box[2:]) / 2 - track.centre()) / dt
        first = track.seen == 1 and a > 0  # a second sighting gives the first velocity whole
        track.velocity = step if first else a * step + (1 - a) * track.velocity
        track.box = box
        if keypoints is not None:
            track.keypoints = np.asarray(keypoints, np.float64)
        if appearance is not None:
            track.appearance = appearance if track.appearance is None else 0.7 * track.appearance + 0.3 * appearance
        track.last_frame = frame
        track.seen += 1


def track_clip(frames: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None, config: TrackConfig,
               appearance: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Track numbers ``[N]`` of the persons of one clip: ``frames  # [N]`` frame indices, ``boxes  # [N, 4]``,
    ``keypoints  # [N, 17, 3]`` or None, ``appearance``: ``N`` histograms (or None) or None; rows in any order
    (within a frame, earlier rows start tracks first)."""
    frames = np.asarray(frames, np.int64)
    numbers = np.full(len(frames), -1, dtype=np.int64)
    tracker = ClipTracker(config)
    for frame in np.unique(frames):
        rows = np.flatnonzero(frames == frame)
        kp = None if keypoints is None else keypoints[rows]
        app = None if appearance is None else [appearance[i] for i in rows]
        numbers[rows] = tracker.step(int(frame), np.asarray(boxes[rows], np.float64), kp, app)
    return numbers


def track_key(clip: str, number: int) -> str:
    """The record's ``track_id`` of track ``number`` of ``clip``."""
    return f"{clip}#t{number}"


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@STAGES.register("track/iou-oks")
class TrackStage(Stage):
    """Person tracks within video clips (see the module docstring)."""

    name = "track"
    config_class = TrackConfig
    resources = StageResources(num_cpus=0.0)
    """Default actor resources: no CPU reserved (milliseconds per shard; the 2-core default plan needs its share
    elsewhere)."""
    default_backend = True
    version = "1"
    required = ("track_id", "frame_index", "bbox_xyxy", "person_index")
    requirement_hint = "run the persons stage first"

    def __call__(self, batch: Batch) -> Batch:
        n = self.check_columns(batch)
        tracks = np.asarray(batch["track_id"], dtype=object).copy()
        frames = np.asarray(batch["frame_index"], np.int64)
        persons = np.asarray(batch["person_index"], np.int64)
        video = np.array([bool(t) for t in tracks], bool) & (frames >= 0) & (persons >= 0) & good_rows(batch)
        keypoints = None
        if "kp2d_wholebody" in batch:
            keypoints = np.stack([np.asarray(k, np.float64)[kpl.BODY] for k in batch["kp2d_wholebody"]]) if n else None
        for clip in sorted({str(t) for t in tracks[video]}):
            rows = np.flatnonzero(video & (tracks == clip))
            order = rows[np.lexsort((persons[rows], frames[rows]))]
            kp = None if keypoints is None else keypoints[order]
            boxes = np.stack([np.asarray(batch["bbox_xyxy"][i], np.float64) for i in order])
            appearance = None
            if "image" in batch and self.config.appearance_weight > 0:
                appearance = [appearance_histogram(batch["image"][i], boxes[k])
                              if isinstance(batch["image"][i], np.ndarray) and batch["image"][i].ndim == 3 else None
                              for k, i in enumerate(order)]
            numbers = track_clip(frames[order], boxes, kp, self.config, appearance)
            for i, k in zip(order, numbers):
                tracks[i] = track_key(clip, int(k))
            log.debug("track: clip %s, %d persons in %d frames, %d tracks", clip, len(order),
                      len(set(frames[order].tolist())), len(set(numbers.tolist())))
        batch["track_id"] = tracks
        return batch
