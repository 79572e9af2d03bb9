"""The categorical datasets: what each row shows, and how its labels are written.

Public (training) sources write some labels the way real files do - British spellings, plural
variants, trailing dots, upper case, the odd empty label - while the pixels follow the true label.
Evaluation sets are clean and balanced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shards.synth.vocabulary import (AMD, CUPPING, DR_GRADES, FIVES_CLASSES, GLAUCOMA, GLAUCOMA_CLASSES, LESIONS,
                                     NO_GLAUCOMA, NORMAL)


@dataclass(frozen=True)
class Row:
    categories: tuple[str, ...]  # what is drawn (canonical names)
    attributes: tuple[str, ...] = ()
    written: tuple[str, ...] | None = None  # the labels as written, when they differ

    @property
    def labels(self) -> tuple[str, ...]:
        return self.categories if self.written is None else self.written


@dataclass(frozen=True)
class Source:
    name: str  # dataframe stem
    folder: str  # image folder, relative to the image root
    ext: str
    classes: tuple[str, ...]
    share: float  # of the public or eval count
    draw: Callable[[np.random.Generator, int], Row]


_VARIANTS = {
    "hemorrhages": ("haemorrhages", "hemorrhage"),
    "macular edema": ("macular oedema",),
    "neovascularization": ("neovascularisation",),
    "drusen": ("drusens",),
    "microaneurysms": ("microaneurysm",),
    "hard exudates": ("hard exudate",),
    "soft exudates": ("soft exudate", "cotton wool spots"),
}


def messy(name: str, rng: np.random.Generator, rate: float = 0.08) -> str:
    """Usually `name`; sometimes a spelling, number, punctuation or case variant of it."""
    if rng.random() >= rate:
        return name
    kind = int(rng.integers(4))
    if kind == 0 and name in _VARIANTS:
        return str(rng.choice(_VARIANTS[name]))
    if kind == 1:
        return name + "."
    if kind == 2:
        return name.upper()
    return name.capitalize()


def _publish(categories: tuple[str, ...], rng: np.random.Generator, attributes: tuple[str, ...] = ()) -> Row:
    if rng.random() < 0.01:  # real files hold a few rows whose label was lost
        return Row(categories, attributes, ("",))
    return Row(categories, attributes, tuple(messy(c, rng) for c in categories))


def _dr(rng: np.random.Generator, index: int) -> Row:
    grade = DR_GRADES[int(rng.choice(5, p=[0.4, 0.15, 0.2, 0.13, 0.12]))]
    return _publish((grade,), rng)


def _glaucoma(rng: np.random.Generator, index: int) -> Row:
    if rng.random() < 0.45:
        return _publish((GLAUCOMA, CUPPING) if rng.random() < 0.3 else (GLAUCOMA,), rng)
    return _publish((NO_GLAUCOMA,), rng)


def _multilesion(rng: np.random.Generator, index: int) -> Row:
    u = rng.random()
    if u < 0.25:
        categories: tuple[str, ...] = (NORMAL,)
    elif u < 0.37:
        categories = (AMD, "drusen")
    elif u < 0.45:
        categories = ("drusen",)
    else:  # diabetic lesions appear together, in roughly the order the disease adds them
        odds = {"hemorrhages": 0.7, "hard exudates": 0.5, "soft exudates": 0.3, "neovascularization": 0.15,
                "macular edema": 0.2}
        categories = ("microaneurysms", *(name for name, p in odds.items() if rng.random() < p))
    a = rng.random()
    attributes = ("clean",) if a < 0.1 else ("noisy",) if a < 0.2 else ()
    return _publish(categories, rng, attributes)


def _balanced(classes: tuple[str, ...]) -> Callable[[np.random.Generator, int], Row]:
    return lambda rng, index: Row((classes[index % len(classes)],))


PUBLIC = (
    Source("90_SYNTH_DR", "90_SYNTH_DR/train", "jpg", DR_GRADES, 0.4, _dr),
    Source("91_SYNTH_GLAUCOMA", "91_SYNTH_GLAUCOMA/train", "png", GLAUCOMA_CLASSES, 0.3, _glaucoma),
    Source("92_SYNTH_MULTILESION", "92_SYNTH_MULTILESION/train", "jpg", (NORMAL, AMD, *LESIONS), 0.3, _multilesion),
)
EVAL = (
    Source("SYNTH_GLAUCOMA", "eval/SYNTH_GLAUCOMA", "jpg", GLAUCOMA_CLASSES, 1 / 3, _balanced(GLAUCOMA_CLASSES)),
    Source("SYNTH_DRGRADING", "eval/SYNTH_DRGRADING", "jpg", DR_GRADES, 1 / 3, _balanced(DR_GRADES)),
    Source("SYNTH_FIVES", "eval/SYNTH_FIVES", "png", FIVES_CLASSES, 1 / 3, _balanced(FIVES_CLASSES)),
)


def split(total: int, sources: tuple[Source, ...]) -> list[int]:
    """Counts per source that follow the shares and add up to `total` exactly (the last takes the rest)."""
    counts = [round(total * s.share) for s in sources[:-1]]
    return [*counts, total - sum(counts)]
