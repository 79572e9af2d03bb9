"""Fundus fluorescein angiograms (FFA): grayscale, bright dye-filled vessels on a dark fundus.

What a lesion looks like flips relative to colour photographs: microaneurysms and leakage are
hyperfluorescent (bright), blood and capillary non-perfusion block or lack dye (dark).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

from shards.synth import lesions
from shards.synth.canvas import MaskCanvas, gaussian, grid, smooth_noise, soft_ellipse
from shards.synth.geometry import Fundus, fov_mask, sample_fundus, scatter
from shards.synth.recipe import Recipe, make_recipe
from shards.synth.vessels import grow_tree


def render_ffa(categories: Iterable[str], rng: np.random.Generator, size: int = 256, eye: str = "right") -> Image.Image:
    """A grayscale ('L') angiogram showing the given categories."""
    return draw_ffa(make_recipe(categories, rng), rng, size, eye)


def draw_ffa(recipe: Recipe, rng: np.random.Generator, size: int, eye: str) -> Image.Image:
    f = sample_fundus(rng, size)
    px = size / 256
    img = 0.2 + 0.04 * smooth_noise(rng, size, 8) + 0.02 * smooth_noise(rng, size, 60)  # choroidal flush
    img *= 1 - 0.75 * gaussian(size, f.fovea_x, f.fovea_y, 0.45 * f.dd)  # foveal avascular zone
    disc = soft_ellipse(size, f.disc_x, f.disc_y, f.disc_rx, f.disc_ry, 0.15)
    cup = soft_ellipse(size, f.disc_x, f.disc_y, recipe.cup_disc * f.disc_rx, recipe.cup_disc * f.disc_ry, 0.2)
    img += disc * 0.35 + cup * 0.15
    img = _add(img, _vessel_mask(rng, f), rng.uniform(0.55, 0.75))
    img = _lesions(img, rng, f, recipe, px)
    return _camera(img, rng, f, eye)


def _vessel_mask(rng: np.random.Generator, f: Fundus) -> np.ndarray:
    tree = grow_tree(rng, f)
    canvas = MaskCanvas(f.size)
    for branch in tree.veins + tree.arteries:
        canvas.line(branch.points, branch.width)
    return canvas.mask(blur=0.4 * f.size / 256)


def _add(img: np.ndarray, mask: np.ndarray, level: float) -> np.ndarray:
    """Blend toward `level` where the mask is set (dye pooling or blocking)."""
    return img + (level - img) * mask


def _lesions(img: np.ndarray, rng: np.random.Generator, f: Fundus, r: Recipe, px: float) -> np.ndarray:
    size = f.size
    for x, y in scatter(rng, f, r.nonperfusion, around=(f.fovea_x, f.fovea_y), r_min=1.5, r_max=3.5):
        # capillary drop-out: dark, vessel-poor patches
        rx = f.dd * rng.uniform(0.5, 1.1)
        area = soft_ellipse(size, x, y, rx, rx * rng.uniform(0.6, 1.0), 0.4)
        img = img * (1 - 0.65 * area)
    blocked = MaskCanvas(size)  # haemorrhages and cotton-wool spots block the dye
    lesions.blots(blocked, rng, f, r.dot_haemorrhages)
    lesions.flames(blocked, rng, f, r.flame_haemorrhages)
    lesions.cotton_wool(blocked, rng, f, r.cotton_wool)
    img = img * (1 - 0.7 * blocked.mask(blur=0.6 * px))
    dots = MaskCanvas(size)  # angiography shows more microaneurysms than the photograph
    lesions.dots(dots, rng, f, r.microaneurysms * 3 // 2, radius=(0.6, 1.2))
    lesions.drusen(dots, rng, f, r.drusen, r.drusen_scale * 0.8)
    img = _add(img, dots.mask(blur=0.4 * px), 0.95)
    leak = MaskCanvas(size)
    lesions.tangles(leak, rng, f, r.neovascular_tufts)
    lesions.dots(leak, rng, f, r.leaks, radius=(2.0, 4.0))
    img = _add(img, leak.mask(blur=4.0 * px), 0.9)
    if r.macular_edema:  # petaloid pooling around the fovea
        for t in np.linspace(0, 2 * np.pi, 8, endpoint=False) + rng.normal(0, 0.2, 8):
            d = f.dd * rng.uniform(0.25, 0.45)
            petal = gaussian(size, f.fovea_x + d * np.cos(t), f.fovea_y + d * np.sin(t), f.dd * rng.uniform(0.08, 0.16))
            img = _add(img, petal, rng.uniform(0.6, 0.85))
    if r.cnv:  # lacy membrane leaking at the macula
        img = _add(img, gaussian(size, f.fovea_x, f.fovea_y, 0.35 * f.dd), 0.95)
    if r.geographic_atrophy:  # window defect: sharp-edged hyperfluorescence
        rx = f.dd * rng.uniform(0.35, 0.8)
        img = _add(img, soft_ellipse(size, f.fovea_x, f.fovea_y, rx, rx * 0.85, 0.05), 0.7)
    return img


def _camera(img: np.ndarray, rng: np.random.Generator, f: Fundus, eye: str) -> Image.Image:
    yy, xx = grid(f.size)
    falloff = 1 - rng.uniform(0.2, 0.45) * ((xx - f.cx) ** 2 + (yy - f.cy) ** 2) / f.radius ** 2
    img = np.clip(img * falloff * rng.uniform(0.8, 1.15), 0, 1) ** rng.uniform(0.8, 1.2)
    img = np.clip(img + rng.normal(0, rng.uniform(0.01, 0.03), img.shape), 0, 1) * fov_mask(f)
    if eye == "left":
        img = img[:, ::-1]
    out = Image.fromarray((img * 255 + 0.5).astype(np.uint8), "L")
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8) * f.size / 256))
