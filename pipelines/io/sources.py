"""Dataset sources: find the samples of the job's inputs and load their pixels.

Inputs (local paths or fsspec URLs such as ``s3://bucket/prefix``):

- an **image folder**: every ``.jpg/.jpeg/.png/.webp`` file below it (recursive, case-insensitive
  extensions), and every video file (``.mp4/.avi/.mov/.mkv/.webm``) below it;
- an **image file** or a **video file**;
- a **COCO-style json** (``images`` + ``annotations`` with ``bbox = [x, y, w, h]`` of category
  ``person``; crowd annotations are skipped): images are resolved relative to the json's folder or
  ``image_root``, and their person boxes become label boxes;
- a **SMPL-labelled** file: a 4D-Humans-style WebDataset ``.tar`` or a SPIN-style ``.npz``
  (:mod:`pipelines.io.smpl_sources`).

Sample keys are stable and relative, never absolute: ``"<input name>/<path below the input>"`` for a
folder, the file name for a file, ``"<json stem>/<file_name>"`` for COCO, and
``"<video key>/f{frame:06d}"`` for video frames (whose ``track_id`` is the video key). Two samples with
one key are an error.

Discovery (:func:`discover_samples`) only lists files and validates labels; pixels are read later, in
parallel, by :func:`load_batch` (image bytes through fsspec, decoded by
:func:`annotators.images.decode_image`; video frames through OpenCV). A sample whose labels are bad
(missing, non-numeric, NaN/inf or empty boxes) is kept with ``error_stage = "source"`` and a reason, so
that it reaches the quarantine table of its shard.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections.abc import Iterable, Sequence

import numpy as np

from annotators.base import ERROR_REASON, ERROR_STAGE, error_digest
from annotators.batches import Batch, batch_len
from pipelines.io.samples import IMAGE_EXTENSIONS, SMPL_SOURCE_EXTENSIONS, VIDEO_EXTENSIONS, Sample, SourceError
from pipelines.io.smpl_sources import smpl_source_samples

log = logging.getLogger(__name__)

COCO_PERSON = "person"

SOURCE_STAGE = "source"
"""``error_stage`` of samples whose labels are bad."""
LOAD_STAGE = "load"
"""``error_stage`` of samples whose bytes could not be read or decoded."""


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


def _fs_and_path(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _join(base: str, rel: str) -> str:
    """``base`` joined with a ``/``-separated relative path, keeping a URL's protocol."""
    return base.rstrip("/") + "/" + rel if base else rel


def _name_of(url: str) -> str:
    """The last component of a path or URL (``examples`` for ``./examples/``)."""
    import os

    stripped = url.rstrip("/")
    if "://" not in stripped:
        stripped = os.path.abspath(stripped)
    return posixpath.basename(stripped.replace("\\", "/"))


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def discover_samples(inputs: Sequence[str], *, image_root: str | None = None, video_stride: int = 1) -> list[Sample]:
    """All samples of ``inputs``, sorted by key; raises :class:`SourceError` for unusable inputs or key clashes."""
    samples: list[Sample] = []
    for url in inputs:
        samples.extend(_discover_one(url, image_root=image_root, video_stride=video_stride))
    samples.sort(key=lambda s: s.sample_key)
    for a, b in zip(samples, samples[1:]):
        if a.sample_key == b.sample_key:
            raise SourceError(
                f"two samples have the key {a.sample_key!r} ({a.source} and {b.source}); "
                "keys are relative to each input's name: rename one input folder or pass them separately"
            )
    return samples


def _discover_one(url: str, *, image_root: str | None, video_stride: int) -> list[Sample]:
    fs, path = _fs_and_path(url)
    if not fs.exists(path):
        raise SourceError(f"input {url} does not exist")
    if fs.isdir(path):
        return _discover_folder(url, fs, path, video_stride)
    ext = _ext(path)
    name = _name_of(url)
    if ext in IMAGE_EXTENSIONS:
        return [Sample(sample_key=name, source=url, uri=url)]
    if ext in VIDEO_EXTENSIONS:
        return video_samples(url, name, video_stride)
    if ext == ".json":
        return coco_samples(url, image_root=image_root)
    if ext in SMPL_SOURCE_EXTENSIONS:
        return smpl_source_samples(url, image_root=image_root)
    raise SourceError(
        f"input {url} is not a folder, an image ({', '.join(IMAGE_EXTENSIONS)}), a video "
        f"({', '.join(VIDEO_EXTENSIONS)}), a COCO .json file, a 4D-Humans-style .tar or a SPIN-style .npz"
    )


