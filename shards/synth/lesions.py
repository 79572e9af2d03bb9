"""Lesion shapes, drawn onto mask canvases; the renderers decide their colour (CFP) or brightness (FFA).

Sizes are in pixels of a 256 px image scaled by `f.size / 256`, or in disc diameters where the
clinical size is defined that way (cotton-wool spots, flame haemorrhages).
"""

from __future__ import annotations

import numpy as np

from shards.synth.canvas import MaskCanvas, rotated_ellipse
from shards.synth.geometry import Fundus, scatter


def _px(f: Fundus) -> float:
    return f.size / 256


def _fovea(f: Fundus) -> tuple[float, float]:
    return f.fovea_x, f.fovea_y


def dots(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int, *, radius: tuple[float, float],
         r_max: float = 3.0, value: float = 1.0) -> None:
    """Round dots in the posterior pole: microaneurysms, or specks of sensor dirt at a lower value."""
    for x, y in scatter(rng, f, n, around=_fovea(f), r_min=0.2, r_max=r_max):
        r = _px(f) * rng.uniform(*radius)
        canvas.ellipse(x, y, r, r, value)


def blots(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int) -> None:
    """Dot and blot haemorrhages: a few overlapping ellipses each, so the outline is irregular."""
    for x, y in scatter(rng, f, n, around=_fovea(f), r_min=0.3, r_max=3.6):
        size = _px(f) * rng.uniform(1.3, 3.8)
        for _ in range(int(rng.integers(1, 4))):
            dx, dy = rng.normal(0, 0.45 * size, 2)
            rx, ry = size * rng.uniform(0.6, 1.0, 2)
            canvas.polygon(rotated_ellipse(x + dx, y + dy, rx, ry, rng.uniform(0, np.pi)))


def flames(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int) -> None:
    """Flame haemorrhages lie in the nerve fibre layer, so they point away from the disc."""
    for x, y in scatter(rng, f, n, around=(f.disc_x, f.disc_y), r_min=0.8, r_max=3.2):
        angle = np.arctan2(y - f.disc_y, x - f.disc_x) + rng.normal(0, 0.2)
        length, width = f.dd * rng.uniform(0.18, 0.4), f.dd * rng.uniform(0.04, 0.08)
        for _ in range(3):  # feathered streaks rather than one smooth ellipse
            canvas.polygon(rotated_ellipse(x + rng.normal(0, width), y + rng.normal(0, width), length,
                                           width, angle + rng.normal(0, 0.15)), rng.uniform(0.5, 0.9))


def exudate_clusters(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int, *,
                     r_max: float = 2.6) -> None:
    """Hard exudates: clusters of small sharp dots, sometimes in a partial ring (circinate)."""
    for cx, cy in scatter(rng, f, n, around=_fovea(f), r_min=0.2, r_max=r_max):
        k = int(rng.integers(4, 16))
        if rng.random() < 0.3:
            ring = f.dd * rng.uniform(0.3, 0.7)
            t = rng.uniform(0, 2 * np.pi) + rng.uniform(0, 1.5 * np.pi, k)
            xs, ys = cx + ring * np.cos(t), cy + ring * np.sin(t)
        else:
            spread = f.dd * rng.uniform(0.08, 0.3)
            xs, ys = cx + rng.normal(0, spread, k), cy + rng.normal(0, spread, k)
        for x, y, r in zip(xs, ys, _px(f) * rng.uniform(0.5, 1.5, k)):
            canvas.ellipse(x, y, r, r * rng.uniform(0.7, 1.0))


def cotton_wool(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int) -> None:
    """Soft exudates: fluffy pale patches along the arcades, elongated across the nerve fibres."""
    for x, y in scatter(rng, f, n, around=(f.disc_x, f.disc_y), r_min=0.8, r_max=3.0):
        angle = np.arctan2(y - f.disc_y, x - f.disc_x) + np.pi / 2
        rx = f.dd * rng.uniform(0.12, 0.28)
        for _ in range(3):  # lumpy outline
            dx, dy = rng.normal(0, 0.25 * rx, 2)
            canvas.polygon(rotated_ellipse(x + dx, y + dy, rx, rx * rng.uniform(0.5, 0.8), angle),
                           rng.uniform(0.6, 1.0))


def drusen(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int, scale: float) -> None:
    """Small round yellow deposits around the macula; `scale` > 1 gives large soft drusen."""
    for x, y in scatter(rng, f, n, around=_fovea(f), r_min=0.0, r_max=1.8):
        r = _px(f) * scale * rng.uniform(0.7, 1.7)
        canvas.ellipse(x, y, r, r, rng.uniform(0.6, 1.0))


def tangles(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus, n: int) -> None:
    """Neovascularisation: fine, tightly turning loops on the disc or along the arcades."""
    for i in range(n):
        if i == 0 and rng.random() < 0.6:  # new vessels on the disc
            centre = (f.disc_x + rng.normal(0, 0.2 * f.dd), f.disc_y + rng.normal(0, 0.2 * f.dd))
        else:  # elsewhere, along the arcades
            found = scatter(rng, f, 1, around=(f.disc_x, f.disc_y), r_min=1.2, r_max=2.8)
            if not len(found):
                continue
            centre = tuple(found[0])
        for _ in range(int(rng.integers(4, 9))):
            steps = int(rng.integers(6, 14))
            turns = np.cumsum(rng.normal(0, 0.7, steps)) + rng.uniform(0, 2 * np.pi)
            path = np.cumsum(0.07 * f.dd * np.stack([np.cos(turns), np.sin(turns)], axis=1), axis=0)
            canvas.line(path + np.asarray(centre), max(0.5, 0.6 * _px(f)))


def preretinal(canvas: MaskCanvas, rng: np.random.Generator, f: Fundus) -> None:
    """A boat-shaped pre-retinal haemorrhage: blood settles, leaving a flat top."""
    found = scatter(rng, f, 1, around=_fovea(f), r_min=1.0, r_max=2.5)
    if not len(found):
        return
    x, y = found[0]
    rx, ry = f.dd * rng.uniform(0.4, 0.8), f.dd * rng.uniform(0.3, 0.5)
    t = np.linspace(0, np.pi, 16)  # lower half of an ellipse, closed by the flat fluid level
    canvas.polygon(np.stack([x + rx * np.cos(t), y + ry * np.sin(t)], axis=1))
