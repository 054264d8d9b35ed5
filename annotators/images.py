"""Images, boxes, regions of interest and crops: what every backend does to pixels before its network.

- :func:`decode_image`: bytes -> ``[H, W, 3]`` uint8 RGB with EXIF orientation applied, or an
  :class:`ImageDecodeError` naming the source and the reason (empty, not an image, truncated, over the
  pixel limit, unsupported pixel format). The policy is written in ``docs/persons.md``.
- :func:`check_rgb_image`, :func:`check_person_box`: the row checks of the ``image`` and ``bbox_xyxy``
  columns, with errors naming the column.
- :func:`crop_person`: a square crop around a person box, with the affine that maps crop pixels back
  to image pixels, optionally with everything outside the box blanked (``isolate``).
- Boxes: :func:`box_iou`, :func:`nms`.
- Regions of interest: :class:`Roi` (a rotated square and its warp), :func:`roi_around`, and the hand and
  face regions placed from BlazePose's landmarks (:func:`hand_roi_from_pose`, :func:`face_roi_from_pose`).
- :func:`crop_patch`: an axis-aligned square patch warped to a network's input size.
- :class:`PersonSegmenter`: MediaPipe's person segmentation on a person's isolated crop.
- :func:`encode_jpeg`: RGB -> JPEG bytes, the same bytes for the same input.

Coordinates are continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` in
``x, y``, so the image spans ``[0, W] x [0, H]``.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas import keypoints as kpl

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest ``width * height`` :func:`decode_image` accepts by default (64 MP, 192 MB as RGB)."""

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""Pillow formats :func:`decode_image` opens (JPEG includes MPO, the multi-picture JPEG of phones: its
first picture). Others, e.g. EPS (which runs Ghostscript), are refused as not an image."""

_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """Bytes that cannot become an RGB image; the message names the source and the reason."""


def decode_image(data: bytes, *, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to RGB.

    Args:
        data: the file's bytes (JPEG, PNG, WebP, BMP, GIF, TIFF; first frame of animations).
        source: where the bytes came from (path or URL), used in error messages.
        max_pixels: largest ``width * height`` accepted, checked on the header before any pixel is
            decoded. Pillow's own guard also refuses headers over ``2 * Image.MAX_IMAGE_PIXELS``
            (about 179 MP), whatever this says.

    Returns:
        ``[H, W, 3]`` uint8 RGB, C-contiguous, EXIF orientation applied (the array is upright).

    Raises:
        ImageDecodeError: empty data, not a supported image, over ``max_pixels``, truncated or corrupt
            pixel data, or a pixel format with no defined 8-bit mapping (32-bit float, 32-bit integer
            over 16-bit range).
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if len(data) == 0:
        raise ImageDecodeError(f"{source}: empty file (0 bytes); the file was not written completely")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{source}: decompression bomb refused from its header ({exc}); "
                               f"max_pixels={max_pixels}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{source}: not a supported image ({len(data)} bytes starting {data[:8]!r}); "
                               f"supported formats: {', '.join(ALLOWED_FORMATS)}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types for bad headers
        raise ImageDecodeError(f"{source}: truncated or corrupt image header ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"{source}: decompression bomb refused: header says {width}x{height} = "
                               f"{width * height} pixels > max_pixels={max_pixels}; raise max_pixels to accept it")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{source}: image has no pixels ({width}x{height})")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types for bad data
        raise ImageDecodeError(f"{source}: truncated or corrupt {image.format} data "
                               f"({type(exc).__name__}: {exc})") from None
    return _to_rgb(image, source)


def _to_rgb(image: Image.Image, source: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a loaded Pillow image: 16-bit -> high byte, alpha composited over black."""
    mode = image.mode
    if mode in _MODES_16BIT or mode == "I":
        values = np.asarray(image)
        if mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise ImageDecodeError(f"{source}: 32-bit integer pixels outside 0..65535 have no defined 8-bit "
                                   "mapping; convert the image to 8 or 16 bits")
        gray = (values.astype(np.uint16) >> 8).astype(np.uint8)  # 16-bit -> 8-bit: keep the high byte
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        raise ImageDecodeError(f"{source}: 32-bit float pixels have no defined 8-bit mapping; "
                               "convert the image to 8 or 16 bits")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # composite over black
        return np.ascontiguousarray(rgb.astype(np.uint8))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _check_rgb(rgb: np.ndarray, name: str) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{name} must be a uint8 array [H, W, 3], got "
                         f"{getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{name} has no pixels: shape {rgb.shape}")


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB image, deterministic (same pixels and quality -> same bytes).

    Args:
        rgb: ``[H, W, 3]`` uint8 RGB.
        quality: libjpeg quality, 1..100; 4:2:0 chroma subsampling, baseline, no metadata.
    """
    _check_rgb(rgb, "rgb")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(
        out, format="JPEG", quality=int(quality), subsampling=2, optimize=False, progressive=False)
    return out.getvalue()


def crop_region(box_xyxy: np.ndarray, scale: float) -> np.ndarray:
    """The image region ``[4]`` float32 ``x0, y0, x1, y1`` that :func:`crop_person` shows for ``box_xyxy``
    and ``scale``: a square of ``round(scale * longer box side)`` px centred on the box, its corner rounded
    to whole pixels (what records store as ``crop_xyxy``)."""
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    side = max(1, int(round(scale * max(box[2] - box[0], box[3] - box[1]))))
    x0 = int(round((box[0] + box[2] - side) / 2))
    y0 = int(round((box[1] + box[3] - side) / 2))
    return np.array([x0, y0, x0 + side, y0 + side], dtype=np.float32)


def crop_person(
    image: np.ndarray,
    box_xyxy: np.ndarray,
    *,
    scale: float = 1.25,
    out_size: int | None = None,
    isolate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around a person box.

    The square has side ``S = round(scale * max(box width, box height))`` px, is centred on the box
    (its corner rounded to whole pixels, so that a crop at native size is a pure copy), and is padded
    with zeros where it leaves the image.

    Args:
        image: ``[H, W, C]`` uint8 image.
        box_xyxy: ``[4]`` person box ``x1, y1, x2, y2`` in image px.
        scale: crop side as a multiple of the box's longer side (> 0).
        out_size: side of the returned crop in px; ``None`` keeps ``S`` (no resampling). Resampling uses
            area averaging when shrinking, bilinear when enlarging.
        isolate: blank (zero) every pixel whose centre lies outside the box, so that detectors run on the
            crop cannot lock onto a neighbour.

    Returns:
        ``(crop, crop_to_image)``: ``crop`` ``[s, s, C]`` uint8 with ``s = out_size or S``, and
        ``crop_to_image`` float32 ``[2, 3]``, the affine with ``image_xy = A @ [x, y, 1]`` for crop
        coordinates ``x, y`` (continuous pixel coordinates in both).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty uint8 array [H, W, C], got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box_xyxy must be 4 finite numbers x1 < x2, y1 < y2, got {np.asarray(box_xyxy).tolist()}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if out_size is not None and int(out_size) < 1:
        raise ValueError(f"out_size must be >= 1 or None, got {out_size}")
    h, w = image.shape[:2]
    x0, y0, x1, _ = (int(v) for v in crop_region(box, scale))
    side = x1 - x0
    crop = np.zeros((side, side, image.shape[2]), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if isolate:
        centres_x = x0 + np.arange(side) + 0.5
        centres_y = y0 + np.arange(side) + 0.5
        inside_x = (centres_x >= box[0]) & (centres_x <= box[2])
        inside_y = (centres_y >= box[1]) & (centres_y <= box[3])
        crop[~(inside_y[:, None] & inside_x[None, :])] = 0
    px = 1.0
    if out_size is not None and int(out_size) != side:
        out_size = int(out_size)
        interpolation = cv2.INTER_AREA if out_size < side else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (out_size, out_size), interpolation=interpolation).reshape(out_size, out_size, -1)
        px = side / out_size
    crop_to_image = np.array([[px, 0.0, x0], [0.0, px, y0]], dtype=np.float32)
    return crop, crop_to_image


# --------------------------------------------------------------------------------------------------
# Row checks
# --------------------------------------------------------------------------------------------------


def check_rgb_image(value: Any, column: str = "image", min_side: int = 1) -> np.ndarray:
    """``value`` as an RGB uint8 image ``[H, W, 3]`` with sides of at least ``min_side`` px, or a
    ``ValueError`` naming ``column``."""
    if not isinstance(value, np.ndarray) or value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8:
        desc = f"{type(value).__name__} {getattr(value, 'shape', '')} {getattr(value, 'dtype', '')}".strip()
        raise ValueError(f"column {column!r} must hold RGB uint8 arrays [H, W, 3], got {desc}; decode images first")
    if value.shape[0] < min_side or value.shape[1] < min_side:
        raise ValueError(f"column {column!r} holds a {value.shape[1]}x{value.shape[0]} image; it is too small")
    return value


def check_person_box(value: Any, column: str = "bbox_xyxy", image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``value`` as a box ``[4]`` float64 (x0, y0, x1, y1) of finite numbers with x1 > x0 and y1 > y0 that, when
    ``image_shape`` is given, overlaps the image; else a ``ValueError`` naming ``column``."""
    box = np.asarray(value, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"column {column!r} must hold a non-empty box of 4 finite numbers (x0, y0, x1, y1), "
                         f"got {np.asarray(value)!r}")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"column {column!r} must hold a non-empty box: {box.tolist()} is empty "
                         "(need x1 > x0 and y1 > y0)")
    if image_shape is not None:
        h, w = image_shape[:2]
        if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
            raise ValueError(f"column {column!r} box {box.tolist()} lies outside the {w}x{h} image")
    return box


