"""Readers for SMPL-labelled datasets: 4D-Humans-style WebDataset tars and SPIN/HMR-style npz files.

Both return :class:`pipelines.io.samples.Sample` lists, one sample per image, whose ``labels`` is a JSON list
with one object per labelled person (layout in ``docs/body.md``)::

    {"box": [x0, y0, x1, y1],                        # image px, from center +- scale * 200 / 2
     "smpl": {"global_orient": [3], "body_pose": [69], "betas": [10],
              "has_body_pose": 0 | 1, "has_betas": 0 | 1, "transl": [3]},   # transl only when the source has it
     "keypoints_2d": {"layout": "openpose25+19" | "spin24" | ..., "points": [[x, y, confidence], ...]},
     "cam_intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}                 # only when the source has it

``smpl`` is left out for persons without any SMPL label, ``keypoints_2d`` when the source has none or
they are in a layout not in :data:`KEYPOINT_LAYOUT_BY_COUNT`. The persons stage uses the
boxes; the body stage finds each person row's entry by box equality (:func:`annotators.body.label_entry`).

- **WebDataset tars** (``.tar``): members grouped by WebDataset key (the member path up to the first
  ``.`` of its file name); each key needs an image (``jpg``/``jpeg``/``png``) and ``data.pyd``, a pickle of
  a list of per-person dicts (``body_pose`` 72 with the global orientation first, or 69 with a separate
  ``global_orient``; ``betas``; ``has_body_pose``; ``has_betas``; ``keypoints_2d`` ``[44, 3]`` or ``[25, 3]``
  px; ``center``; ``scale`` (box side / 200, scalar or per axis); optional ``transl``/``trans``/``cam_trans``
  and ``cam_int``). ``data.pyd`` is decoded only by :func:`model.assets.safe_pickle.safe_loads` with numpy
  arrays and plain containers admitted: a pickle naming any other global is refused before anything
  runs, and its sample is quarantined (``error_stage = "source"``). Images are read in place as
  ``tar://MEMBER::TAR`` URLs. Keys: ``"<tar stem>/<key>"``.
- **SPIN/HMR npz** (``.npz``): arrays ``imgname``, ``center``, ``scale``, ``pose`` ``[N, 72]``, ``shape``
  ``[N, 10]``, ``part`` ``[N, 24, 3]`` (SPIN's 24 joints, px), optional ``has_smpl`` and ``cam_int``; rows
  with the same ``imgname`` are persons of one image. Images are found at ``image_root/imgname`` (default
  root: the npz's folder), or else under ``image_root/images/``. Keys: ``"<npz stem>/<imgname>"``. Read
  with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from model.assets.safe_pickle import UnsafePickleError, safe_loads
from pipelines.io.samples import IMAGE_EXTENSIONS, SMPL_SOURCE_EXTENSIONS, Sample, SourceError

log = logging.getLogger(__name__)

LABEL_MEMBER = "data.pyd"
KEYPOINT_LAYOUT_BY_COUNT = {44: "openpose25+19", 25: "openpose25", 24: "spin24"}
"""Layout of a ``keypoints_2d`` / ``part`` array, from its number of rows."""


# --------------------------------------------------------------------------------------------------
# Label entries (pure)
# --------------------------------------------------------------------------------------------------


def _floats(value: Any, name: str, size: int) -> list[float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != size:
        raise ValueError(f"{name} has {arr.size} values, expected {size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has NaN or inf")
    return [float(v) for v in arr]


def _flag(value: Any, name: str) -> bool:
    """A 0/1 label flag given as one number (scalar or one-element array); ``ValueError`` naming it otherwise."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 1 or not np.isfinite(arr[0]):
        raise ValueError(f"{name} must be one finite number, got {arr.size} values")
    return bool(arr[0] > 0)


def box_from_center_scale(center: Any, scale: Any) -> list[float]:
    """``[x0, y0, x1, y1]`` of a SPIN/4D-Humans box: ``center [2]`` px, ``scale`` = side / 200 (scalar or [2])."""
    c = _floats(center, "center", 2)
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    if s.size not in (1, 2) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale {s.tolist()} must be one or two positive numbers (box side / 200)")
    half = np.broadcast_to(s, (2,)) * 100.0
    return [c[0] - half[0], c[1] - half[1], c[0] + half[0], c[1] + half[1]]


