"""Where things are in a fundus image: field of view, optic disc, fovea, and lesion placement.

Everything is laid out for a right eye (disc on the right of the image, macula temporal to it, on
the left); left eyes are mirrored after rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.synth.canvas import grid


@dataclass(frozen=True)
class Fundus:
    size: int
    cx: float  # field-of-view centre and radius, px
    cy: float
    radius: float
    band: float  # half-height of the rows the camera keeps (>= radius when nothing is cropped)
    disc_x: float
    disc_y: float
    disc_rx: float
    disc_ry: float
    fovea_x: float
    fovea_y: float

    @property
    def dd(self) -> float:
        """Disc diameter, the clinical unit of distance on the fundus."""
        return self.disc_rx + self.disc_ry


def sample_fundus(rng: np.random.Generator, size: int) -> Fundus:
    radius = size * rng.uniform(0.43, 0.49)
    cx = size / 2 + rng.uniform(-0.02, 0.02) * size
    cy = size / 2 + rng.uniform(-0.02, 0.02) * size
    band = radius * rng.uniform(0.78, 0.92) if rng.random() < 0.3 else 2 * radius  # some cameras crop top/bottom
    dd = radius * rng.uniform(0.24, 0.3)
    rx, ry = dd / 2 * rng.uniform(0.88, 0.98), dd / 2 * rng.uniform(1.0, 1.12)
    offset = 2.5 * dd * rng.uniform(0.9, 1.1)  # fovea sits about 2.5 disc diameters temporal to the disc
    if rng.random() < 0.25:  # disc-centred photograph
        disc_x = cx + rng.uniform(-0.05, 0.1) * radius
        fovea_x = disc_x - offset
    else:  # macula-centred photograph
        fovea_x = cx - rng.uniform(0.08, 0.25) * radius
        disc_x = fovea_x + offset
    fovea_y = cy + rng.uniform(-0.04, 0.06) * radius
    disc_y = fovea_y - dd * rng.uniform(0.0, 0.3)
    return Fundus(size, cx, cy, radius, band, disc_x, disc_y, rx, ry, fovea_x, fovea_y)


def fov_mask(f: Fundus) -> np.ndarray:
    """Soft-edged circular field of view, cut to the camera's row band."""
    yy, xx = grid(f.size)
    r = np.sqrt((xx - f.cx) ** 2 + (yy - f.cy) ** 2)
    edge = max(1.0, f.size / 200)
    circle = np.clip((f.radius - r) / edge + 0.5, 0, 1)
    return circle * (np.abs(yy - f.cy) <= f.band)


def inside(f: Fundus, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
    return np.hypot(x - f.cx, y - f.cy) < f.radius - margin


def scatter(rng: np.random.Generator, f: Fundus, n: int, *, around: tuple[float, float],
            r_min: float, r_max: float, avoid_disc: bool = True) -> np.ndarray:
    """`n` points (n, 2) at radii r_min..r_max (in disc diameters) around a centre, in the field of view.

    Radii are drawn uniformly in area, so density is even; points on the disc or outside the field
    are redrawn, and a region mostly outside the field may yield fewer than `n`.
    """
    if n <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    chosen = np.zeros((0, 2))
    for _ in range(8):
        m = 3 * n + 8
        r = f.dd * np.sqrt(rng.uniform(r_min ** 2, r_max ** 2, m))
        t = rng.uniform(0, 2 * np.pi, m)
        x, y = around[0] + r * np.cos(t), around[1] + r * np.sin(t)
        keep = inside(f, x, y, margin=f.size * 0.02) & (np.abs(y - f.cy) < f.band - f.size * 0.02)
        if avoid_disc:
            keep &= np.hypot(x - f.disc_x, y - f.disc_y) > 0.7 * f.dd
        chosen = np.concatenate([chosen, np.stack([x[keep], y[keep]], axis=1)])
        if len(chosen) >= n:
            break
    return chosen[:n].astype(np.float32)