def _discover_folder(url: str, fs, path: str, video_stride: int) -> list[Sample]:
    root = path.rstrip("/")
    name = _name_of(url)
    samples: list[Sample] = []
    skipped = 0
    for found in sorted(fs.find(root)):
        rel = found[len(root) :].lstrip("/")
        ext = _ext(rel)
        file_url = _join(url.rstrip("/"), rel)
        key = f"{name}/{rel}"
        if ext in IMAGE_EXTENSIONS:
            samples.append(Sample(sample_key=key, source=file_url, uri=file_url))
        elif ext in VIDEO_EXTENSIONS:
            samples.extend(video_samples(file_url, key, video_stride))
        else:
            skipped += 1
    if skipped:
        log.info("input %s: skipped %d file(s) that are neither images nor videos", url, skipped)
    if not samples:
        raise SourceError(f"input folder {url} holds no images or videos")
    return samples


def _local_video(url: str) -> str:
    """A local path OpenCV can open for ``url`` (remote videos are copied to fsspec's local cache)."""
    import fsspec

    if "://" not in url or url.startswith("file://"):
        return url.removeprefix("file://")
    return fsspec.open_local(f"simplecache::{url}")


def count_video_frames(url: str) -> int:
    """Number of decodable frames of a video (counted by grabbing them, not from the container header)."""
    import cv2

    cap = cv2.VideoCapture(_local_video(url))
    if not cap.isOpened():
        raise SourceError(f"video {url} cannot be opened by OpenCV (unsupported codec or not a video)")
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def video_samples(url: str, video_key: str, stride: int) -> list[Sample]:
    """Frames ``0, stride, 2*stride, ...`` of a video as samples keyed ``"<video_key>/f{index:06d}"``."""
    n = count_video_frames(url)
    if n == 0:
        raise SourceError(f"video {url} has no decodable frames")
    return [
        Sample(
            sample_key=f"{video_key}/f{i:06d}",
            source=f"{url}#f{i}",
            uri=url,
            kind="video",
            track_id=video_key,
            frame_index=i,
        )
        for i in range(0, n, stride)
    ]


def coco_box_xyxy(ann: dict) -> list[float]:
    """``[x0, y0, x1, y1]`` of a COCO annotation's ``bbox = [x, y, w, h]``; ``ValueError`` says what is wrong."""
    if "bbox" not in ann:
        raise ValueError(f"annotation {ann.get('id', '?')} has no bbox")
    box = ann["bbox"]
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError(f"annotation {ann.get('id', '?')} bbox {box!r} is not [x, y, w, h]")
    if any(v is None or isinstance(v, bool) or not isinstance(v, (int, float)) for v in box):
        raise ValueError(f"annotation {ann.get('id', '?')} bbox {box!r} has a missing or non-numeric value")
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"annotation {ann.get('id', '?')} bbox {box!r} has NaN or inf")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"annotation {ann.get('id', '?')} bbox {box!r} has a non-positive width or height")
    return [x, y, x + w, y + h]


def coco_samples(url: str, *, image_root: str | None = None) -> list[Sample]:
    """Samples of a COCO-style json: one per image, with its person boxes as labels."""
    fs, path = _fs_and_path(url)
    try:
        with fs.open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))  # NaN/Infinity literals parse to floats
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"COCO file {url} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SourceError(f"COCO file {url} has no 'images' list")
    person_ids = {c.get("id") for c in data.get("categories", []) if c.get("name") == COCO_PERSON} or {1}
    by_image: dict = {}
    for ann in data.get("annotations", []):
        if ann.get("category_id", 1) in person_ids and not ann.get("iscrowd", 0):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    root = image_root if image_root is not None else url.rsplit("/", 1)[0] if "/" in url else "."
    stem = posixpath.splitext(_name_of(url))[0]
    samples = []
    for image in data["images"]:
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise SourceError(f"COCO file {url}: image {image.get('id', '?')} has no file_name")
        boxes, reason = [], ""
        for ann in sorted(by_image.get(image.get("id"), []), key=lambda a: str(a.get("id", ""))):
            try:
                boxes.append(coco_box_xyxy(ann))
            except ValueError as exc:
                reason = f"bad label: {exc}"
                break
        file_url = _join(root, file_name)
        samples.append(
            Sample(
                sample_key=f"{stem}/{file_name}",
                source=file_url,
                uri=file_url,
                labels="" if reason else json.dumps(boxes),
                error_reason=reason,
            )
        )
    return samples


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------

SAMPLE_COLUMNS = ("sample_key", "source", "uri", "kind", "track_id", "frame_index", "labels")


