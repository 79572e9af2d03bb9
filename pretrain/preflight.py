"""What a training run needs from the machine, checked before anything heavy starts.

    check_train_inputs(cfg)   # PreflightError: "--run.dir runs/x: exists and is a file, not a folder"

pretrain.config_checks refuses values that make no sense anywhere; this module asks whether this machine can
carry them out: the run folder can be written, run.remote's bucket answers, the shard sets exist and have the
split, the objective accepts its options, model.init_from is a complete safetensors file or a run with a
checkpoint. Every answer is cheap (index files, headers, one listing, no image, no model), so a typo costs a
second instead of a model build and a DeepSpeed start. Each message names the option it is about.
`retina-pretrain train` runs it (on every rank under a launcher); the Ray launcher does not, as its workers may
see other disks than the node that submits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.init_weights import (HFImportError, is_run_checkpoint, run_checkpoint, safetensors_problem,
                                   weights_file)
from pretrain.objectives import build_objective
from pretrain.remote_checkpoint import CHECKPOINTS
from shards.index import shard_urls
from shards.output_paths import check_output_dir
from shards.storage import StorageError, join, list_sizes, local_or_url

__all__ = ["PreflightError", "check_remote", "check_shard_set", "check_train_inputs"]


class PreflightError(ValueError):
    """The run cannot start as configured; the message names the option and what is wrong."""


def check_shard_set(folder: str | Path, split: str, option: str) -> None:
    """`folder` is a shard set with at least one shard of `split`."""
    try:
        urls = shard_urls(local_or_url(folder), split)
    except (OSError, ValueError) as err:  # no or unreadable index.json
        raise PreflightError(f"{option}: {err}") from None
    if not urls:
        raise PreflightError(f"{option}: {folder} has no shards for split {split!r} (data.split)")


def check_remote(remote: str) -> None:
    """run.remote can be listed: the bucket exists, credentials and endpoint work (one listing request)."""
    try:
        list_sizes(str(join(remote, CHECKPOINTS)))
    except StorageError as err:
        raise PreflightError(f"--run.remote: {err}") from None


def check_train_inputs(cfg: Any) -> None:
    """Every check above on a TrainConfig; raises PreflightError at the first problem."""
    try:
        check_output_dir(cfg.run.dir, "--run.dir")
        cfg.data.validate()
    except ValueError as err:
        raise PreflightError(str(err)) from None
    if cfg.run.remote:
        check_remote(cfg.run.remote)
    for name in ("public", "elite"):
        if (folder := getattr(cfg.data, name)) is not None:
            check_shard_set(folder, cfg.data.split, f"--data.{name}")
    try:
        build_objective(cfg.method, **cfg.objective)  # an objective is a few attributes until it meets the model
    except (TypeError, ValueError) as err:
        raise PreflightError(f"--objective ({cfg.method}): {err}") from None
    if cfg.model.init_from:
        try:
            if is_run_checkpoint(cfg.model.init_from):  # a run of ours: it must have a checkpoint to start from
                run_checkpoint(cfg.model.init_from)
                return
            path = weights_file(cfg.model.init_from)
        except HFImportError as err:
            raise PreflightError(str(err)) from None
        if problem := safetensors_problem(path):
            raise PreflightError(f"--model.init_from {path}: {problem}")
