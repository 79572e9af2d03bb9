"""The one training loop: resume, guarded steps, per-interval logs and TensorBoard, checkpoints.

    loop = TrainingLoop(engine, optimizer, cfg.run)          # resumes from RUN_DIR/checkpoints/latest (run.resume)
    batches = iter(make_loader(..., step=loop.start_step))
    summary = loop.run(lambda step: next(batches), loss_fn)  # loss_fn(model, batch) -> {"loss": total, ...}

In the style of torchtitan: one console line per `run.log_every` steps on rank 0

    step 10 | loss 2.7713 | contrastive 2.7713 | cos img/txt contrastive 0.31/0.42 | lr 5.000e-04 | samples/s 41.3 |
      mem 812 MiB | data lost 0                                                     (one line, wrapped here)

(plus the caller's extra scalars, e.g. the logit scale; mem is the peak RSS of the process on CPU,
torch.cuda.max_memory_allocated on CUDA), the same scalars in TensorBoard under RUN_DIR/tb (`train/<key>`) and as
one JSON line in RUN_DIR/metrics.jsonl, a checkpoint every `run.save_every` steps and at the end
(pretrain.checkpoint). Entries of loss_fn's dict named `cos_image/<term>` and `cos_text/<term>` are the collapse
diagnostic (pretrain.objectives.base; only `loss` is minimised): the console shows them together as
`cos img/txt <term> image/text` ("-" for a side not recorded), TensorBoard and metrics.jsonl under their full keys.
Like every entry they are interval means of this rank's values (rank 0 logs its own rows), a NaN (a term over
fewer than 2 rows) left out.

A step whose loss is non-finite on any rank is skipped (an error line is logged, weights and optimizer state stay
untouched) and training goes on with the next batch. The data pipeline's account of lost samples (a batch's
`data_loss` entry, pretrain.data.Collate) is merged over workers and ranks at every log line (every 10 steps
when run.log_every is 0): the count is logged, the summary names the damaged shards, and the run stops with
DataLossError once the loss exceeds the caller's `max_lost_fraction` (pretrain.data_loss).

`retina-pretrain train` (pretrain.train) and `retina-pretrain text-pretrain` (pretrain.text_pretrain) are
short set-ups around this loop; loss_fn gets the bare model (objectives never see the DeepSpeed engine).
"""

from __future__ import annotations

import json
import logging
import math
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
from pretrain.folder_groups import folder_leaders, shares_one_folder
from pretrain.data_loss import DataLossError, describe_losses, lost_fraction, merge
from pretrain.engine import NonFiniteLoss, parameters_finite, train_step

__all__ = ["CheckpointHook", "NonFiniteWeights", "RunConfig", "TrainingLoop", "rank_world", "seed_everything"]

log = logging.getLogger("pretrain.loop")

CheckpointHook = Callable[[int, Path], None]
DIAGNOSTICS = ("cos_image/", "cos_text/")  # key prefixes of the collapse diagnostic (pretrain.objectives.base)
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
    """auto: continue from RUN_DIR/checkpoints/latest if present (else from run.remote's newest complete
    checkpoint, if set); none: start fresh; or a checkpoint path."""
    remote: str | None = None
    """Object storage prefix (s3://bucket/prefix/run) that every complete checkpoint is uploaded to, with the
    run's config.yaml; its `latest` moves only after the tag's last file. Credentials as for shard sets."""
    save_initial: bool = False
    """A run that starts fresh also saves step 0, the weights before any update (e.g. to export or evaluate
    what model.init_from loaded)."""


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