def person_entry(person: Mapping[str, Any]) -> dict[str, Any]:
    """A label entry (see the module docstring) from one 4D-Humans / SPIN person record.

    ``person`` keys: ``center``, ``scale``; optional ``body_pose`` (72 or 69 values), ``global_orient`` (3),
    ``betas``, ``has_body_pose``, ``has_betas``, ``keypoints_2d`` (``[K, 3]``), ``transl``/``trans``/
    ``cam_trans`` (3), ``cam_int`` (``[3, 3]``). Raises ``ValueError`` naming the bad key.
    """
    if "center" not in person or "scale" not in person:
        raise ValueError(f"person label has no center/scale (keys: {sorted(person)})")
    entry: dict[str, Any] = {"box": box_from_center_scale(person["center"], person["scale"])}
    has_pose = _flag(person.get("has_body_pose", 1 if "body_pose" in person else 0), "has_body_pose")
    has_betas = _flag(person.get("has_betas", 1 if "betas" in person else 0), "has_betas")
    if has_pose or has_betas:
        smpl: dict[str, Any] = {"has_body_pose": int(has_pose), "has_betas": int(has_betas),
                                "global_orient": [0.0] * 3, "body_pose": [0.0] * 69, "betas": [0.0] * 10}
        if has_pose:
            pose = np.asarray(person.get("body_pose"), dtype=np.float64).reshape(-1)
            if pose.size == 72:
                smpl["global_orient"] = _floats(pose[:3], "body_pose[:3]", 3)
                smpl["body_pose"] = _floats(pose[3:], "body_pose", 69)
            elif pose.size == 69 and "global_orient" in person:
                smpl["global_orient"] = _floats(person["global_orient"], "global_orient", 3)
                smpl["body_pose"] = _floats(pose, "body_pose", 69)
            else:
                raise ValueError(f"body_pose has {pose.size} values; expected 72, or 69 with a global_orient")
        if has_betas:
            betas = np.asarray(person.get("betas"), dtype=np.float64).reshape(-1)
            if betas.size < 10:
                raise ValueError(f"betas has {betas.size} values, expected at least 10")
            smpl["betas"] = _floats(betas[:10], "betas", 10)
        for key in ("transl", "trans", "cam_trans"):
            if key in person:
                smpl["transl"] = _floats(person[key], key, 3)
                break
        entry["smpl"] = smpl
    if "keypoints_2d" in person:
        kp = np.asarray(person["keypoints_2d"], dtype=np.float64)
        layout = KEYPOINT_LAYOUT_BY_COUNT.get(kp.shape[0]) if kp.ndim == 2 and kp.shape[1] == 3 else None
        if layout is None:
            log.debug("keypoints_2d of shape %s is in no known layout; left out", list(kp.shape))
        else:
            entry["keypoints_2d"] = {"layout": layout, "points": np.nan_to_num(kp).round(3).tolist()}
    if "cam_int" in person:
        entry["cam_intrinsics"] = np.asarray(_floats(person["cam_int"], "cam_int", 9)).reshape(3, 3).tolist()
    return entry


def _labels_json(entries: list[dict[str, Any]]) -> str:
    for e in entries:
        if not all(math.isfinite(v) for v in e["box"]):
            raise ValueError(f"box {e['box']} has NaN or inf")
    return json.dumps(entries, sort_keys=True)


# --------------------------------------------------------------------------------------------------
# WebDataset tars
# --------------------------------------------------------------------------------------------------


def _wds_split(member: str) -> tuple[str, str]:
    """WebDataset ``(key, suffix)`` of a tar member path: split at the first ``.`` of its file name."""
    folder, name = posixpath.split(member)
    stem, _, suffix = name.partition(".")
    return posixpath.join(folder, stem), suffix


def decode_label_pickle(data: bytes, source: str) -> list[dict[str, Any]]:
    """Per-person dicts of a ``data.pyd`` payload, through the restricted unpickler (numpy and builtins only).

    Raises :class:`model.assets.safe_pickle.UnsafePickleError` for a refused global (nothing in the pickle
    runs), ``pickle.UnpicklingError`` for unreadable data, ``ValueError`` for an unexpected structure.
    """
    content = safe_loads(data, source=source, allow_chumpy=False, allow_sparse=False)
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, (list, tuple)) or not all(isinstance(p, dict) for p in content):
        raise ValueError(f"{source}: expected a list of per-person dicts, got {type(content).__name__}")
    return list(content)


