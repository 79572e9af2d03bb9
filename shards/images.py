"""Validating, normalising and re-encoding one image (done once, at build time).

Every image leaves here as 8-bit RGB, or 8-bit L for grayscale sources (FFA, OCT), optionally
resized onto a square black canvas with its aspect ratio kept. Problems raise ImageRejected with
a reason a person can act on; nothing here ever crashes a build.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 100_000_000  # a 10k x 10k photo; anything larger is treated as a decompression bomb
JPEG_QUALITY = 95
FORMATS = ("jpg", "png")
ORIENTATION = 0x0112  # EXIF tag


class ImageRejected(ValueError):
    """The image cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageOptions:
    image_size: int = 0  # 0 keeps the original size
    image_format: str = "jpg"  # jpg | png
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    original_mode: str
    original_format: str
    converted: str  # '' or what was done, e.g. 'CMYK->RGB'


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer / float grayscale down to 8 bits, scaled by the type's full range."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    else:
        peak = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        scaled = arr.astype(np.float64) * (255.0 / peak)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def normalise_mode(img: Image.Image) -> tuple[Image.Image, str]:
    """Return an RGB or L image and a note of the conversion made ('' when none)."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img, ""
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _to_8bit(img), f"{mode}->L"
    if mode == "1":
        return img.convert("L"), "1->L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (0, 0, 0))  # fundus backgrounds are black
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas, f"{mode}->RGB(alpha on black)"
    if mode == "P":
        rgb = img.convert("RGB")
        return rgb, "P->RGB"
    return img.convert("RGB"), f"{mode}->RGB"  # CMYK, YCbCr, LAB, HSV


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Scale the longest side to `size` and centre on a black square canvas (aspect ratio kept)."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0) if new != (w, h) else img
    canvas = Image.new(img.mode, (size, size), 0)
    canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def encode(img: Image.Image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif image_format == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {image_format!r}; expected one of {FORMATS}")
    return buf.getvalue()


def prepare_image(data: bytes, options: ImageOptions) -> PreparedImage:
    if not data:
        raise ImageRejected("zero-byte image file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from None
        except Image.DecompressionBombWarning as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from None
        except Image.UnidentifiedImageError:
            raise ImageRejected("not a readable image: unknown or unsupported format") from None
        except Exception as exc:  # decoders of untrusted files fail in many ways; none may stop a build
            raise ImageRejected(f"not a readable image: {type(exc).__name__}: {exc}") from None
        width, height = img.size
        if width * height > options.max_pixels:
            raise ImageRejected(f"decompression bomb: {width}x{height} = {width * height} pixels "
                                f"is over the limit of {options.max_pixels}")
        original_mode, original_format = img.mode, img.format or ""
        if options.image_size:
            # JPEG can decode straight at 1/2, 1/4 or 1/8 scale (never below the target): much less work
            scale = options.image_size / max(width, height)
            img.draft(img.mode, (max(1, round(width * scale)), max(1, round(height * scale))))
        try:
            img.load()
            if img.getexif().get(ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
        except Image.DecompressionBombWarning as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from None
        except Exception as exc:  # see above
            raise ImageRejected(f"truncated or corrupt image: {type(exc).__name__}: {exc}") from None
    img, converted = normalise_mode(img)
    if options.image_size:
        img = fit_square(img, options.image_size)
    return PreparedImage(encode(img, options.image_format), options.image_format, img.width, img.height,
                         width, height, original_mode, original_format, converted)
