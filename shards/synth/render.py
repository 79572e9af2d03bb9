"""One entry point for all modalities, and saving in whatever format a path's extension names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shards.synth.angiogram import draw_ffa
from shards.synth.fundus import draw_cfp
from shards.synth.oct import draw_oct
from shards.synth.recipe import Recipe

JPEG_QUALITY = 92


def render(recipe: Recipe, modality: str, rng: np.random.Generator, size: int, eye: str, *,
           noise_scale: float = 1.0) -> Image.Image:
    if modality == "FFA":
        return draw_ffa(recipe, rng, size, eye)
    if modality == "OCT":
        return draw_oct(recipe, rng, size, eye)
    return draw_cfp(recipe, rng, size, eye, noise_scale=noise_scale)


def writable_format(path: Path) -> str | None:
    """The PIL format a file extension names, if PIL can write it (.jpg, .png, .tif, .bmp, ...)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    return fmt if fmt in Image.SAVE else None


def save_image(img: Image.Image, path: Path) -> None:
    fmt = writable_format(path)
    if fmt is None:
        raise ValueError(f"{path}: PIL cannot write '{path.suffix}' files")
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    img.save(path, format=fmt, **options)