def samples_to_batch(samples: Sequence[Sample]) -> Batch:
    """Descriptor rows of ``samples`` (strings and ints only, cheap to ship) with the error columns."""
    batch: Batch = {c: np.array([getattr(s, c) for s in samples], dtype=object) for c in SAMPLE_COLUMNS}
    batch["frame_index"] = np.array([s.frame_index for s in samples], dtype=np.int32)
    batch[ERROR_STAGE] = np.array([SOURCE_STAGE if s.error_reason else "" for s in samples], dtype=object)
    batch[ERROR_REASON] = np.array([s.error_reason for s in samples], dtype=object)
    return batch


def label_boxes(labels: str) -> np.ndarray:
    """``[N, 4]`` float32 xyxy boxes from a :attr:`Sample.labels` string (``[0, 4]`` for no labels)."""
    if not labels:
        return np.zeros((0, 4), dtype=np.float32)
    entries = json.loads(labels)  # boxes, or per-person objects with a "box" (SMPL-labelled sources)
    boxes = [e["box"] if isinstance(e, dict) else e for e in entries]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)
"""``image`` of rows that failed to load (never ``None``: Ray Data stores object columns of arrays as
tensors, and ``None`` would force a pickled fallback)."""


def _read_bytes(uri: str) -> bytes:
    import fsspec

    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def _video_frames(uri: str, frames: Iterable[int], max_pixels: int) -> dict[int, np.ndarray | Exception]:
    """RGB frames ``[H, W, 3]`` uint8 of one video by frame index (an exception for frames that fail)."""
    import cv2

    wanted = sorted(set(frames))
    out: dict[int, np.ndarray | Exception] = {}
    cap = cv2.VideoCapture(_local_video(uri))
    try:
        if not cap.isOpened():
            raise OSError(f"video {uri} cannot be opened by OpenCV")
        if wanted[0] > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, wanted[0])
        pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
        for index in wanted:
            while pos < index and cap.grab():
                pos += 1
            ok, bgr = cap.read()
            pos += 1
            if not ok or pos - 1 != index:
                out[index] = OSError(f"video {uri}: frame {index} cannot be decoded")
            elif bgr.shape[0] * bgr.shape[1] > max_pixels:
                out[index] = ValueError(f"video {uri}: frame of {bgr.shape[1]}x{bgr.shape[0]} px is over "
                                        f"max_pixels={max_pixels}")
            else:
                out[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    except Exception as exc:  # noqa: BLE001 - every wanted frame gets the reason
        for index in wanted:
            out.setdefault(index, exc)
    finally:
        cap.release()
    return out


def load_batch(batch: Batch, *, max_pixels: int) -> Batch:
    """Add ``image`` (object column of ``[H, W, 3]`` uint8 RGB), ``image_width``, ``image_height``,
    ``label_boxes`` (object column of ``[N, 4]`` float32 xyxy, ``N`` may be 0) and ``has_label_boxes``
    (bool: the source has box labels for the sample, even if none) to descriptor rows.

    Rows that cannot be read or decoded get ``error_stage = "load"`` and the reason (no exception
    escapes); rows already failed are passed through untouched.
    """
    from annotators.images import decode_image

    n = batch_len(batch)
    images = np.empty(n, dtype=object)
    boxes = np.empty(n, dtype=object)
    for i in range(n):
        images[i] = EMPTY_IMAGE
        boxes[i] = label_boxes(batch["labels"][i])
    has_labels = np.array([bool(v) for v in batch["labels"]], dtype=bool)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    stage = np.asarray(batch[ERROR_STAGE], dtype=object).copy()
    reason = np.asarray(batch[ERROR_REASON], dtype=object).copy()
    results: dict[int, np.ndarray | Exception] = {}
    videos: dict[str, list[int]] = {}
    for i in range(n):
        if stage[i]:
            continue
        if batch["kind"][i] == "video":
            videos.setdefault(batch["uri"][i], []).append(i)
            continue
        try:
            results[i] = decode_image(_read_bytes(batch["uri"][i]), source=batch["source"][i], max_pixels=max_pixels)
        except Exception as exc:  # noqa: BLE001 - quarantined with its reason
            results[i] = exc
    for uri, rows in videos.items():
        frames = _video_frames(uri, [int(batch["frame_index"][i]) for i in rows], max_pixels)
        for i in rows:
            results[i] = frames[int(batch["frame_index"][i])]
    for i, result in results.items():
        if isinstance(result, Exception):
            stage[i], reason[i] = LOAD_STAGE, error_digest(result)
        else:
            images[i] = result
            height[i], width[i] = result.shape[:2]
    out = dict(batch)
    out.update(image=images, label_boxes=boxes, has_label_boxes=has_labels, image_width=width, image_height=height)
    out[ERROR_STAGE], out[ERROR_REASON] = stage, reason
    return out