def _gather_json(obj: Any, device: torch.device) -> list[Any]:
    """Every rank's JSON-able object, on every rank (as JSON bytes, so nothing received is unpickled)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.long, device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return [json.loads(bytes(g[: int(n.item())].tolist())) for g, n in zip(gathered, sizes)]


def _interval_mean(values: list[float]) -> float | None:
    """Mean of an interval's finite values; None if it has none (a diagnostic that was NaN at every step)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _collapse_part(scalars: dict[str, float]) -> str | None:
    """`cos img/txt contrastive 0.12/0.34, caption 0.56/-`: each term's collapse diagnostic, or None if none."""
    terms = dict.fromkeys(k.split("/", 1)[1] for k in scalars if k.startswith(DIAGNOSTICS))
    if not terms:
        return None
    side = lambda key: f"{scalars[key]:.2f}" if key in scalars else "-"  # noqa: E731
    return "cos img/txt " + ", ".join(f"{t} {side('cos_image/' + t)}/{side('cos_text/' + t)}" for t in terms)


class NonFiniteWeights(RuntimeError):
    """The weights themselves turned NaN/inf (a finite loss with non-finite gradients): every later step would be
    skipped, so the run stops; the message names the step and the checkpoint to resume from."""


class _Window:
    """Loss terms and sample counts since the last log line, and the newest data-loss account of each worker."""

    def __init__(self) -> None:
        self.losses_by_worker: dict[int, dict] = {}
        self.reset()

    def reset(self) -> None:
        self.terms: dict[str, list[float]] = {}
        self.samples, self.start = 0, time.perf_counter()

    def note_data_losses(self, batch: Any) -> None:
        for part in batch if isinstance(batch, (list, tuple)) else (batch,):
            if isinstance(part, dict) and "data_loss" in part:
                worker, snapshot = part["data_loss"]
                self.losses_by_worker[int(worker)] = snapshot

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
        self.leaders = folder_leaders(self.run_dir)
        if not shares_one_folder(self.leaders) and not run.remote:
            apart = sorted(r for r, leader in enumerate(self.leaders) if leader != 0)
            raise ValueError(f"run.dir {str(self.run_dir)!r} is not one folder shared by every rank (ranks "
                             f"{apart} see another folder than rank 0): put it on storage every node mounts, or "
                             "set run.remote (object storage) to hold the complete checkpoints")
        state = load_checkpoint(engine, self.run_dir, run.resume, run.remote, self.leaders)
        self.resumed = state is not None
        self.start_step = int(state["step"]) if state else 0

    def say(self, line: str) -> None:
        """Print on rank 0 only."""
        if self.rank == 0:
            print(line, flush=True)

    def run(self, next_batch: Callable[[int], Any], loss_fn: LossFn,
            extra_scalars: Callable[[], dict[str, float]] | None = None,
            on_checkpoint: CheckpointHook | None = None, max_lost_fraction: float = 1.0) -> dict[str, Any]:
        """Train; returns {"step", "start_step", "loss", "losses", "skipped" (non-finite steps), "data_lost",
        "data_losses" (the merged account of pretrain.data_loss)}. `on_checkpoint(step, path)` runs on every rank
        after each complete checkpoint. Raises DataLossError once the data lost exceed `max_lost_fraction`."""
        writer = self._writer()
        window, device, losses, skipped = _Window(), self.engine.device, [], 0
        step, saved_at = self.start_step, self.start_step if self.resumed else -1
        check_every, data = self.run_cfg.log_every or 10, merge([])
        guarded = lambda engine, batch: loss_fn(engine.module, batch)  # noqa: E731  objectives get the bare model
        if self.run_cfg.save_initial and not self.resumed:
            self._checkpoint(0, on_checkpoint)
        try:
            for step in range(self.start_step + 1, self.run_cfg.steps + 1):
                batch = _to_device(next_batch(step), device)
                window.note_data_losses(batch)
                if step % check_every == 0:  # collective: every rank checks at the same steps
                    data = self._data_losses(window, max_lost_fraction)
                try:
                    terms = train_step(self.engine, guarded, batch)
                except NonFiniteLoss as err:
                    skipped += 1
                    log.error("step %d skipped: %s", step, err)
                    self.say(f"step {step} | skipped: {err}")
                    self._stop_if_weights_broke(err.step)
                    continue
                losses.append(terms["loss"])
                window.add(terms, _batch_size(batch) * self.world_size)
                if self.run_cfg.log_every > 0 and step % self.run_cfg.log_every == 0:
                    self._log(step, window, writer, extra_scalars, lost_fraction(data)[0])
                if self.run_cfg.save_every > 0 and step % self.run_cfg.save_every == 0:
                    self._checkpoint(step, on_checkpoint)
                    saved_at = step
            if saved_at != step and step > self.start_step:
                self._checkpoint(step, on_checkpoint)
        finally:
            if writer is not None:
                writer.close()
        data = self._data_losses(window, max_lost_fraction, final=True)
        return {"step": step, "start_step": self.start_step, "loss": losses[-1] if losses else None,
                "losses": losses, "skipped": skipped, "data_lost": lost_fraction(data)[0], "data_losses": data}

    def _stop_if_weights_broke(self, optimizer_step: int) -> None:
        """A non-finite loss from non-finite weights would repeat at every step: stop instead (collective)."""
        if parameters_finite(self.engine.module):
            return
        latest = self.run_dir / "checkpoints" / "latest"
        resume = f"checkpoints/{latest.read_text().strip()}" if latest.is_file() else "no checkpoint yet"
        raise NonFiniteWeights(f"the weights are NaN/inf after optimizer step {optimizer_step} (a finite loss gave "
                               f"non-finite gradients), so every later step would be skipped; stopped. Resume from "
                               f"{resume} in {self.run_dir} with a lower engine.lr or engine.grad_clip")

    def _data_losses(self, window: _Window, max_lost_fraction: float, final: bool = False) -> dict[str, Any]:
        """The data losses merged over workers and ranks (collective); raises DataLossError past the limit."""
        data = merge(_gather_json(merge(window.losses_by_worker.values()), self.engine.device))
        lost, total = lost_fraction(data)
        if lost > max_lost_fraction * total:
            saved = "the last checkpoint is kept; " if final else ""
            raise DataLossError(f"data: {describe_losses(data)}, more than data.max_lost_fraction="
                                f"{max_lost_fraction}; {saved}repair or rebuild the shards (`retina-shards verify "
                                "DIR` names every damaged one), or raise the limit")
        if final and lost:
            self.say(f"data: {describe_losses(data)}; these samples were not trained on")
        return data

    def _writer(self) -> Any:
        if self.rank != 0:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.start_step + 1)

    def _log(self, step: int, window: _Window, writer: Any, extra: Callable[[], dict[str, float]] | None,
             data_lost: int) -> None:
        device = self.engine.device
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        means = {k: _interval_mean(v) for k, v in window.terms.items()}
        scalars = {k: m for k, m in means.items() if m is not None}
        terms = [k for k in scalars if not k.startswith(DIAGNOSTICS)]
        collapse = _collapse_part(scalars)
        scalars["lr"] = float(self.optimizer.param_groups[0]["lr"])
        extras = extra() if extra is not None else {}
        scalars.update(extras)
        scalars["samples_per_s"] = window.samples / elapsed
        scalars["mem_mib"] = _peak_mem_mib(device)
        scalars["data_lost"] = float(data_lost)
        if self.rank == 0:
            parts = [f"step {step}"] + [f"{k} {scalars[k]:.4f}" for k in terms] + ([collapse] if collapse else [])
            parts += [f"lr {scalars['lr']:.3e}"] + [f"{k} {v:.2f}" for k, v in extras.items()]
            parts += [f"samples/s {scalars['samples_per_s']:.1f}", f"mem {scalars['mem_mib']:.0f} MiB",
                      f"data lost {data_lost}"]
            print(" | ".join(parts), flush=True)
            for k, v in scalars.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.flush()
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")  # a resumed run appends; readers keep the last
        window.reset()

    def _checkpoint(self, step: int, hook: CheckpointHook | None) -> None:
        path = save_checkpoint(self.engine, self.run_dir, step, remote=self.run_cfg.remote, leaders=self.leaders)
        if hook is not None:
            hook(step, path)
