"""Image validation and normalisation: every awkward mode converted, every broken file rejected."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shards.images import ImageOptions, ImageRejected, prepare_image
from tests.shards.helpers import fundus_like, jpeg_bytes, png16


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("make, fmt, mode_out, note", [
    (lambda: fundus_like(1).convert("CMYK"), "JPEG", "RGB", "CMYK->RGB"),
    (lambda: png16(2), "PNG", "L", "->L"),
    (lambda: fundus_like(3).convert("P"), "PNG", "RGB", "P->RGB"),
    (lambda: fundus_like(4).convert("RGBA"), "PNG", "RGB", "RGBA->RGB(alpha on black)"),
    (lambda: fundus_like(5).convert("LA"), "PNG", "RGB", "LA->RGB(alpha on black)"),
    (lambda: fundus_like(6).convert("1"), "PNG", "L", "1->L"),
    (lambda: fundus_like(7).convert("L"), "PNG", "L", ""),
])
def test_modes_are_converted(make, fmt, mode_out, note):
    out = prepare_image(encoded(make(), fmt), ImageOptions(image_format="png"))
    img = decode(out.data)
    assert img.mode == mode_out
    assert note in out.converted if note else out.converted == ""


def test_16bit_is_scaled_not_clipped():
    arr = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    out = prepare_image(encoded(Image.fromarray(arr), "PNG"), ImageOptions(image_format="png"))
    assert np.asarray(decode(out.data)).tolist() == [[0, 255], [128, 1]]


def test_alpha_is_composited_on_black():
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))
    out = prepare_image(encoded(rgba, "PNG"), ImageOptions(image_format="png"))
    assert np.asarray(decode(out.data)).max() == 0


@pytest.mark.parametrize("data, reason", [
    (b"", "zero-byte"),
    (b"this is not an image at all", "not a readable image"),
    (jpeg_bytes(1, (64, 64))[:1500], "truncated or corrupt"),
])
def test_broken_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        prepare_image(data, ImageOptions())


def test_decompression_bomb_is_rejected_before_decoding():
    big = encoded(Image.new("L", (400, 300)), "PNG")
    with pytest.raises(ImageRejected, match=r"decompression bomb: 400x300 = 120000 pixels"):
        prepare_image(big, ImageOptions(max_pixels=100_000))


def test_square_canvas_keeps_aspect_ratio():
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    out = prepare_image(encoded(img, "PNG"), ImageOptions(image_size=64, image_format="png"))
    arr = np.asarray(decode(out.data))
    assert arr.shape == (64, 64, 3) and (out.original_width, out.original_height) == (200, 100)
    rows_white = np.where(arr[:, 32, 0] > 128)[0]
    assert rows_white.min() == 16 and rows_white.max() == 47  # 200x100 -> 64x32, centred vertically


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    out = prepare_image(encoded(img, "JPEG", exif=exif), ImageOptions())
    assert (out.width, out.height) == (10, 30)


def test_reencoding_is_deterministic():
    data = jpeg_bytes(9)
    a = prepare_image(data, ImageOptions(image_size=32))
    b = prepare_image(data, ImageOptions(image_size=32))
    assert a.data == b.data and a.ext == "jpg"
