"""Disease -> lesion recipe: how much of each finding one image shows, shared by all three modalities.

Counts are ranges, not constants, and the ranges of neighbouring classes overlap (mild DR shows a
few microaneurysms; some healthy eyes show a dot or two of sensor dirt; glaucomatous and healthy
cup-to-disc ratios meet near 0.5), so the classes are learnable from pixels but not trivially.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from shards.synth.vocabulary import AMD, CUPPING, DR, DR_GRADES, GLAUCOMA, recognise

# (low, high) counts per DR grade 0..4 for a 256 px image.
_BY_GRADE = {
    "microaneurysms": ((0, 0), (1, 5), (4, 14), (10, 25), (8, 25)),
    "dot_haemorrhages": ((0, 0), (0, 0), (2, 8), (10, 22), (6, 20)),
    "flame_haemorrhages": ((0, 0), (0, 0), (0, 3), (2, 6), (1, 5)),
    "exudate_clusters": ((0, 0), (0, 0), (0, 3), (1, 4), (0, 4)),
    "cotton_wool": ((0, 0), (0, 0), (0, 2), (2, 6), (0, 4)),
    "neovascular_tufts": ((0, 0), (0, 0), (0, 0), (0, 0), (1, 3)),
    "nonperfusion": ((0, 0), (0, 0), (0, 0), (1, 3), (2, 4)),
}
# Minimum counts when a lesion is named on its own (multi-label sources carry no grade).
_BY_LESION = {
    "microaneurysms": {"microaneurysms": (3, 15)},
    "hemorrhages": {"dot_haemorrhages": (2, 10), "flame_haemorrhages": (0, 3)},
    "hard exudates": {"exudate_clusters": (1, 4)},
    "soft exudates": {"cotton_wool": (1, 4)},
    "drusen": {"drusen": (10, 35)},
    "neovascularization": {"neovascular_tufts": (1, 2)},
    "age related macular degeneration": {"drusen": (25, 70)},
}


@dataclass(frozen=True)
class Recipe:
    found: frozenset[str]  # canonical names recognised in the request
    dr_grade: int  # 0 none .. 4 proliferative
    cup_disc: float
    microaneurysms: int = 0
    dot_haemorrhages: int = 0
    flame_haemorrhages: int = 0
    exudate_clusters: int = 0
    cotton_wool: int = 0
    drusen: int = 0
    drusen_scale: float = 1.0  # 1 small hard drusen, ~2 large soft drusen
    neovascular_tufts: int = 0
    nonperfusion: int = 0  # capillary drop-out areas, seen on angiograms
    leaks: int = 0  # focal leakage points, seen on angiograms
    macular_edema: bool = False
    subretinal_fluid: bool = False  # seen on OCT
    amd: bool = False
    geographic_atrophy: bool = False
    cnv: bool = False
    preretinal_haemorrhage: bool = False
    peripapillary_atrophy: bool = False
    noise_dots: int = 0  # dark specks on eyes without red lesions, so "a few dots" alone is not DR

    @property
    def red_lesions(self) -> int:
        return self.microaneurysms + self.dot_haemorrhages + self.flame_haemorrhages

    @property
    def glaucoma(self) -> bool:
        return _glaucomatous(self.found)


def _glaucomatous(found: Iterable[str]) -> bool:
    return GLAUCOMA in found or CUPPING in found


def _grade(found: set[str], rng: np.random.Generator) -> int:
    named = [i for i, name in enumerate(DR_GRADES) if name in found]
    if named:
        return max(named)
    if DR in found:
        return int(rng.choice([1, 2, 3, 4], p=[0.2, 0.4, 0.2, 0.2]))
    return 0


def _cup_disc(found: set[str], rng: np.random.Generator) -> float:
    if GLAUCOMA in found:
        return float(np.clip(rng.normal(0.72, 0.09), 0.5, 0.92))
    if CUPPING in found:
        return float(np.clip(rng.normal(0.64, 0.08), 0.5, 0.88))
    return float(np.clip(rng.normal(0.33, 0.08), 0.15, 0.55))


def _count(rng: np.random.Generator, span: tuple[int, int]) -> int:
    return int(rng.integers(span[0], span[1] + 1))


def make_recipe(categories: Iterable[str], rng: np.random.Generator) -> Recipe:
    """Recognise the categories (canonical or messy names) and draw how much of each finding to show."""
    found = recognise(categories)
    grade = _grade(found, rng)
    counts = {field: _count(rng, spans[grade]) for field, spans in _BY_GRADE.items()}
    counts["drusen"] = 0
    for lesion, minimums in _BY_LESION.items():
        if lesion in found:
            for field, span in minimums.items():
                counts[field] = max(counts[field], _count(rng, span))
    amd = AMD in found
    edema = "macular edema" in found
    if edema:  # exudates gather around a leaking macula
        counts["exudate_clusters"] = max(counts["exudate_clusters"], _count(rng, (1, 3)))
    red = counts["microaneurysms"] + counts["dot_haemorrhages"] + counts["flame_haemorrhages"]
    return Recipe(
        found=frozenset(found),
        dr_grade=grade,
        cup_disc=_cup_disc(found, rng),
        drusen_scale=float(rng.uniform(1.4, 2.3) if amd else rng.uniform(0.9, 1.3)),
        macular_edema=edema,
        subretinal_fluid=edema and rng.random() < 0.6,
        leaks=_count(rng, (0, grade)) if grade >= 2 else 0,
        amd=amd,
        geographic_atrophy=amd and rng.random() < 0.2,
        cnv=amd and rng.random() < 0.25,
        preretinal_haemorrhage=grade == 4 and rng.random() < 0.35,
        peripapillary_atrophy=rng.random() < (0.5 if _glaucomatous(found) else 0.1),
        noise_dots=_count(rng, (1, 2)) if red == 0 and rng.random() < 0.25 else 0,
        **counts,
    )
