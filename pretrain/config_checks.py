"""Values of a training config that make no sense, refused when the config is built, each naming its key.

    check_train_config(cfg)   # ValueError: "run.steps must be >= 1, got -5"

TrainConfig and TextPretrainConfig call these from `__post_init__`, so a command line, a --config file, a run's
saved config.yaml and a Ray job's config are all refused while they are parsed: before a model is built or
DeepSpeed starts, not minutes later with a traceback from deep inside either. Types and Literal choices are
jsonargparse's; what needs the machine (a writable run folder, existing shard sets) is pretrain.preflight's.
Only the standard library is imported here (the objectives registry when a method is checked).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from shards.storage import is_url

__all__ = ["check_data", "check_engine", "check_method", "check_run", "check_train_config"]


def _at_least(key: str, value: float, low: float) -> None:
    if not value >= low or not math.isfinite(value):  # `not >=` also refuses nan
        raise ValueError(f"{key} must be >= {low}, got {value}")


def _within(key: str, value: float, low: float, high: float, *, open_high: bool = False) -> None:
    if not (low <= value < high if open_high else low <= value <= high):
        raise ValueError(f"{key} must be in [{low}, {high}{')' if open_high else ']'}, got {value}")


def check_run(run: Any) -> None:
    """run.*: at least one step; log_every and save_every >= 0 (0 turns periodic logging / saving off); remote a URL
    (its atomicity is object storage's: a local folder would show half-written files)."""
    _at_least("run.steps", run.steps, 1)
    _at_least("run.log_every", run.log_every, 0)
    _at_least("run.save_every", run.save_every, 0)
    remote = getattr(run, "remote", None)
    if remote is not None and not is_url(remote):
        raise ValueError(f"run.remote must be an object storage URL (s3://bucket/prefix), got {remote!r}")


def check_data(data: Any) -> None:
    """data.*: the numbers only (whether data.public / data.elite exist is pretrain.preflight's)."""
    for key in ("batch_size", "elite_batch_size", "image_size", "max_text_len"):
        if getattr(data, key) is not None:  # elite_batch_size null: the same as batch_size
            _at_least(f"data.{key}", getattr(data, key), 1)
    _at_least("data.workers", data.workers, 0)
    _at_least("data.shuffle_buffer", data.shuffle_buffer, 0)
    _within("data.elite_fraction", data.elite_fraction, 0.0, 1.0)


def check_engine(engine: Any) -> None:
    """engine.*: a ZeRO stage DeepSpeed has, positive sizes and rates, AdamW constants in their ranges."""
    if engine.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"engine.zero_stage must be 0, 1, 2 or 3, got {engine.zero_stage}")
    _at_least("engine.micro_batch_size", engine.micro_batch_size, 1)
    _at_least("engine.grad_accum_steps", engine.grad_accum_steps, 1)
    _at_least("engine.grad_clip", engine.grad_clip, 0)
    _at_least("engine.weight_decay", engine.weight_decay, 0)
    _at_least("engine.warmup_steps", engine.warmup_steps, 0)
    if engine.total_steps is not None:
        _at_least("engine.total_steps", engine.total_steps, 1)
    if not (engine.lr > 0 and math.isfinite(engine.lr)):
        raise ValueError(f"engine.lr must be > 0, got {engine.lr}")
    if not (engine.eps > 0 and math.isfinite(engine.eps)):
        raise ValueError(f"engine.eps must be > 0, got {engine.eps}")
    for i, beta in enumerate(engine.betas):
        _within(f"engine.betas[{i}]", beta, 0.0, 1.0, open_high=True)
    _within("engine.min_lr_ratio", engine.min_lr_ratio, 0.0, 1.0)


def check_method(method: str, options: Mapping[str, Any]) -> None:
    """A registered method, and only option names its objective accepts (their values are checked when built)."""
    from pretrain.objectives import OBJECTIVES

    if method not in OBJECTIVES:
        raise ValueError(f"method {method!r} is unknown; valid methods: {', '.join(sorted(OBJECTIVES))}")
    params = inspect.signature(OBJECTIVES[method]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the objective reads **options itself (keepfit_v2 names moved options)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"objective: {method} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(params) or 'none'}")


def check_train_config(cfg: Any) -> None:
    """Every check above on a TrainConfig, plus finite loss weights."""
    check_run(cfg.run)
    check_data(cfg.data)
    check_engine(cfg.engine)
    check_method(cfg.method, cfg.objective)
    for term, weight in cfg.loss_weights.items():
        if not math.isfinite(weight):
            raise ValueError(f"loss_weights.{term} must be a finite number, got {weight}")
