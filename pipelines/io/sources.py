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
``"<video key>/f{frame:06d}"`` for video frames. A video's frames carry the clip's key as ``track_id``
(``"<video key>"``, or ``"<video key>#s<j>"`` for segment ``j`` of a clip longer than ``max_clip_frames``); the
tracking stage turns it into one id per person. Two samples with one key are an error.

Discovery (:func:`discover`) only lists files and validates labels; pixels are read later, in parallel, by
:func:`load_batch` (image bytes through fsspec, decoded by :func:`annotators.images.decode_image`; video frames
through OpenCV). **One bad file never stops or silently shrinks a job**: a file or frame that cannot be used
becomes a *fault sample* (``error_stage = "source"`` and the reason) that the sink writes to the quarantine
table of its shard, and the rest of the job runs:

- labels that are missing, non-numeric, NaN/inf or empty boxes; a COCO ``file_name`` that leaves the image
  root (``..``, absolute paths); a SMPL-labelled tar or npz that cannot be read (then one fault sample for
  the whole file, keyed by its name);
- a file name that is not valid UTF-8 (its key shows the bytes escaped: ``\\xNN``), a path that is not a
  regular file (a FIFO, a socket, a device: never opened, so nothing hangs);
- a video that cannot be opened or has no decodable frame, and each frame of a video that cannot be decoded
  (the frames after it are still annotated).

