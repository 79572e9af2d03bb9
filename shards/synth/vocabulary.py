"""Canonical category names and a forgiving matcher from free text (messy labels, captions) to them."""

from __future__ import annotations

import re
from typing import Iterable

NORMAL = "normal"
DR_GRADES = (
    "no diabetic retinopathy",
    "mild diabetic retinopathy",
    "moderate diabetic retinopathy",
    "severe diabetic retinopathy",
    "proliferative diabetic retinopathy",
)
DR = "diabetic retinopathy"
GLAUCOMA = "glaucoma"
NO_GLAUCOMA = "no glaucoma"
CUPPING = "increased cup disc"
AMD = "age related macular degeneration"
LESIONS = (
    "microaneurysms",
    "hemorrhages",
    "hard exudates",
    "soft exudates",
    "drusen",
    "neovascularization",
    "macular edema",
)
CANONICAL = (NORMAL, *DR_GRADES, DR, GLAUCOMA, NO_GLAUCOMA, CUPPING, AMD, *LESIONS)

GLAUCOMA_CLASSES = (GLAUCOMA, NO_GLAUCOMA)
FIVES_CLASSES = (AMD, DR, GLAUCOMA, NORMAL)

# Substring -> canonical name. Matching takes the longest substring first and removes it from the
# text, so "no glaucoma" is not also read as "glaucoma" and "mild diabetic retinopathy" not as "diabetic retinopathy".
_ALIASES: dict[str, str] = {name: name for name in CANONICAL}
_ALIASES.update({
    "non-proliferative diabetic retinopathy": "moderate diabetic retinopathy",
    "non proliferative diabetic retinopathy": "moderate diabetic retinopathy",
    "nonproliferative diabetic retinopathy": "moderate diabetic retinopathy",
    "age-related macular degeneration": AMD,
    "microaneurysm": "microaneurysms",
    "micro-aneurysm": "microaneurysms",
    "hemorrhage": "hemorrhages",
    "haemorrhage": "hemorrhages",
    "hard exudate": "hard exudates",
    "soft exudate": "soft exudates",
    "cotton wool": "soft exudates",
    "cotton-wool": "soft exudates",
    "neovascularisation": "neovascularization",
    "neovascular": "neovascularization",
    "macular oedema": "macular edema",
    "cup disc": CUPPING,
    "cup-disc": CUPPING,
    "increased cup": CUPPING,
    "glaucomatous": GLAUCOMA,
})
_BY_LENGTH = sorted(_ALIASES, key=len, reverse=True)


def recognise(texts: Iterable[str]) -> set[str]:
    """Canonical names found in the texts; unknown words are ignored (they render as a normal eye)."""
    found: set[str] = set()
    for text in texts:
        rest = re.sub(r"[\s_]+", " ", str(text).lower())
        for alias in _BY_LENGTH:
            if alias in rest:
                found.add(_ALIASES[alias])
                rest = rest.replace(alias, "|")
    return found
