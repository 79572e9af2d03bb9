"""One full fp32 state dict from a DeepSpeed checkpoint of any ZeRO stage, read without trusting pickles.

    state_dict = load_model_state_dict("runs/demo")            # RUN_DIR: uses RUN_DIR/checkpoints/latest
    state_dict = load_model_state_dict("runs/demo/checkpoints")                 # a folder with `latest`
    state_dict = load_model_state_dict("runs/demo/checkpoints/step00000060")    # one tag folder
    config_yaml = find_run_config("runs/demo/checkpoints/step00000060")         # RUN_DIR/config.yaml

Keys are the model's own parameter and buffer names (`vision_model.model.…`, `logit_scale`, …), as
`RetinaCLIP.state_dict()` has them; tensors are fp32 on the CPU.

ZeRO 0: the full module is in `mp_rank_00_model_states.pt` ("module"); it is read with
torch.load(weights_only=True). (A bf16 ZeRO-0 run stores bf16 module weights there; they come back as fp32
copies of those values, the fp32 master copy in the optimizer files is not used.)
ZeRO 1-3: the weights are partitioned over the optimizer files of every rank; DeepSpeed's own consolidation
(deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint) merges them.

Pickle safety: DeepSpeed's consolidation calls torch.load(weights_only=False) on every model- and
optimizer-state file, which would run any code a tampered file holds. So before handing the folder over,
every one of those files is first loaded with torch.load(weights_only=True) and only these DeepSpeed classes
allowed besides tensors and plain containers (SAFE_DEEPSPEED_GLOBALS, what the fp32 ZeRO-1/2/3 files written
by DeepSpeed 0.19.8 hold, measured with torch.serialization.get_unsafe_globals_in_checkpoint):

    deepspeed.runtime.zero.config.ZeroStageEnum        optimizer files, "zero_stage"
    deepspeed.runtime.fp16.loss_scaler.LossScaler      optimizer files, the (static) loss scaler
    deepspeed.utils.tensor_fragment.fragment_address   ZeRO-1/2 optimizer files, parameter slice addresses

A file that needs anything else is refused with CheckpointError before DeepSpeed opens it; so is a missing,
truncated or unreadable rank file, a missing `latest` tag and a checkpoint whose world size does not match
its files. The check costs one extra read of each file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import CheckpointError, find_run_config, resolve_checkpoint
from pretrain.checkpoint_files import SAFE_DEEPSPEED_GLOBALS, safe_load, verify_checkpoint

__all__ = ["CheckpointError", "SAFE_DEEPSPEED_GLOBALS", "find_run_config", "load_model_state_dict",
           "resolve_checkpoint", "safe_load"]

log = logging.getLogger("pretrain.consolidate")

ZERO0_MODEL_FILE = "mp_rank_00_model_states.pt"


def _rank_files(tag_dir: Path, kind: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for f in tag_dir.glob(f"*zero_pp_rank_*_mp_rank_00_{kind}_states.pt"):
        m = re.fullmatch(rf"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_{kind}_states\.pt", f.name)
        if m:
            found[int(m[1])] = f
    return found


def _expect_ranks(tag_dir: Path, kind: str, world: int) -> list[Path]:
    files = _rank_files(tag_dir, kind)
    missing = [r for r in range(world) if r not in files]
    if missing:
        raise CheckpointError(f"{str(tag_dir)!r} was written by {world} ranks but the {kind}-state files of "
                              f"rank(s) {missing} are missing")
    extra = sorted(set(files) - set(range(world)))
    if extra:
        raise CheckpointError(f"{str(tag_dir)!r} has {kind}-state files of ranks {extra} beyond its world size "
                              f"{world} (mixed checkpoints?)")
    return [files[r] for r in range(world)]


def _zero_stage(states: dict[str, Any], where: Path) -> int:
    try:
        return int((states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0))
    except (AttributeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(where)!r}: unreadable ds_config") from err


def _fp32(state_dict: dict[str, Any], where: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{str(where)!r}: entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().cpu()
        out[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    return out


def load_model_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The full model state dict (fp32 CPU tensors) of a ZeRO 0-3 DeepSpeed checkpoint; see the module doc."""
    tag_dir = resolve_checkpoint(checkpoint)
    verify_checkpoint(tag_dir)  # manifest and a pickle-safe read of every file, before DeepSpeed opens any
    zero0 = tag_dir / ZERO0_MODEL_FILE
    model_files3 = _rank_files(tag_dir, "model")
    if zero0.is_file():
        first = zero0
    elif 0 in model_files3:
        first = model_files3[0]
    elif model_files3:
        raise CheckpointError(f"{str(tag_dir)!r}: the model-state file of rank 0 is missing")
    else:
        raise CheckpointError(f"{str(tag_dir)!r} holds no DeepSpeed model-state file")
    states = safe_load(first)
    if not isinstance(states, dict) or "module" not in states:
        raise CheckpointError(f"{str(first)!r} is not a DeepSpeed model-state file (no 'module' entry)")
    stage = _zero_stage(states, first)
    if stage == 0:
        if not zero0.is_file():
            raise CheckpointError(f"{str(tag_dir)!r}: ZeRO-0 checkpoint without {ZERO0_MODEL_FILE}")
        return _fp32(states["module"], zero0)
    if stage not in (1, 2, 3):
        raise CheckpointError(f"{str(first)!r}: unknown ZeRO stage {stage}")
    world = int(states.get("dp_world_size") or 0)
    if world < 1:
        raise CheckpointError(f"{str(first)!r}: no data-parallel world size recorded")
    files = _expect_ranks(tag_dir, "optim", world)
    files += _expect_ranks(tag_dir, "model", world) if stage == 3 else [zero0]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):  # prints, tqdm bars
            state_dict = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except Exception as err:
        raise CheckpointError(f"DeepSpeed could not consolidate {str(tag_dir)!r}: {type(err).__name__}: {err}") \
            from err
    finally:
        if chatter.getvalue():
            log.debug("zero_to_fp32: %s", chatter.getvalue().strip())
    return _fp32(state_dict, tag_dir)