def wds_smpl_samples(url: str) -> list[Sample]:
    """Samples of a 4D-Humans-style WebDataset tar (see the module docstring)."""
    import fsspec

    stem = posixpath.splitext(posixpath.basename(url.rstrip("/")))[0]
    images: dict[str, str] = {}
    labels: dict[str, bytes] = {}
    try:
        with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, suffix = _wds_split(info.name)
                if suffix == LABEL_MEMBER:
                    extracted = tar.extractfile(info)
                    labels[key] = extracted.read() if extracted is not None else b""
                elif "." + suffix.lower() in IMAGE_EXTENSIONS and key not in images:
                    images[key] = info.name
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"input {url} cannot be read as a tar file: {exc}") from None
    samples = []
    for key in sorted(images):
        member = images[key]
        uri = f"tar://{member}::{url}"
        reason, text = "", ""
        if key not in labels:
            reason = f"bad label: {url} has no {key}.{LABEL_MEMBER}"
        else:
            source = f"{url}:{key}.{LABEL_MEMBER}"
            try:
                text = _labels_json([person_entry(p) for p in decode_label_pickle(labels[key], source)])
            except UnsafePickleError as exc:
                reason = f"refused label pickle: {exc}"
            except (pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
                reason = f"bad label: {type(exc).__name__}: {str(exc)[:300]}"
        samples.append(Sample(sample_key=f"{stem}/{key}", source=uri, uri=uri, labels="" if reason else text,
                              error_reason=reason))
    if not samples:
        raise SourceError(f"input {url} holds no WebDataset samples with an image (jpg/jpeg/png)")
    return samples


# --------------------------------------------------------------------------------------------------
# SPIN / HMR npz
# --------------------------------------------------------------------------------------------------

SPIN_KEYS = ("imgname", "center", "scale")
"""Arrays a SPIN-style npz must have."""
SPIN_ROW_KEYS = ("pose", "shape", "part", "has_smpl", "cam_int")
"""Optional per-row arrays (one row per person, like the required ones)."""


def spin_npz_samples(url: str, *, image_root: str | None = None) -> list[Sample]:
    """Samples of a SPIN/HMR-style npz (see the module docstring)."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            data = dict(np.load(io.BytesIO(fh.read()), allow_pickle=False))
    except ValueError as exc:
        raise SourceError(f"input {url}: an array needs pickle to load ({exc}); pearl reads npz files without "
                          "pickle: re-save it with plain arrays (strings as a unicode array)") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise SourceError(f"input {url} cannot be read as an npz file: {type(exc).__name__}: {exc}") from None
    missing = [k for k in SPIN_KEYS if k not in data]
    if missing:
        raise SourceError(f"input {url} is not a SPIN-style npz: missing {', '.join(missing)} "
                          f"(has {', '.join(sorted(data))})")
    rows_of = {k: (len(v) if v.ndim else -1) for k, v in data.items() if k in (*SPIN_KEYS, *SPIN_ROW_KEYS)}
    if len(set(rows_of.values())) != 1:
        raise SourceError(f"input {url}: the per-row arrays have different row counts "
                          f"({', '.join(f'{k} {n}' for k, n in sorted(rows_of.items()))}); every array needs one row "
                          "per person")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in data["imgname"].reshape(-1)]
    root = image_root if image_root is not None else (url.rsplit("/", 1)[0] if "/" in url else ".")
    prefix = _image_prefix(root, names[0]) if names else ""
    stem = posixpath.splitext(posixpath.basename(url))[0]
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    samples = []
    for name, idx in rows.items():
        entries, reason = [], ""
        for i in idx:
            person = {"center": data["center"][i], "scale": data["scale"][i]}
            has_smpl = float(np.asarray(data["has_smpl"][i]).reshape(-1)[0]) if "has_smpl" in data else 1.0
            if "pose" in data and has_smpl > 0:
                person.update(body_pose=data["pose"][i], has_body_pose=1)
            if "shape" in data and has_smpl > 0:
                person.update(betas=data["shape"][i], has_betas=1)
            if "part" in data:
                person["keypoints_2d"] = data["part"][i]
            if "cam_int" in data:
                person["cam_int"] = data["cam_int"][i]
            try:
                entries.append(person_entry(person))
            except (ValueError, TypeError, IndexError) as exc:
                reason = f"bad label: row {i}: {exc}"
                break
        file_url = f"{root.rstrip('/')}/{prefix}{name}"
        samples.append(Sample(sample_key=f"{stem}/{name}", source=file_url, uri=file_url,
                              labels="" if reason else _labels_json(entries), error_reason=reason))
    if not samples:
        raise SourceError(f"input {url} has no rows")
    return samples


def _image_prefix(root: str, first: str) -> str:
    """``""`` when ``root/first`` exists, ``"images/"`` when ``root/images/first`` does (checked once)."""
    import fsspec

    for prefix in ("", "images/"):
        fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{prefix}{first}")
        if fs.exists(path):
            return prefix
    raise SourceError(f"image {first} of the npz is neither in {root} nor in {root.rstrip('/')}/images; "
                      "pass image_root (the folder imgname is relative to)")


def smpl_source_samples(url: str, *, image_root: str | None = None) -> list[Sample]:
    """Samples of a SMPL-labelled input: a WebDataset ``.tar`` or a SPIN-style ``.npz``."""
    ext = posixpath.splitext(url.rstrip("/"))[1].lower()
    if ext == ".tar":
        return wds_smpl_samples(url)
    if ext == ".npz":
        return spin_npz_samples(url, image_root=image_root)
    raise SourceError(f"input {url} is not a SMPL-labelled source ({', '.join(SMPL_SOURCE_EXTENSIONS)})")
