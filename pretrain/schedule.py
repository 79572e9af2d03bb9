"""Learning-rate schedules, stepped once per optimizer step (not per micro-batch).

    scheduler = warmup_cosine(optimizer, warmup_steps=100, total_steps=1000, min_lr_ratio=0.0)

The factor multiplies each param group's base lr:
    step < warmup_steps:  (step + 1) / warmup_steps      (the first step already trains, at lr / warmup_steps)
    after warmup:         min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * progress)),
                          progress = (step - warmup_steps) / (total_steps - warmup_steps), clamped to [0, 1]
so the peak lr is reached at step warmup_steps - 1 and min_lr_ratio * lr at step total_steps and beyond.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine", "warmup_cosine_factor"]


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The lr multiplier at optimizer step `step` (0-based); see the module docstring."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup then cosine decay to min_lr_ratio * lr, as a LambdaLR (its state_dict is checkpointable
    because the lambda is a partial of a module-level function, not a closure)."""
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {warmup_steps} and {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(optimizer, partial(warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps,
                                       min_lr_ratio=min_lr_ratio))
