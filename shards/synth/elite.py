"""The MM-Retinal-like "elite" set: book figures with lettered panels, several panels per person.

A figure is one person (one case); its panels may mix modalities and eyes, and later panels, or a
following figure about the same person, say "Same person as Figure 1-1A" like the book does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODALITIES = ("CFP", "FFA", "OCT")
SHARES = (0.6, 0.25, 0.15)
CASES: tuple[tuple[tuple[str, ...], float], ...] = (
    (("normal",), 0.14),
    (("mild diabetic retinopathy",), 0.07),
    (("moderate diabetic retinopathy",), 0.1),
    (("severe diabetic retinopathy",), 0.08),
    (("proliferative diabetic retinopathy",), 0.1),
    (("moderate diabetic retinopathy", "macular edema"), 0.08),
    (("severe diabetic retinopathy", "macular edema"), 0.04),
    (("glaucoma",), 0.1),
    (("increased cup disc",), 0.04),
    (("age related macular degeneration",), 0.12),
    (("drusen",), 0.06),
    (("macular edema",), 0.07),
)


@dataclass(frozen=True)
class Panel:
    modality: str
    index: int  # position among this modality's panels
    file: str  # e.g. figure01-05B.jpg
    categories: tuple[str, ...]
    eye: str
    same_as: str | None  # figure label of an earlier panel of the same person, e.g. '1-1A'


def split(total: int) -> dict[str, int]:
    cfp, ffa = round(total * SHARES[0]), round(total * SHARES[1])
    return {"CFP": cfp, "FFA": ffa, "OCT": total - cfp - ffa}


def plan(total: int, rng: np.random.Generator) -> list[Panel]:
    """Lay `total` panels out over chapters and figures, with modality counts from `split`."""
    remaining = split(total)
    counters = dict.fromkeys(MODALITIES, 0)
    weights = np.array([w for _, w in CASES])
    panels: list[Panel] = []
    chapter, figure, chapter_size = 1, 0, int(rng.integers(6, 13))
    previous: tuple[tuple[str, ...], str] | None = None  # (case, label of its first panel)
    while sum(remaining.values()):
        figure += 1
        if figure > chapter_size:
            chapter, figure, chapter_size = chapter + 1, 1, int(rng.integers(6, 13))
        if previous and rng.random() < 0.15:  # this figure follows up the person of the last one
            case, same_as = previous
        else:
            case, same_as = CASES[int(rng.choice(len(CASES), p=weights / weights.sum()))][0], None
        first_eye = str(rng.choice(("right", "left")))
        for letter in "ABCD"[:int(rng.integers(1, 5))]:
            left = [m for m in MODALITIES if remaining[m]]
            if not left:
                break
            modality = str(rng.choice(left, p=np.array([remaining[m] for m in left]) / sum(remaining.values())))
            eye = first_eye if rng.random() < 0.7 else ("left" if first_eye == "right" else "right")
            label = f"{chapter}-{figure}{letter}"
            refer = same_as
            if letter != "A":  # later panels mention the figure's first panel only now and then
                refer = (same_as or f"{chapter}-{figure}A") if rng.random() < 0.4 else None
            panels.append(Panel(modality, counters[modality], f"figure{chapter:02d}-{figure:02d}{letter}.jpg",
                                case, eye, refer))
            counters[modality] += 1
            remaining[modality] -= 1
            if letter == "A":
                previous = (case, label)
    return panels