Files skipped because their extension is none of the above are listed in :attr:`Discovery.skipped` (and in
the run report), not silently dropped. Only an input that does not exist, or a folder with nothing usable,
stops the job before it starts (:class:`pipelines.io.samples.SourceError`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from annotators.base import ERROR_REASON, ERROR_STAGE, error_digest
from annotators.batches import Batch, batch_len
from pipelines.io.samples import (
    IMAGE_EXTENSIONS,
    SMPL_SOURCE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Sample,
    SourceError,
    fault_sample,
    printable,
)
from pipelines.io.smpl_sources import smpl_source_samples

log = logging.getLogger(__name__)

COCO_PERSON = "person"

SOURCE_STAGE = "source"
"""``error_stage`` of samples whose file, frame or labels cannot be used."""
LOAD_STAGE = "load"
"""``error_stage`` of samples whose bytes could not be read or decoded."""


@dataclass
class Discovery:
    """What :func:`discover` found."""

    samples: list[Sample]
    """Every sample, fault samples included, sorted by key."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of the files that were not samples (their extension is not an input type)."""


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
    stripped = url.rstrip("/")
    if "://" not in stripped:
        stripped = os.path.abspath(stripped)
    return posixpath.basename(stripped.replace("\\", "/"))


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def discover(inputs: Sequence[str], *, image_root: str | None = None, video_stride: int = 1,
             max_clip_frames: int = 512) -> Discovery:
    """All samples of ``inputs``, sorted by key, with the files skipped; raises :class:`SourceError` for an
    input that does not exist or holds nothing usable, and for key clashes (see the module docstring)."""
    found = Discovery([])
    for url in inputs:
        _discover_one(url, found, image_root=image_root, video_stride=video_stride, max_clip_frames=max_clip_frames)
    found.samples.sort(key=lambda s: s.sample_key)
    for a, b in zip(found.samples, found.samples[1:]):
        if a.sample_key == b.sample_key:
            raise SourceError(
                f"two samples have the key {a.sample_key!r} ({a.source} and {b.source}); "
                "keys are relative to each input's name: rename one input folder or pass them separately"
            )
    faults = sum(1 for s in found.samples if s.error_reason)
    if faults:
        log.warning("%d of %d samples cannot be used and go to the quarantine table with their reason", faults,
                    len(found.samples))
    return found


def discover_samples(inputs: Sequence[str], *, image_root: str | None = None, video_stride: int = 1,
                     max_clip_frames: int = 512) -> list[Sample]:
    """The samples of :func:`discover`."""
    return discover(inputs, image_root=image_root, video_stride=video_stride, max_clip_frames=max_clip_frames).samples


def _not_regular(fs, path: str) -> str:
    """Why the local file ``path`` cannot be read as data (a FIFO, socket, device...), or ``""``."""
    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return ""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return ""
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{kind}, not a regular file: not opened"


def _discover_one(url: str, found: Discovery, *, image_root: str | None, video_stride: int,
                  max_clip_frames: int) -> None:
    fs, path = _fs_and_path(url)
    if not fs.exists(path):
        raise SourceError(f"input {url} does not exist")
    if fs.isdir(path):
        _discover_folder(url, fs, path, found, video_stride, max_clip_frames)
        return
    ext = _ext(path)
    if ext not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + (".json",) + SMPL_SOURCE_EXTENSIONS:
        raise SourceError(
            f"input {url} is not a folder, an image ({', '.join(IMAGE_EXTENSIONS)}), a video "
            f"({', '.join(VIDEO_EXTENSIONS)}), a COCO .json file, a 4D-Humans-style .tar or a SPIN-style .npz"
        )
    found.samples.extend(_file_samples(url, fs, path, _name_of(url), image_root=image_root, video_stride=video_stride,
                                       max_clip_frames=max_clip_frames))


def _file_samples(url: str, fs, path: str, key: str, *, image_root: str | None, video_stride: int,
                  max_clip_frames: int) -> list[Sample]:
    """The samples of one input file, or one fault sample when the file cannot be used."""
    shown = printable(key)
    if shown != key:
        return [fault_sample(shown, printable(url), "file name is not valid UTF-8: rename the file")]
    reason = _not_regular(fs, path)
    if reason:
        return [fault_sample(key, url, reason)]
    ext = _ext(path)
    try:
        if ext in IMAGE_EXTENSIONS:
            return [Sample(sample_key=key, source=url, uri=url)]
        if ext in VIDEO_EXTENSIONS:
            return video_samples(url, key, video_stride, max_clip_frames)
        if ext == ".json":
            return coco_samples(url, image_root=image_root)
        return smpl_source_samples(url, image_root=image_root)
    except SourceError as exc:
        return [fault_sample(key, url, str(exc))]


def _discover_folder(url: str, fs, path: str, found: Discovery, video_stride: int, max_clip_frames: int) -> None:
    root = path.rstrip("/")
    name = _name_of(url)
    count = len(found.samples)
    skipped = []
    for entry in sorted(fs.find(root)):
        rel = entry[len(root) :].lstrip("/")
        file_url = _join(url.rstrip("/"), rel)
        if _ext(rel) in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
            found.samples.extend(_file_samples(file_url, fs, entry, f"{name}/{rel}", image_root=None,
                                               video_stride=video_stride, max_clip_frames=max_clip_frames))
        else:
            skipped.append((printable(file_url), f"not an image or video ({_ext(rel) or 'no extension'})"))
    if skipped:
        shown = ", ".join(p for p, _ in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.info("input %s: skipped %d file(s) that are neither images nor videos: %s", url, len(skipped), shown)
        found.skipped.extend(skipped)
    if len(found.samples) == count:
        raise SourceError(f"input folder {url} holds no images or videos")


def _local_video(url: str) -> str:
    """A local path OpenCV can open for ``url`` (remote videos are copied to fsspec's local cache)."""
    import fsspec

    if "://" not in url or url.startswith("file://"):
        return url.removeprefix("file://")
    return fsspec.open_local(f"simplecache::{url}")


MAX_FAILED_GRABS = 64
"""Consecutive frames that fail to decode after which a video scan stops (a header may claim any count)."""


def scan_video_frames(url: str) -> tuple[list[bool], int]:
    """Which frames of a video decode (``[N]`` bools: a corrupt frame fails alone, the ones after it are read
    on) and how many frames its container claims. The scan reads up to the larger of the claimed count and the
    frames that decode, and stops after :data:`MAX_FAILED_GRABS` failures in a row. Raises
    :class:`SourceError` when the video cannot be opened."""
    import cv2

    cap = cv2.VideoCapture(_local_video(url))
    if not cap.isOpened():
        raise SourceError(f"video {url} cannot be opened by OpenCV (unsupported codec or not a video)")
    claimed = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    decoded: list[bool] = []
    failed_run = 0
    try:
        while failed_run < MAX_FAILED_GRABS:
            ok = cap.grab()
            if not ok and len(decoded) >= claimed:
                break
            decoded.append(bool(ok))
            failed_run = 0 if ok else failed_run + 1
    finally:
        cap.release()
    if failed_run >= MAX_FAILED_GRABS:  # the tail of a broken video: said once, in video_samples
        del decoded[len(decoded) - failed_run:]
    return decoded, claimed


def count_video_frames(url: str) -> int:
    """Number of frames of a video that the scan reached, decodable or not (see :func:`scan_video_frames`)."""
    return len(scan_video_frames(url)[0])


def clip_segments(frames: int, max_frames: int) -> list[range]:
    """Positions ``0..frames-1`` cut into the fewest consecutive segments of at most ``max_frames``, of equal
    length up to one."""
    count = max(1, math.ceil(frames / max_frames))
    bounds = [round(i * frames / count) for i in range(count + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def video_samples(url: str, video_key: str, stride: int, max_clip_frames: int = 512) -> list[Sample]:
    """Frames ``0, stride, 2*stride, ...`` of a video as samples keyed ``"<video_key>/f{index:06d}"``, with the
    clip (or segment) key as ``track_id``; frames that do not decode are fault samples with their reason."""
    decoded, claimed = scan_video_frames(url)
    if not any(decoded):
        raise SourceError(f"video {url} has no decodable frames (its container claims {claimed})")
    frames = list(range(0, len(decoded), stride))
    segments = clip_segments(len(frames), max_clip_frames)
    samples = []
    for j, segment in enumerate(segments):
        clip = video_key if len(segments) == 1 else f"{video_key}#s{j}"
        for pos in segment:
            i = frames[pos]
            reason = "" if decoded[i] else f"video {url}: frame {i} cannot be decoded (corrupt or missing data)"
            samples.append(Sample(sample_key=f"{video_key}/f{i:06d}", source=f"{url}#f{i}", uri=url, kind="video",
                                  track_id=clip, frame_index=i, error_reason=reason))
    if claimed > len(decoded):
        samples.append(fault_sample(f"{video_key}/f{len(decoded):06d}+", url,
                                    f"video {url}: its container claims {claimed} frames, frames {len(decoded)} to "
                                    f"{claimed - 1} cannot be read (truncated or corrupt)"))
    return samples


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


def safe_relative_path(name: str) -> str:
    """Why ``name`` (a path a label file gives relative to its image root) would leave that root (absolute,
    a ``..`` component, a drive or a backslash), or ``""`` when it stays inside."""
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return f"file_name {name!r} is an absolute or Windows path; label files name images relative to their root"
    if ".." in name.split("/"):
        return f"file_name {name!r} leaves the image root ('..'); it is not read"
    return ""


def coco_samples(url: str, *, image_root: str | None = None) -> list[Sample]:
    """Samples of a COCO-style json: one per image, with its person boxes as labels (a malformed image entry,
    or one whose ``file_name`` leaves the image root, is a fault sample)."""
    fs, path = _fs_and_path(url)
    try:
        with fs.open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))  # NaN/Infinity literals parse to floats
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SourceError(f"COCO file {url} cannot be read as JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SourceError(f"COCO file {url} has no 'images' list")
    categories = data.get("categories", [])
    annotations = data.get("annotations", [])
    if not isinstance(categories, list) or not isinstance(annotations, list):
        raise SourceError(f"COCO file {url}: 'categories' and 'annotations' must be lists")
    person_ids = {c.get("id") for c in categories if isinstance(c, dict) and c.get("name") == COCO_PERSON} or {1}
    by_image: dict = {}
    for ann in annotations:
        if isinstance(ann, dict) and ann.get("category_id", 1) in person_ids and not ann.get("iscrowd", 0):
            by_image.setdefault(_hashable(ann.get("image_id")), []).append(ann)
    root = image_root if image_root is not None else url.rsplit("/", 1)[0] if "/" in url else "."
    stem = posixpath.splitext(_name_of(url))[0]
    samples = []
    for n, image in enumerate(data["images"]):
        file_name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(file_name, str) or not file_name:
            samples.append(fault_sample(f"{stem}/#image{n}", url, f"COCO file {url}: image entry {n} has no file_name"))
            continue
        key = printable(f"{stem}/{file_name}")
        escape = safe_relative_path(file_name)
        if escape or key != f"{stem}/{file_name}":
            samples.append(fault_sample(key, url, f"COCO file {url}: {escape or 'file_name is not valid UTF-8'}"))
            continue
        boxes, reason = [], ""
        for ann in sorted(by_image.get(_hashable(image.get("id")), []), key=lambda a: str(a.get("id", ""))):
            try:
                boxes.append(coco_box_xyxy(ann))
            except ValueError as exc:
                reason = f"bad label: {exc}"
                break
        file_url = _join(root, file_name)
        samples.append(Sample(sample_key=key, source=file_url, uri=file_url, labels="" if reason else json.dumps(boxes),
                              error_reason=reason))
    return samples


def _hashable(value):
    """``value`` as a dict key (COCO ids are ints or strings; anything else by its text)."""
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


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


def read_bytes(uri: str) -> bytes:
    """The bytes of ``uri``; a local path that is not a regular file (a FIFO would block) is refused unopened."""
    fs, path = _fs_and_path(uri)
    reason = _not_regular(fs, path)
    if reason:
        raise OSError(f"{uri}: {reason}")
    with fs.open(path, "rb") as fh:
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
            while pos < index:
                cap.grab()  # a frame that does not decode is passed over all the same
                pos += 1
            ok, bgr = cap.read()
            pos += 1
            if not ok or bgr is None:
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
            results[i] = decode_image(read_bytes(batch["uri"][i]), source=batch["source"][i], max_pixels=max_pixels)
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