# --------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray, *, plus_one: bool = False) -> np.ndarray:
    """IoU matrix ``[N, M]`` of boxes ``a  # [N, 4]`` and ``b  # [M, 4]`` (xyxy). ``plus_one``: count box sides
    ``+ 1`` px, as integer-pixel detectors (YOLOX's demo) do."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if plus_one else 0.0
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1 + one, 0, None) * np.clip(y2 - y1 + one, 0, None)
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, plus_one: bool = False) -> np.ndarray:
    """Indices of the boxes ``[N, 4]`` kept by greedy non-maximum suppression, best score first (ties: lower
    index first): a box is dropped when its IoU with a kept box exceeds ``iou_threshold`` (``plus_one``: see
    :func:`box_iou`)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    iou = box_iou(boxes, boxes, plus_one=plus_one)
    keep: list[int] = []
    for i in order:
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return np.array(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Regions of interest: rotated squares in image px
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roi:
    """A rotated square region of an image.

    The crop's x axis points along ``(cos angle, sin angle)`` in the image (px, y down) and its y axis
    along ``(-sin angle, cos angle)``; ``angle = 0`` is an axis-aligned square.
    """

    cx: float
    """Centre x in image px."""
    cy: float
    """Centre y in image px."""
    size: float
    """Side length in image px."""
    angle: float = 0.0
    """Rotation in radians (clockwise on screen, since image y points down)."""

    @classmethod
    def from_box(cls, box_xyxy: np.ndarray, scale: float = 1.0) -> Roi:
        """Axis-aligned square around a box (``box_xyxy  # [4]``), side ``scale * max(w, h)``."""
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        return cls((x0 + x1) / 2, (y0 + y1) / 2, scale * max(x1 - x0, y1 - y0), 0.0)

    def rotation(self) -> np.ndarray:
        """``[2, 2]`` rotation taking crop axes to image axes."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]], dtype=np.float64)

    def crop_to_image(self, out_size: int) -> np.ndarray:
        """``[2, 3]`` affine taking crop px (of an ``out_size`` crop) to image px (continuous coordinates)."""
        lin = self.rotation() * (self.size / out_size)
        offset = np.array([self.cx, self.cy]) - lin @ np.full(2, out_size / 2)
        return np.concatenate([lin, offset[:, None]], axis=1)

    def warp(self, image: np.ndarray, out_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Crop ``image  # [H, W, 3]`` to ``out_size`` px; returns ``(crop, crop_to_image  # [2, 3])``.

        Outside the image is filled by replicating the border (as MediaPipe's own cropping does).
        """
        c2i = self.crop_to_image(out_size)
        # OpenCV samples at pixel centres with integer coordinates: shift half a pixel on both sides.
        index_map = c2i.copy()
        index_map[:, 2] += c2i[:, :2] @ np.full(2, 0.5) - 0.5
        crop = cv2.warpAffine(
            image,
            index_map,
            (out_size, out_size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return crop, c2i.astype(np.float32)


def affine_points(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map 2D ``points  # [..., 2]`` through a ``[2, 3]`` affine (``A @ [x, y, 1]``)."""
    return points @ affine[:, :2].T + affine[:, 2]


def roi_around(points: np.ndarray, angle: float, scale: float, shift_y: float = 0.0) -> Roi:
    """Square around ``points  # [N, 2]`` (image px) in the frame rotated by ``angle``.

    The points' bounding box is taken in the rotated frame, its centre moved by ``shift_y`` times its
    height along the frame's y axis (negative: towards the frame's top), and its longer side scaled
    by ``scale`` (MediaPipe's landmarks-to-ROI rule).
    """
    rot = Roi(0.0, 0.0, 1.0, angle).rotation()
    local = points @ rot  # image -> frame: R^T p
    lo, hi = local.min(axis=0), local.max(axis=0)
    centre = (lo + hi) / 2 + np.array([0.0, shift_y * (hi[1] - lo[1])])
    cx, cy = rot @ centre
    return Roi(float(cx), float(cy), float(scale * max(hi[0] - lo[0], hi[1] - lo[1], 1e-3)), angle)


def angle_x_along(v: np.ndarray) -> float:
    """Roi angle that makes the crop's x axis point along ``v  # [2]`` (e.g. right eye -> left eye)."""
    return float(math.atan2(v[1], v[0]))


def angle_up_along(v: np.ndarray) -> float:
    """Roi angle that makes the crop's up direction (-y) point along ``v  # [2]`` (e.g. wrist -> fingers)."""
    return float(math.atan2(v[0], -v[1]))


# Face mesh geometry (measured on a frontal face): the mesh's bounding box is 2.35 eye-to-mouth
# distances tall and its centre lies 0.475 of the way from the eyes to the mouth.
_FACE_HEIGHT_PER_EYE_MOUTH = 2.35
_FACE_CENTRE_FROM_EYES = 0.475

HAND_ROI_SCALE = 4.0
"""Default side of a hand region placed from the pose, in BlazePose wrist-to-knuckle lengths."""
HAND_ROI_FOREARM_SCALE = 0.8
"""Default lower bound of that side, in forearm (elbow-to-wrist) lengths."""


def face_roi_from_pose(pose_xy: np.ndarray, scale: float) -> Roi:
    """Face region from BlazePose's eyes and mouth corners (``pose_xy  # [33, 2]`` image px).

    Up is mouth -> eyes (works for profiles too, where the eyes are nearly on top of each other).
    ``scale`` multiplies the size of the face mesh's expected bounding box.
    """
    eyes = pose_xy[list(kpl.POSE_EYES)].mean(axis=0)
    mouth = pose_xy[list(kpl.POSE_MOUTH)].mean(axis=0)
    up = eyes - mouth
    d = float(np.linalg.norm(up))
    centre = eyes - _FACE_CENTRE_FROM_EYES * up
    return Roi(float(centre[0]), float(centre[1]), scale * _FACE_HEIGHT_PER_EYE_MOUTH * max(d, 1.0), angle_up_along(up))


def hand_roi_from_pose(pose_xy: np.ndarray, side: int, scale: float = HAND_ROI_SCALE,
                       forearm_scale: float = HAND_ROI_FOREARM_SCALE) -> Roi:
    """Hand region from BlazePose's wrist, hand knuckles and elbow (``pose_xy  # [33, 2]``).

    ``side``: 0 left, 1 right. The hand points up from the wrist through the knuckles; the region's
    side is ``scale`` wrist-to-knuckle lengths but at least ``forearm_scale`` forearm lengths
    (BlazePose's hand points collapse on small hands), and its centre lies one wrist-to-knuckle length
    (at least a quarter of the side) past the wrist.
    """
    wrist = pose_xy[kpl.POSE_WRISTS[side]]
    elbow = pose_xy[kpl.POSE_ELBOWS[side]]
    knuckles = pose_xy[list(kpl.POSE_KNUCKLES[side])].mean(axis=0)
    hand = knuckles - wrist
    forearm = float(np.linalg.norm(wrist - elbow))
    length = float(np.linalg.norm(hand))
    direction = hand / length if length > 1e-6 else (wrist - elbow) / max(forearm, 1e-6)
    size = max(scale * length, forearm_scale * forearm, 1.0)
    centre = wrist + direction * max(length, 0.25 * size)
    return Roi(float(centre[0]), float(centre[1]), size, angle_up_along(direction))


# --------------------------------------------------------------------------------------------------
# Square patches for network inputs
# --------------------------------------------------------------------------------------------------


def crop_patch(image: np.ndarray, center: np.ndarray, side: float, out_size: int) -> np.ndarray:
    """Square ``side`` px patch around ``center  # [2]`` (continuous px) warped to ``out_size`` (bilinear,
    black outside): ``image  # [H, W, 3]`` -> ``[out_size, out_size, 3]``."""
    s = out_size / side
    c = np.asarray(center, np.float64) - 0.5  # OpenCV pixel-index coordinates
    warp = np.array([[s, 0.0, out_size / 2 - s * c[0]], [0.0, s, out_size / 2 - s * c[1]]])
    return cv2.warpAffine(image, warp, (out_size, out_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# --------------------------------------------------------------------------------------------------
# Person segmentation
# --------------------------------------------------------------------------------------------------


SEGMENTATION_SIZE = 256
"""Side of the person crop fed to MediaPipe's selfie segmentation (its general model's input size)."""


class PersonSegmenter:
    """MediaPipe's selfie segmentation (general model, shipped in the wheel) on a person's isolated crop.
    The graph is built on first use and left out when pickled."""

    def __init__(self) -> None:
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_model": None}

    def mask(self, image: np.ndarray, box_xyxy: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Person probability ``[size, size]`` over the square crop around ``box_xyxy`` (everything outside
        the box blanked, so that neighbours are not segmented) and the crop's image region ``[4]`` (x0, y0,
        x1, y1, px)."""
        if self._model is None:
            import mediapipe as mp

            self._model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        crop, c2i = crop_person(image, box_xyxy, scale=scale, out_size=SEGMENTATION_SIZE, isolate=True)
        prob = self._model.process(np.ascontiguousarray(crop)).segmentation_mask
        prob = cv2.resize(np.asarray(prob, np.float32), (size, size), interpolation=cv2.INTER_AREA)
        corners = np.asarray(c2i, np.float64) @ np.array([[0, SEGMENTATION_SIZE], [0, SEGMENTATION_SIZE], [1, 1]])
        return prob, np.array([corners[0, 0], corners[1, 0], corners[0, 1], corners[1, 1]], np.float32)
