"""Colour fundus photographs (CFP).

Rendering works in reflectance ("albedo") first - background, macula, disc, vessels, lesions - and
only then applies the camera: uneven illumination, exposure, colour balance, gamma, sensor noise,
blur and the circular field of view. So a haemorrhage in a dim corner is dim too, as in real photos.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

from shards.synth import lesions
from shards.synth.canvas import MaskCanvas, gaussian, grid, smooth_noise, soft_ellipse, tint
from shards.synth.geometry import Fundus, fov_mask, sample_fundus
from shards.synth.recipe import Recipe, make_recipe
from shards.synth.vessels import grow_tree

FUNDUS = (0.80, 0.36, 0.16)
RIM = (0.93, 0.58, 0.36)
CUP = (0.99, 0.88, 0.68)
ARTERY = (0.70, 0.19, 0.10)
VEIN = (0.48, 0.09, 0.06)
BLOOD = (0.42, 0.05, 0.04)
NEW_VESSEL = (0.62, 0.12, 0.08)
EXUDATE = (1.0, 0.90, 0.48)
COTTON_WOOL = (0.95, 0.87, 0.76)
DRUSEN = (0.98, 0.80, 0.42)
PIGMENT = (0.26, 0.12, 0.06)
ATROPHY = (0.98, 0.78, 0.60)
CNV = (0.55, 0.46, 0.30)


def render_cfp(categories: Iterable[str], rng: np.random.Generator, size: int = 256, eye: str = "right", *,
               noise_scale: float = 1.0) -> Image.Image:
    """An RGB fundus photograph showing the given categories (canonical or messy names)."""
    return draw_cfp(make_recipe(categories, rng), rng, size, eye, noise_scale=noise_scale)


def draw_cfp(recipe: Recipe, rng: np.random.Generator, size: int, eye: str, *,
             noise_scale: float = 1.0) -> Image.Image:
    f = sample_fundus(rng, size)
    albedo = _background(rng, f)
    _macula(albedo, rng, f)
    _disc(albedo, rng, f, recipe)
    _vessels(albedo, rng, f)
    _lesions(albedo, rng, f, recipe)
    return _camera(albedo, rng, f, eye, noise_scale)


def _background(rng: np.random.Generator, f: Fundus) -> np.ndarray:
    pigment = rng.uniform(0.8, 1.1)  # darker, browner fundi in more pigmented eyes
    colour = np.array(FUNDUS, dtype=np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32) * pigment
    texture = 1 + 0.05 * smooth_noise(rng, f.size, 6) + 0.025 * smooth_noise(rng, f.size, 40)
    return colour[None, None, :] * texture[..., None]


def _macula(albedo: np.ndarray, rng: np.random.Generator, f: Fundus) -> None:
    """The macula is darker, more so in green and blue (macular pigment)."""
    shade = gaussian(f.size, f.fovea_x, f.fovea_y, 0.8 * f.dd) * rng.uniform(0.2, 0.4)
    albedo *= 1 - shade[..., None] * np.array([0.6, 1.0, 1.0], dtype=np.float32)
    if rng.random() < 0.5:  # foveal light reflex
        r = 0.06 * f.dd
        tint(albedo, soft_ellipse(f.size, f.fovea_x, f.fovea_y, r, r, 0.5), (0.9, 0.6, 0.4), 0.35)


def _disc(albedo: np.ndarray, rng: np.random.Generator, f: Fundus, recipe: Recipe) -> None:
    if recipe.peripapillary_atrophy:  # pale crescent on the temporal side of the disc
        halo = soft_ellipse(f.size, f.disc_x, f.disc_y, f.disc_rx * 1.35, f.disc_ry * 1.2, 0.1)
        temporal = grid(f.size)[1] < f.disc_x - 0.2 * f.disc_rx
        tint(albedo, halo * temporal, ATROPHY, rng.uniform(0.4, 0.7))
    tint(albedo, soft_ellipse(f.size, f.disc_x, f.disc_y, f.disc_rx, f.disc_ry, 0.12), RIM)
    cdr = recipe.cup_disc
    stretch = 1.08 if recipe.glaucoma else 1.0  # glaucomatous cups enlarge vertically first
    cup = soft_ellipse(f.size, f.disc_x - 0.08 * f.disc_rx, f.disc_y, cdr * f.disc_rx,
                       min(0.97, cdr * stretch) * f.disc_ry, 0.15)
    tint(albedo, cup, CUP)


def _vessels(albedo: np.ndarray, rng: np.random.Generator, f: Fundus) -> None:
    tree = grow_tree(rng, f)
    for branches, colour in ((tree.veins, VEIN), (tree.arteries, ARTERY)):
        canvas = MaskCanvas(f.size)
        for branch in branches:
            canvas.line(branch.points, branch.width)
        tint(albedo, canvas.mask(blur=0.5 * f.size / 256), colour, 0.9)  # blur hides stair-stepping


def _lesions(albedo: np.ndarray, rng: np.random.Generator, f: Fundus, r: Recipe) -> None:
    size, px = f.size, f.size / 256
    if r.drusen:
        canvas = MaskCanvas(size)
        lesions.drusen(canvas, rng, f, r.drusen, r.drusen_scale)
        tint(albedo, canvas.mask(blur=0.6 * px * r.drusen_scale), DRUSEN, 0.85)
    if r.amd:
        _amd(albedo, rng, f, r)
    if r.macular_edema:  # thickened retina: a greyish haze over the macula
        tint(albedo, gaussian(size, f.fovea_x, f.fovea_y, 0.7 * f.dd), (0.78, 0.55, 0.40), rng.uniform(0.2, 0.35))
    if r.exudate_clusters:
        canvas = MaskCanvas(size)
        reach = 1.3 if r.macular_edema else 2.6  # edema gathers exudates near the fovea
        lesions.exudate_clusters(canvas, rng, f, r.exudate_clusters, r_max=reach)
        tint(albedo, canvas.mask(blur=0.25 * px), EXUDATE)
    if r.cotton_wool:
        canvas = MaskCanvas(size)
        lesions.cotton_wool(canvas, rng, f, r.cotton_wool)
        tint(albedo, canvas.mask(blur=2.0 * px), COTTON_WOOL, 0.65)
    if r.neovascular_tufts:
        canvas = MaskCanvas(size)
        lesions.tangles(canvas, rng, f, r.neovascular_tufts)
        tint(albedo, canvas.mask(blur=0.2 * px), NEW_VESSEL, 0.9)
    canvas = MaskCanvas(size)
    lesions.dots(canvas, rng, f, r.microaneurysms, radius=(0.7, 1.4))
    lesions.dots(canvas, rng, f, r.noise_dots, radius=(0.5, 0.9), value=0.6)
    lesions.blots(canvas, rng, f, r.dot_haemorrhages)
    lesions.flames(canvas, rng, f, r.flame_haemorrhages)
    if r.preretinal_haemorrhage:
        lesions.preretinal(canvas, rng, f)
    tint(albedo, canvas.mask(blur=0.4 * px), BLOOD, 0.95)


def _amd(albedo: np.ndarray, rng: np.random.Generator, f: Fundus, r: Recipe) -> None:
    """Pigment clumps, and sometimes geographic atrophy or a neovascular membrane with blood."""
    canvas = MaskCanvas(f.size)
    lesions.dots(canvas, rng, f, int(rng.integers(3, 10)), radius=(0.8, 2.0), r_max=1.2)
    tint(albedo, canvas.mask(blur=0.8 * f.size / 256), PIGMENT, 0.6)
    x, y = f.fovea_x + rng.normal(0, 0.1 * f.dd), f.fovea_y + rng.normal(0, 0.1 * f.dd)
    if r.geographic_atrophy:
        rx = f.dd * rng.uniform(0.35, 0.8)
        tint(albedo, soft_ellipse(f.size, x, y, rx, rx * rng.uniform(0.7, 1.0), 0.06), ATROPHY, 0.85)
    if r.cnv:
        rx = f.dd * rng.uniform(0.3, 0.6)
        tint(albedo, soft_ellipse(f.size, x, y, rx * 1.5, rx * 1.3, 0.15), BLOOD, 0.7)
        tint(albedo, soft_ellipse(f.size, x, y, rx, rx * 0.9, 0.3), CNV, 0.8)


def _camera(albedo: np.ndarray, rng: np.random.Generator, f: Fundus, eye: str, noise_scale: float) -> Image.Image:
    yy, xx = grid(f.size)
    lx = f.cx + rng.normal(0, 0.15) * f.radius
    ly = f.cy + rng.normal(0, 0.15) * f.radius
    falloff = ((xx - lx) ** 2 + (yy - ly) ** 2) / (f.radius ** 2)
    light = (1 - rng.uniform(0.25, 0.55) * falloff) * (1 + 0.06 * smooth_noise(rng, f.size, 3))
    gain = rng.uniform(0.75, 1.1) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    img = np.clip(albedo * (light[..., None] * gain), 0, 1) ** rng.uniform(0.8, 1.25)
    noise = rng.standard_normal((f.size, f.size, 1), dtype=np.float32)  # mostly luminance noise, as on sensors
    img += noise * np.float32(rng.uniform(0.006, 0.018) * noise_scale)
    img = np.clip(img * fov_mask(f)[..., None], 0, 1)
    if eye == "left":
        img = img[:, ::-1]
    out = Image.fromarray((img * 255 + 0.5).astype(np.uint8), "RGB")
    if rng.random() < 0.5:  # about half the photographs are a little out of focus
        blur = ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0) * f.size / 256)
        out = Image.merge("RGB", [band.filter(blur) for band in out.split()])  # per band: faster than RGB
    return out
