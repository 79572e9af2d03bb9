"""The one training loop: resume, guarded steps, per-interval logs and TensorBoard, checkpoints.

    loop = TrainingLoop(engine, optimizer, cfg.run)          # resumes from RUN_DIR/checkpoints/latest (run.resume)
    batches = iter(make_loader(..., step=loop.start_step))
    summary = loop.run(lambda step: next(batches), loss_fn)  # loss_fn(model, batch) -> {"loss": total, ...}

In the style of torchtitan: one console line per `run.log_every` steps on rank 0

    step 10 | loss 2.7713 | contrastive 2.7713 | lr 5.000e-04 | samples/s 41.3 | mem 812 MiB | data skipped 0

(plus the caller's extra scalars, e.g. the logit scale; mem is the peak RSS of the process on CPU,
torch.cuda.max_memory_allocated on CUDA), the same scalars in TensorBoard under RUN_DIR/tb and as one JSON line
in RUN_DIR/metrics.jsonl, a checkpoint every `run.save_every` steps and at the end (pretrain.checkpoint). A
step whose loss is non-finite on any rank is skipped (an error line is logged, weights and optimizer state stay
untouched) and training goes on with the next batch. Samples the data pipeline skipped (a batch's
`data_skipped` entry, pretrain.data.Collate) are summed over workers and ranks and logged.

`retina-pretrain train` (pretrain.train) and `retina-pretrain text-pretrain` (pretrain.text_pretrain) are
short set-ups around this loop; loss_fn gets the bare model (objectives never see the DeepSpeed engine).
"""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.engine import NonFiniteLoss, train_step

__all__ = ["CheckpointHook", "RunConfig", "TrainingLoop", "rank_world", "seed_everything"]

log = logging.getLogger("pretrain.loop")

CheckpointHook = Callable[[int, Path], None]
LossFn = Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]]


@dataclass
class RunConfig:
    dir: str = "runs/demo"
    """Run folder: config.yaml, checkpoints/ and tb/ (TensorBoard events) go here."""
    seed: int = 0
    """Seed of Python, NumPy and torch (model initialisation); data randomness is seeded by data.seed."""
    steps: int = 100
    """Train until this optimizer step (a resumed run continues up to it)."""
    log_every: int = 10
    """Print one console line and write TensorBoard scalars every this many steps."""
    save_every: int = 50
    """Save a checkpoint every this many steps (and always at the last step); 0 saves only at the end."""
    resume: str = "auto"
    """auto: continue from RUN_DIR/checkpoints/latest if present; none: start fresh; or a checkpoint path."""


def rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], (dict, torch.Tensor)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    if isinstance(batch, (list, tuple)):  # paired (public, elite)
        return sum(_batch_size(b) for b in batch)
    first = batch["image"] if "image" in batch else batch["input_ids"]
    return int(first.shape[0])


def _peak_mem_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sum_over_ranks(value: float, device: torch.device) -> float:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t)
    return float(t.item())


class _Window:
    """Loss terms and sample counts since the last log line, and the newest skip count of each data worker."""

    def __init__(self) -> None:
        self.skips_by_worker: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        self.terms: dict[str, list[float]] = {}
        self.samples, self.start = 0, time.perf_counter()

    def note_skips(self, batch: Any) -> None:
        for part in batch if isinstance(batch, (list, tuple)) else (batch,):
            worker, count = part.get("data_skipped", (0, 0))
            self.skips_by_worker[int(worker)] = max(self.skips_by_worker.get(int(worker), 0), int(count))

    def add(self, terms: dict[str, float], samples: int) -> None:
        for k, v in terms.items():
            self.terms.setdefault(k, []).append(v)
        self.samples += samples


