"""OCT B-scans through the fovea: layered retina with speckle, foveal pit, drusen, fluid.

Each column stacks the retinal layers upward from Bruch's membrane with thicknesses that vary
along the scan (the inner layers thin out into the foveal pit; the nerve fibre layer thickens
toward the disc, on the nasal side). Disease changes thicknesses (drusen lift the RPE, edema
swells the nuclear layers, fluid adds a dark layer) and then adds spots (cysts, hyperreflective
foci). Speckle is multiplicative and the display is log-compressed, as on scanners.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

from shards.synth.canvas import MaskCanvas, grid, smooth_noise
from shards.synth.recipe import Recipe, make_recipe

# Top to bottom: (name, reflectivity); the vitreous above and choroid below are handled apart.
LAYERS = (
    ("rnfl", 0.8), ("gcl", 0.22), ("ipl", 0.4), ("inl", 0.07), ("opl", 0.4), ("onl", 0.035),
    ("is", 0.12), ("ez", 0.75), ("os", 0.2), ("srf", 0.003), ("shrm", 0.5), ("rpe", 1.0), ("drusen", 0.25),
)
VITREOUS = 0.003
CHOROID = 0.3


def render_oct(categories: Iterable[str], rng: np.random.Generator, size: int = 256, eye: str = "right") -> Image.Image:
    """A grayscale ('L') foveal B-scan showing the given categories."""
    return draw_oct(make_recipe(categories, rng), rng, size, eye)


def _bumps(rng: np.random.Generator, u: np.ndarray, n: int, height: tuple[float, float],
           width: tuple[float, float], spread: float) -> np.ndarray:
    """Sum of `n` gaussian bumps near the fovea (u = 0), heights in the units given."""
    out = np.zeros_like(u)
    for c, h, w in zip(rng.normal(0, spread, n), rng.uniform(*height, n), rng.uniform(*width, n)):
        out += h * np.exp(-((u - c) ** 2) / (2 * w * w))
    return out


def _wobble(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    """Smooth 1-D noise along the scan, about unit amplitude."""
    return np.interp(np.linspace(0, knots, n), np.arange(knots + 1), rng.standard_normal(knots + 1))


def _thicknesses(rng: np.random.Generator, u: np.ndarray, r: Recipe, t: float) -> dict[str, np.ndarray]:
    pit = np.exp(-(u ** 2) / (2 * rng.uniform(0.05, 0.08) ** 2))
    inner = 1 - 0.95 * pit
    swell = 1 + (_bumps(rng, u, 1, (0.6, 1.2), (0.08, 0.14), 0.03) if r.macular_edema else 0)
    rnfl_scale = rng.uniform(0.35, 0.6) if r.glaucoma else 1.0  # glaucoma thins the nerve fibre layer
    zero = np.zeros_like(u)
    layers = {
        "rnfl": 0.08 * inner * (1 + 2.5 * np.clip(u, 0, None)) * rnfl_scale,  # thicker nasally, toward the disc
        "gcl": 0.13 * inner, "ipl": 0.10 * inner, "inl": 0.12 * inner * swell, "opl": 0.07 * inner,
        "onl": 0.26 * (1 + 0.35 * pit) * swell, "is": 0.06 + zero, "ez": 0.03 + zero, "os": 0.05 + zero,
        "srf": zero, "shrm": zero, "rpe": 0.05 + zero, "drusen": zero,
    }
    if r.drusen:
        n = min(12, max(1, r.drusen // 6))
        layers["drusen"] = _bumps(rng, u, n, (0.04, 0.1 * r.drusen_scale), (0.012, 0.025 * r.drusen_scale), 0.15)
    if r.subretinal_fluid:
        layers["srf"] = _bumps(rng, u, 1, (0.1, 0.35), (0.05, 0.1), 0.03)
    if r.cnv:
        layers["shrm"] = _bumps(rng, u, 1, (0.12, 0.3), (0.03, 0.06), 0.03)
        layers["srf"] = layers["srf"] + _bumps(rng, u, 1, (0.1, 0.25), (0.06, 0.1), 0.03)
    if r.geographic_atrophy:
        gap = np.abs(u - rng.normal(0, 0.03)) < rng.uniform(0.05, 0.12)
        layers["rpe"] = np.where(gap, 0.01, layers["rpe"])
        layers["onl"] = np.where(gap, layers["onl"] * 0.4, layers["onl"])
    return {name: thickness * t for name, thickness in layers.items()}


def draw_oct(r: Recipe, rng: np.random.Generator, size: int, eye: str) -> Image.Image:
    yy, xx = grid(size)
    fovea = size * rng.uniform(0.42, 0.58)
    u = (xx[0] - fovea) / size  # scan position relative to the fovea
    bruch = size * (rng.uniform(0.5, 0.64) + rng.uniform(-0.15, 0.15) * u + rng.uniform(0.0, 0.5) * u ** 2)
    bruch = bruch + 0.006 * size * _wobble(rng, size, 6)
    thick = _thicknesses(rng, u, r, size * rng.uniform(0.18, 0.24))
    tops, bottom = [], bruch
    for name, _ in reversed(LAYERS):
        bottom = bottom - thick[name]
        tops.append(bottom)
    tops = np.stack(tops[::-1])  # (layers, columns), top of each layer, top layer first
    index = (yy[None] >= tops[:, None, :]).sum(axis=0)  # 0 = vitreous .. len(LAYERS) = choroid
    lut = np.array([VITREOUS, *(v for _, v in LAYERS), CHOROID], dtype=np.float32)
    img = lut[index]
    below = np.clip(yy - bruch[None, :], 0, None)
    choroid = index == len(LAYERS)
    texture = np.clip(1 + 0.4 * smooth_noise(rng, size, 16), 0.2, None)  # large vessel lumens are dark
    img[choroid] *= (np.exp(-below / (0.08 * size)) * texture)[choroid]
    if r.geographic_atrophy:  # light passes where the RPE is gone: bright choroid beneath
        img[choroid & (thick["rpe"] < 0.02 * size)[None, :]] *= 2.2
    img = _spots(img, rng, r, tops, int(fovea))
    return _scanner(img, rng, eye)


def _spots(img: np.ndarray, rng: np.random.Generator, r: Recipe, tops: np.ndarray, fovea: int) -> np.ndarray:
    size = img.shape[0]
    names = [name for name, _ in LAYERS]
    inl, onl_bottom = tops[names.index("inl")], tops[names.index("is")]
    dark, bright = MaskCanvas(size), MaskCanvas(size)
    if r.macular_edema:  # intraretinal cysts in the nuclear layers around the fovea
        for x in np.clip(fovea + rng.normal(0, 0.08 * size, int(rng.integers(3, 9))), 0, size - 1):
            c = int(x)
            y = rng.uniform(inl[c], onl_bottom[c])
            rx = size * rng.uniform(0.01, 0.035)
            dark.ellipse(x, y, rx, rx * rng.uniform(0.6, 1.4))
    foci = r.exudate_clusters * 3 + (r.dr_grade if r.dr_grade >= 2 else 0)
    for x in rng.uniform(0.1, 0.9, foci) * size:  # hyperreflective foci in the inner retina
        c = int(x)
        y = rng.uniform(tops[1][c], onl_bottom[c])
        rad = size * rng.uniform(0.004, 0.009)
        bright.ellipse(x, y, rad, rad)
    for x in rng.uniform(0.05, 0.95, int(rng.integers(2, 6))) * size:  # retinal vessels cast shadows
        if abs(x - fovea) < 0.1 * size:  # none in the foveal avascular zone
            continue
        c = int(x)
        half = size * rng.uniform(0.004, 0.01)
        bright.ellipse(x, tops[1][c] + half, half, half)
        img[int(tops[2][c]):, max(0, int(x - half)):int(x + half) + 1] *= 0.55
    img = img * (1 - 0.9 * dark.mask(blur=0.5))
    return img + (0.9 - img) * bright.mask(blur=0.4)


def _scanner(img: np.ndarray, rng: np.random.Generator, eye: str) -> Image.Image:
    shape = rng.uniform(1.5, 3.0)
    speckled = (img + 0.004) * rng.gamma(shape, 1 / shape, img.shape)
    gain = rng.uniform(30, 60)
    black = rng.uniform(0.05, 0.12)
    shown = (np.log1p(gain * speckled) / np.log1p(gain) - black) / (1 - black)
    shown = np.clip(shown * rng.uniform(0.9, 1.15), 0, 1)
    if eye == "left":
        shown = shown[:, ::-1]
    out = Image.fromarray((shown * 255 + 0.5).astype(np.uint8), "L")
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.8) * img.shape[0] / 256))
