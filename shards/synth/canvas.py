"""Drawing primitives shared by the renderers: PIL-drawn masks, soft ellipses, smooth noise, blending.

Shapes are drawn by PIL at 2x resolution and box-reduced, which gives cheap anti-aliasing; all
per-pixel work is whole-array numpy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 2


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), float32, shared and read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


class MaskCanvas:
    """Shapes drawn in pixel coordinates of a `size` image, read back as a float mask in [0, 1]."""

    def __init__(self, size: int):
        self.size = size
        self.image = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
        self.draw = ImageDraw.Draw(self.image)

    def ellipse(self, x: float, y: float, rx: float, ry: float, value: float = 1.0) -> None:
        s = SUPERSAMPLE
        self.draw.ellipse((s * (x - rx), s * (y - ry), s * (x + rx), s * (y + ry)), fill=_level(value))

    def polygon(self, points: np.ndarray, value: float = 1.0) -> None:
        self.draw.polygon([tuple(p) for p in (points * SUPERSAMPLE).tolist()], fill=_level(value))

    def line(self, points: np.ndarray, width: float, value: float = 1.0) -> None:
        """A polyline; widths under one supersampled pixel are drawn fainter rather than thicker."""
        drawn = width * SUPERSAMPLE
        level = value * min(1.0, drawn)
        self.draw.line([tuple(p) for p in (points * SUPERSAMPLE).tolist()], fill=_level(level),
                       width=max(1, round(drawn)), joint="curve")

    def mask(self, blur: float = 0.0) -> np.ndarray:
        img = self.image.reduce(SUPERSAMPLE)
        if blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(img, dtype=np.float32) * np.float32(1 / 255)


def _level(value: float) -> int:
    return int(round(255 * min(1.0, max(0.0, value))))


def rotated_ellipse(x: float, y: float, rx: float, ry: float, angle: float, n: int = 14) -> np.ndarray:
    """Polygon points of an ellipse whose rx axis points along `angle` (radians)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    px, py = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([x + c * px - s * py, y + s * px + c * py], axis=1)


def soft_ellipse(size: int, x: float, y: float, rx: float, ry: float, soft: float = 0.1) -> np.ndarray:
    """1 inside, 0 outside, with a linear ramp `soft` (relative to the radius) wide across the edge."""
    yy, xx = grid(size)
    d = np.sqrt(((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2)
    return np.clip((1 + soft - d) / (2 * soft), 0, 1)


def gaussian(size: int, x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = grid(size)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma))


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise varying over about size/cells pixels."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC))


def tint(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], opacity: float = 1.0) -> None:
    """Blend `image` (H, W, 3) toward `colour` where `mask` is set, in place."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)  # most shapes cover a small part
    weight = (mask[box] * opacity)[..., None]
    image[box] += (np.asarray(colour, dtype=np.float32) - image[box]) * weight
