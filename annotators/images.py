"""Image bytes in, RGB arrays out, person crops, and deterministic JPEG bytes.

- :func:`decode_image`: bytes -> ``[H, W, 3]`` uint8 RGB with EXIF orientation applied, or an
  :class:`ImageDecodeError` naming the source and the reason (empty, not an image, truncated, over the
  pixel limit, unsupported pixel format). The policy is written in ``docs/persons.md``.
- :func:`crop_person`: a square crop around a person box, with the affine that maps crop pixels back
  to image pixels, optionally with everything outside the box blanked (``isolate``).
- :func:`encode_jpeg`: RGB -> JPEG bytes, the same bytes for the same input.

Coordinates are continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` in
``x, y``, so the image spans ``[0, W] x [0, H]``.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    side = max(1, int(round(scale * max(box[2] - box[0], box[3] - box[1]))))
    x0 = int(round((box[0] + box[2] - side) / 2))
    y0 = int(round((box[1] + box[3] - side) / 2))
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
