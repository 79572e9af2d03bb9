"""Pretraining objectives: method name -> Objective, and the weighted sum of their loss terms.

    objective = build_objective("flair", use_multi_hot=False)
    terms = objective(model, batch)                       # or objective(model, (public, elite))
    loss = weighted_total(terms, {"contrastive": 1.0})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pretrain.objectives.base import Objective, as_batch, embed, merge_batches
from pretrain.objectives.clip import ClipObjective
from pretrain.objectives.flair import FlairObjective
from pretrain.objectives.keepfit_v1 import KeepFITV1Objective
from pretrain.objectives.keepfit_v2 import KeepFITV2Objective
from pretrain.objectives.vilref import ViLReFObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "clip": ClipObjective,
    "flair": FlairObjective,
    "keepfit_v1": KeepFITV1Objective,
    "keepfit_v2": KeepFITV2Objective,
    "vilref": ViLReFObjective,
}


def build_objective(method: str, **options: Any) -> Objective:
    """The objective of a method, built with its keyword options."""
    try:
        cls = OBJECTIVES[method]
    except KeyError:
        raise ValueError(f"unknown objective method {method!r}; known methods: {', '.join(sorted(OBJECTIVES))}") \
            from None
    return cls(**options)


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Sum of the terms times their weights (missing weight = 1.0). A weight for a term the objective does
    not produce is an error: it is almost always a typo in the config that would otherwise be ignored."""
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"weights for unknown loss terms {unknown}; the objective produces {sorted(terms)}")
    if not terms:
        raise ValueError("no loss terms to sum")
    return sum(float(weights.get(name, 1.0)) * value for name, value in terms.items())


__all__ = ["OBJECTIVES", "ClipObjective", "FlairObjective", "Objective", "as_batch", "build_objective", "embed",
           "merge_batches", "weighted_total"]
