"""Image decoding (bad and odd files made here), deterministic JPEG encoding, person-crop geometry, row checks,
boxes and regions of interest."""

from __future__ import annotations

import io
import math
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from annotators import images
from annotators.images import ImageDecodeError, crop_person, decode_image, encode_jpeg

RED = (255, 0, 0)


def _encode(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB and whose pixel data is garbage."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not zlib") + chunk(b"IEND", b"")


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# decode_image: failures
# --------------------------------------------------------------------------------------------------


def test_zero_byte_file_names_source():
    with pytest.raises(ImageDecodeError, match=r"^shots/a\.jpg: empty file \(0 bytes\)"):
        decode_image(b"", source="shots/a.jpg")


def test_text_file_is_not_an_image():
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg: not a supported image .*b'name,x,y'"):
        decode_image(b"name,x,y\nbob,1,2\n", source="notes.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt):
    data = _encode(_noise(64, 64), fmt)
    for cut in (len(data) // 2, len(data) * 9 // 10):  # cut inside the pixel data
        with pytest.raises(ImageDecodeError, match=r"t\.img: truncated or corrupt"):
            decode_image(data[:cut], source="t.img")


def test_decompression_bomb_refused_from_header():
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: decompression bomb refused.*10000000000 pixels"):
        decode_image(_png_header_only(100_000, 100_000), source="bomb.png")


def test_pixel_limit_checked_before_pixels_are_decoded():
    # Under Pillow's own limit but over ours; its pixel data is garbage, so only a header check can say "bomb".
    with pytest.raises(ImageDecodeError, match=r"header says 3000x2000 = 6000000 pixels > max_pixels=5000000"):
        decode_image(_png_header_only(3000, 2000), source="big.png", max_pixels=5_000_000)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt PNG data"):
        decode_image(_png_header_only(3000, 2000), source="big.png", max_pixels=6_000_000)


def test_float_pixels_refused():
    data = _encode(np.zeros((4, 4), np.float32), "TIFF")
    with pytest.raises(ImageDecodeError, match="32-bit float pixels"):
        decode_image(data, source="f.tif")


# --------------------------------------------------------------------------------------------------
# decode_image: conversions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,kwargs", [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})])
def test_lossless_formats_round_trip(fmt, kwargs):
    rgb = _noise(20, 30)
    out = decode_image(_encode(rgb, fmt, **kwargs), source=f"x.{fmt.lower()}")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_close_to_source():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 40, 40)
    rgb[:, 24:] = (30, 90, 220)
    out = decode_image(_encode(rgb, "JPEG", quality=95), source="x.jpg")
    assert np.abs(out.astype(int) - rgb).mean() < 3


def test_16bit_grayscale_scaled_not_clipped():
    values = np.array([[0, 255, 257, 1000, 32768, 65535]], np.uint16)
    data = _encode(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data, source="g16.png")
    expected = np.array([0, 0, 1, 3, 128, 255], np.uint8)  # v >> 8; clipping would give 255 from 255 on
    np.testing.assert_array_equal(out[0], np.repeat(expected[:, None], 3, axis=1))


def test_16bit_colour_scaled_and_in_rgb_order():
    rgb16 = np.zeros((2, 3, 3), np.uint16)
    rgb16[..., 0] = 65535  # red full
    rgb16[..., 1] = 1000  # green would wrap to 232 if cast, clip to 255
    rgb16[..., 2] = 32768
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1].copy())  # OpenCV writes BGR
    assert ok
    out = decode_image(buf.tobytes(), source="c16.png")
    np.testing.assert_array_equal(out[0, 0], [255, 3, 128])


