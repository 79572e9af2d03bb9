"""The retinal vessel tree: branching random walks leaving the optic disc.

Four arcades (two temporal ones that curve around the macula, two nasal ones that run straight out)
for arteries and for veins, plus small macular twigs. Each walk bifurcates every few steps into a
slightly thinner continuation and a thinner side branch with a shorter length budget; walks stop at
the field-of-view edge and short of the fovea (the foveal avascular zone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.synth.geometry import Fundus

MIN_WIDTH = 0.3  # px; thinner branches are not drawn


@dataclass(frozen=True)
class Branch:
    points: np.ndarray  # (k, 2) polyline, px
    width: float  # px


@dataclass(frozen=True)
class Tree:
    arteries: list[Branch]
    veins: list[Branch]


def _walk(rng: np.random.Generator, f: Fundus, start: np.ndarray, angle: float, curvature: float,
          width: float, budget: int, out: list[Branch]) -> None:
    step = 0.28 * f.dd
    decay = 0.94  # curvature fades along a vessel, so arcades straighten once around the macula
    stack = [(start, angle, curvature, width, budget)]
    while stack:
        start, angle, curvature, width, budget = stack.pop()
        if budget < 1:
            continue
        # A whole walk at once: heading = start + fading curvature + random wiggle.
        k = np.arange(1, budget + 1)
        heading = angle + curvature * (1 - decay ** k) / (1 - decay) + np.cumsum(rng.normal(0, 0.09, budget))
        points = start + np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], axis=1), axis=0)
        stop = (np.hypot(points[:, 0] - f.cx, points[:, 1] - f.cy) > f.radius) | \
               (np.hypot(points[:, 0] - f.fovea_x, points[:, 1] - f.fovea_y) < 0.4 * f.dd)
        n = int(np.argmax(stop)) + 1 if stop.any() else budget
        points = np.concatenate([start[None], points[:n]])
        forks = np.cumsum(rng.integers(3, 8, budget // 3 + 1))
        forks = forks[forks < n]
        for a, b in zip(np.concatenate([[0], forks]), np.concatenate([forks, [n]])):
            out.append(Branch(points[a:b + 1], width))
            if b == n:
                break
            side_width = width * rng.uniform(0.5, 0.72)
            if side_width >= MIN_WIDTH:
                side = rng.choice((-1.0, 1.0))
                stack.append((points[b], heading[b - 1] + side * rng.uniform(0.6, 1.1), side * rng.uniform(0, 0.05),
                              side_width, int((budget - b) * rng.uniform(0.35, 0.65))))
            width *= rng.uniform(0.86, 0.94)  # a vessel narrows after each branch it gives off


def grow_tree(rng: np.random.Generator, f: Fundus) -> Tree:
    centre = np.array([f.disc_x, f.disc_y])
    vein_width = f.dd * rng.uniform(0.085, 0.105)
    artery_width = vein_width * rng.uniform(0.68, 0.8)
    # (angle, curvature per step) in radians, image y pointing down; temporal is -x.
    trunks = [
        (-np.pi / 2 - rng.uniform(0.0, 0.3), -rng.uniform(0.07, 0.11)),  # superotemporal arcade
        (np.pi / 2 + rng.uniform(0.0, 0.3), rng.uniform(0.07, 0.11)),  # inferotemporal arcade
        (-rng.uniform(0.4, 0.9), rng.normal(0, 0.02)),  # superonasal
        (rng.uniform(0.4, 0.9), rng.normal(0, 0.02)),  # inferonasal
    ]
    arteries: list[Branch] = []
    veins: list[Branch] = []
    for angle, curvature in trunks:
        for out, width, offset in ((arteries, artery_width, 0.12), (veins, vein_width, -0.12)):
            start = centre + rng.normal(0, 0.08 * f.dd, 2)
            _walk(rng, f, start, angle + offset * np.sign(curvature or 1.0), curvature, width, 40, out)
    for _ in range(int(rng.integers(2, 4))):  # small twigs toward the macula
        angle = np.pi + rng.normal(0, 0.25)
        out = arteries if rng.random() < 0.5 else veins
        _walk(rng, f, centre, angle, rng.normal(0, 0.03), artery_width * rng.uniform(0.3, 0.45), 8, out)
    return Tree(arteries, veins)