class TrainingLoop:
    """Runs optimizer steps start_step + 1 .. run.steps on an engine (see the module doc); call on ALL ranks."""

    def __init__(self, engine: Any, optimizer: Any, run: RunConfig) -> None:
        self.engine, self.optimizer, self.run_cfg = engine, optimizer, run
        self.run_dir = Path(run.dir)
        self.rank, self.world_size = rank_world()
        state = load_checkpoint(engine, self.run_dir, run.resume)
        self.resumed = state is not None
        self.start_step = int(state["step"]) if state else 0

    def say(self, line: str) -> None:
        """Print on rank 0 only."""
        if self.rank == 0:
            print(line, flush=True)

    def run(self, next_batch: Callable[[int], Any], loss_fn: LossFn,
            extra_scalars: Callable[[], dict[str, float]] | None = None,
            on_checkpoint: CheckpointHook | None = None) -> dict[str, Any]:
        """Train; returns {"step", "start_step", "loss", "losses", "skipped" (non-finite steps), "data_skipped"}.
        `on_checkpoint(step, path)` runs on every rank after each complete checkpoint."""
        writer = self._writer()
        window, device, losses, skipped = _Window(), self.engine.device, [], 0
        step, saved_at = self.start_step, self.start_step if self.resumed else -1
        guarded = lambda engine, batch: loss_fn(engine.module, batch)  # noqa: E731  objectives get the bare model
        try:
            for step in range(self.start_step + 1, self.run_cfg.steps + 1):
                batch = _to_device(next_batch(step), device)
                window.note_skips(batch)
                try:
                    terms = train_step(self.engine, guarded, batch)
                except NonFiniteLoss as err:
                    skipped += 1
                    log.error("step %d skipped: %s", step, err)
                    self.say(f"step {step} | skipped: {err}")
                    continue
                losses.append(terms["loss"])
                window.add(terms, _batch_size(batch) * self.world_size)
                if self.run_cfg.log_every > 0 and step % self.run_cfg.log_every == 0:
                    self._log(step, window, writer, extra_scalars)
                if self.run_cfg.save_every > 0 and step % self.run_cfg.save_every == 0:
                    self._checkpoint(step, on_checkpoint)
                    saved_at = step
            if saved_at != step and step > self.start_step:
                self._checkpoint(step, on_checkpoint)
        finally:
            if writer is not None:
                writer.close()
        data_skipped = _sum_over_ranks(sum(window.skips_by_worker.values()), device)
        if data_skipped:
            self.say(f"data pipeline skipped {data_skipped:.0f} bad samples (logged above with their keys)")
        return {"step": step, "start_step": self.start_step, "loss": losses[-1] if losses else None,
                "losses": losses, "skipped": skipped, "data_skipped": int(data_skipped)}

    def _writer(self) -> Any:
        if self.rank != 0:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.start_step + 1)

    def _log(self, step: int, window: _Window, writer: Any, extra: Callable[[], dict[str, float]] | None) -> None:
        device = self.engine.device
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        scalars = {k: float(np.mean(v)) for k, v in window.terms.items()}
        scalars["lr"] = float(self.optimizer.param_groups[0]["lr"])
        extras = extra() if extra is not None else {}
        scalars.update(extras)
        scalars["samples_per_s"] = window.samples / elapsed
        scalars["mem_mib"] = _peak_mem_mib(device)
        scalars["data_skipped"] = _sum_over_ranks(sum(window.skips_by_worker.values()), device)
        if self.rank == 0:
            parts = [f"step {step}"] + [f"{k} {scalars[k]:.4f}" for k in window.terms]
            parts += [f"lr {scalars['lr']:.3e}"] + [f"{k} {v:.2f}" for k, v in extras.items()]
            parts += [f"samples/s {scalars['samples_per_s']:.1f}", f"mem {scalars['mem_mib']:.0f} MiB",
                      f"data skipped {scalars['data_skipped']:.0f}"]
            print(" | ".join(parts), flush=True)
            for k, v in scalars.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.flush()
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")  # a resumed run appends; readers keep the last
        window.reset()

    def _checkpoint(self, step: int, hook: CheckpointHook | None) -> None:
        path = save_checkpoint(self.engine, self.run_dir, step)
        if hook is not None:
            hook(step, path)