def test_grayscale_repeated_to_three_channels():
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    out = decode_image(_encode(gray, "PNG"), source="g.png")
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_alpha_composited_over_black():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = (200, 100, 50)
    rgba[0, :, 3] = (0, 255, 128)
    out = decode_image(_encode(rgba, "PNG"), source="a.png")
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [200, 100, 50], [100, 50, 25]])
    la = Image.new("LA", (2, 2), (200, 128))
    buf = io.BytesIO()
    la.save(buf, "PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue(), source="la.png")[0, 0], [100, 100, 100])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_and_without_transparency(fmt):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    plain, transparent = io.BytesIO(), io.BytesIO()
    image.save(plain, fmt)
    image.save(transparent, fmt, transparency=0)
    out = decode_image(plain.getvalue(), source="p")
    np.testing.assert_array_equal(out[0, :2], [[10, 20, 30], [200, 100, 50]])
    out = decode_image(transparent.getvalue(), source="p")
    np.testing.assert_array_equal(out[0, :2], [[0, 0, 0], [200, 100, 50]])


def test_cmyk_jpeg_with_adobe_inverted_marker_matches_references():
    rng = np.random.default_rng(3)
    cmyk = np.repeat(np.repeat(rng.integers(0, 256, (6, 6, 4), dtype=np.uint8), 8, axis=0), 8, axis=1)
    data = _encode(cmyk, "JPEG", "CMYK", quality=100)
    assert b"Adobe" in data[:200]  # Pillow writes the Adobe APP14 marker: CMYK stored inverted
    out = decode_image(data, source="cmyk.jpg").astype(float)
    c = cmyk.astype(float)
    reference = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255  # RGB = (1 - C)(1 - K)
    assert np.abs(out - reference).mean() < 2.0
    libjpeg = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(float)
    assert np.abs(out - libjpeg).max() <= 3  # an independent decoder of inverted CMYK agrees


def _display(stored: np.ndarray, orientation: int) -> np.ndarray:
    """How a viewer shows ``stored`` for an EXIF orientation (TIFF 6.0 / EXIF 2.3 definitions)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored horizontally
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored vertically
        5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
        6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise to display
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
        8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise to display
    }[orientation](stored)


def _red_centroid(rgb: np.ndarray) -> np.ndarray:
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    ys, xs = np.nonzero(red)
    return np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(orientation):
    stored = np.full((24, 40, 3), 255, np.uint8)
    stored[2:8, 4:12] = RED  # off every symmetry axis
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(_encode(stored, "JPEG", quality=95, exif=exif), source=f"o{orientation}.jpg")
    expected = _display(stored, orientation)
    assert out.shape == expected.shape
    np.testing.assert_allclose(_red_centroid(out), _red_centroid(expected), atol=0.5)


@pytest.mark.parametrize("fmt,kwargs", [("PNG", {}), ("WEBP", {"lossless": True})])
def test_exif_orientation_in_png_and_webp(fmt, kwargs):
    stored = np.full((24, 40, 3), 255, np.uint8)
    stored[2:8, 4:12] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_encode(stored, fmt, exif=exif, **kwargs), source="o6")
    np.testing.assert_array_equal(out, _display(stored, 6))


# --------------------------------------------------------------------------------------------------
# encode_jpeg
# --------------------------------------------------------------------------------------------------


def test_encode_jpeg_is_deterministic_and_decodes_back():
    rgb = _noise(40, 56, seed=1)
    rgb[:20] = (10, 200, 30)
    first, second = encode_jpeg(rgb, quality=90), encode_jpeg(rgb.copy(), quality=90)
    assert first == second and first[:2] == b"\xff\xd8"
    assert encode_jpeg(rgb, quality=50) != first
    back = decode_image(first, source="x.jpg")
    assert back.shape == rgb.shape
    assert np.abs(back[:18].astype(int) - (10, 200, 30)).mean() < 4


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8)])
def test_encode_jpeg_rejects_bad_arrays(bad):
    with pytest.raises(ValueError, match="rgb"):
        encode_jpeg(bad)


def test_encode_jpeg_rejects_bad_quality():
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), quality=0)


# --------------------------------------------------------------------------------------------------
# crop_person
# --------------------------------------------------------------------------------------------------


def _apply(affine: np.ndarray, xy) -> np.ndarray:
    return affine[:, :2] @ np.asarray(xy, float) + affine[:, 2]


def test_native_crop_is_a_copy_with_exact_affine():
    image = _noise(100, 120, seed=2)
    box = np.array([30.4, 20.2, 70.9, 90.6], np.float32)
    crop, affine = crop_person(image, box, scale=1.25)
    side = round(1.25 * (90.6 - 20.2))
    assert crop.shape == (side, side, 3) and affine.dtype == np.float32 and affine.shape == (2, 3)
    x0, y0 = _apply(affine, (0, 0))
    assert x0 == round(x0) and y0 == round(y0)
    np.testing.assert_array_equal(_apply(affine, (side, side)), (x0 + side, y0 + side))
    assert abs(x0 + side / 2 - (30.4 + 70.9) / 2) <= 0.5 and abs(y0 + side / 2 - (20.2 + 90.6) / 2) <= 0.5
    x0, y0 = int(x0), int(y0)
    for v, u in [(0, 0), (5, 17), (side - 1, side - 1)]:
        y, x = y0 + v, x0 + u
        expected = image[y, x] if 0 <= y < 100 and 0 <= x < 120 else 0
        np.testing.assert_array_equal(crop[v, u], expected)


def test_crop_past_the_border_is_zero_padded():
    image = np.full((50, 50, 3), 7, np.uint8)
    crop, affine = crop_person(image, [-10, -10, 20, 20], scale=1.0)
    assert crop.shape == (30, 30, 3)
    np.testing.assert_array_equal(_apply(affine, (0, 0)), (-10, -10))
    assert (crop[:10] == 0).all() and (crop[:, :10] == 0).all() and (crop[10:, 10:] == 7).all()


def test_resized_crop_affine_matches_its_sampling():
    # Pixel (row, col) holds col: the value at continuous x is x - 0.5 between pixel centres.
    image = np.repeat(np.repeat(np.arange(200, dtype=np.uint8)[None, :, None], 200, axis=0), 3, axis=2)
    crop, affine = crop_person(image, [80, 60, 120, 140], scale=1.0, out_size=160)
    assert crop.shape == (160, 160, 3)
    side = 80
    np.testing.assert_allclose(_apply(affine, (0, 0)), (60, 60), atol=1e-5)
    np.testing.assert_allclose(_apply(affine, (160, 160)), (60 + side, 60 + side), atol=1e-5)
    for u in (3, 40, 101, 150):
        x_image = _apply(affine, (u + 0.5, 0))[0]
        assert abs(float(crop[80, u, 0]) - (x_image - 0.5)) <= 1.0


def test_shrunk_crop_affine_corners():
    crop, affine = crop_person(_noise(300, 300), [10, 10, 210, 290], scale=1.5, out_size=64)
    side = round(1.5 * 280)
    assert crop.shape == (64, 64, 3)
    x0, y0 = _apply(affine, (0, 0))
    np.testing.assert_allclose(_apply(affine, (64, 64)), (x0 + side, y0 + side), atol=1e-3)
    np.testing.assert_allclose(_apply(affine, (64, 0)), (x0 + side, y0), atol=1e-3)


def test_isolate_blanks_outside_the_box():
    image = np.full((100, 100, 3), 255, np.uint8)
    box = np.array([40, 30, 60, 80], np.float32)
    crop, affine = crop_person(image, box, scale=1.5, isolate=True)
    plain, _ = crop_person(image, box, scale=1.5)
    assert (plain == 255).all()
    x0, y0 = _apply(affine, (0, 0))
    rows, cols = np.nonzero(crop[..., 0])
    assert len(rows) == 20 * 50  # exactly the pixels whose centres lie in the box
    assert x0 + cols.min() == 40 and x0 + cols.max() == 59 and y0 + rows.min() == 30 and y0 + rows.max() == 79


@pytest.mark.parametrize("box", [[10, 10, 5, 20], [0, 0, np.nan, 5], [1, 2, 3]])
def test_crop_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box_xyxy"):
        crop_person(np.zeros((10, 10, 3), np.uint8), box)


def test_crop_rejects_bad_arguments():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="scale"):
        crop_person(image, [1, 1, 5, 5], scale=0)
    with pytest.raises(ValueError, match="out_size"):
        crop_person(image, [1, 1, 5, 5], out_size=0)
    with pytest.raises(ValueError, match="image"):
        crop_person(np.zeros((10, 10), np.uint8), [1, 1, 5, 5])


# --------------------------------------------------------------------------------------------------
# Row checks, boxes and regions of interest
# --------------------------------------------------------------------------------------------------


def test_row_checks_name_the_column_and_the_problem():
    ok = np.zeros((4, 5, 3), np.uint8)
    assert images.check_rgb_image(ok) is ok
    with pytest.raises(ValueError, match="column 'image' must hold RGB uint8"):
        images.check_rgb_image(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="column 'crop' must hold RGB uint8"):
        images.check_rgb_image(np.zeros((4, 5, 3), np.float32), column="crop")
    with pytest.raises(ValueError, match="1x4 image; it is too small"):
        images.check_rgb_image(np.zeros((4, 1, 3), np.uint8), min_side=2)
    np.testing.assert_array_equal(images.check_person_box([1, 2, 3, 4]), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="non-empty box of 4 finite"):
        images.check_person_box([1, 2, np.nan, 4])
    with pytest.raises(ValueError, match="is empty"):
        images.check_person_box([3, 2, 1, 4])
    with pytest.raises(ValueError, match="lies outside the 5x4 image"):
        images.check_person_box([6, 0, 9, 3], image_shape=ok.shape)


def test_nms_counts_pixels_inclusively_when_asked():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float64)
    # continuous: overlap 4x9 over 9x9 + 9x9 - 36 -> 36/126; inclusive (+1 px): 5x10 over 100+100-50 -> 1/3
    assert images.box_iou(boxes[:1], boxes[1:])[0, 0] == pytest.approx(36 / 126)
    assert images.box_iou(boxes[:1], boxes[1:], plus_one=True)[0, 0] == pytest.approx(1 / 3)
    scores = np.array([0.9, 0.8])
    assert images.nms(boxes, scores, 0.3).tolist() == [0, 1]
    assert images.nms(boxes, scores, 0.3, plus_one=True).tolist() == [0]
    assert images.nms(boxes, np.array([0.5, 0.5]), 0.1).tolist() == [0]  # ties: the lower index wins


def test_hand_region_from_the_pose_points_up_the_hand():
    pose = np.zeros((33, 2))
    pose[13] = [0.0, 100.0]  # left elbow below the wrist: forearm 100 px
    pose[15] = [0.0, 0.0]  # left wrist
    pose[[17, 19]] = [[-2.0, -10.0], [2.0, -10.0]]  # knuckles 10 px above the wrist
    roi = images.hand_roi_from_pose(pose, 0)
    assert roi.size == pytest.approx(max(images.HAND_ROI_SCALE * 10.0, images.HAND_ROI_FOREARM_SCALE * 100.0))
    assert roi.cx == pytest.approx(0.0) and roi.cy == pytest.approx(-0.25 * roi.size)  # a quarter side up
    assert np.allclose(roi.rotation() @ [0.0, -1.0], [0.0, -1.0])  # crop up = image up


def test_roi_warp_and_crop_to_image_agree():
    image = np.zeros((120, 160, 3), np.uint8)
    image[40:44, 100:104] = 255  # a bright 4x4 dot centred at (102, 42): continuous pixel coordinates
    roi = images.Roi(cx=90.0, cy=50.0, size=60.0, angle=math.radians(30))
    crop, c2i = roi.warp(image, 120)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    centre_in_crop = np.array([xs.mean(), ys.mean()]) + 0.5  # pixel centres
    assert np.allclose(images.affine_points(c2i, centre_in_crop), [102.0, 42.0], atol=0.5)
    assert np.allclose(images.affine_points(c2i, np.array([60.0, 60.0])), [90.0, 50.0])  # crop centre -> roi centre
