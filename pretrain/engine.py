"""The DeepSpeed training engine: config, process-group set-up, engine construction and one guarded step.

    init_distributed_env()                                   # once per process, before build_engine
    engine, optimizer, scheduler = build_engine(model, EngineConfig(zero_stage=2))
    terms = train_step(engine, loss_fn, batch)               # loss_fn(engine, batch) -> {"loss": total, ...}

The model knows nothing about parallelism (pretrain.model); this module is the only place that talks to
DeepSpeed's engine API, and checkpointing lives in pretrain.checkpoint. The optimizer is torch's AdamW passed
as a client optimizer (DeepSpeed's fused CPU/GPU Adam needs op compilation, and AdamW behaves the same on every
accelerator), over pretrain.model.param_groups so norms, biases and the logit scale get no weight decay.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

import torch
from torch import nn

from pretrain.schedule import warmup_cosine

__all__ = [
    "EngineConfig",
    "NonFiniteLoss",
    "build_engine",
    "deepspeed_config",
    "ema_parameters_",
    "free_port",
    "gather_persistent_parameters",
    "gathered_parameters",
    "parameters_finite",
    "init_distributed_env",
    "loopback_interface",
    "resolve_precision",
    "train_step",
]

LossFn = Callable[[Any, Any], dict[str, torch.Tensor]]


@dataclass
class EngineConfig:
    zero_stage: int = 0
    """ZeRO stage: 0 plain data parallel, 1 shards optimizer states, 2 also gradients, 3 also parameters."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training precision; auto is bf16 on CUDA and fp32 on CPU."""
    micro_batch_size: int = 32
    """Samples per process per forward/backward pass."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (global batch = micro_batch_size * grad_accum_steps * world)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    lr: float = 5e-4
    """Peak learning rate, reached at the end of warmup."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on weight matrices (never on norms, biases or the logit scale)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas (CLIP's 0.98 for the second moment)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup."""
    total_steps: int | None = None
    """Optimizer steps of the whole run, where the cosine decay ends; null follows run.steps."""
    min_lr_ratio: float = 0.0
    """The cosine decays to min_lr_ratio * lr."""


class NonFiniteLoss(RuntimeError):
    """The loss was NaN/inf on at least one rank; the step was skipped everywhere and no weight changed."""

    def __init__(self, step: int, terms: dict[str, float]):
        self.step = step
        self.terms = terms
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        super().__init__(f"non-finite loss at optimizer step {step} on at least one rank (local terms: {shown}); "
                         "step skipped on every rank, weights unchanged")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay on weight matrices/kernels; none on biases, norms (any 0/1-d parameter),
    logit_scale and what timm lists in no_weight_decay() (position embeddings, class token)."""
    skip: set[str] = {"logit_scale"}
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            skip |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

def free_port() -> int:
    """A TCP port that is free right now (for MASTER_PORT of a local run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed_env() -> None:
    """Join (or, in one plain process, create) the process group through DeepSpeed.

    Without a launcher the torch.distributed variables are missing and DeepSpeed would fall back to MPI
    discovery (which needs mpi4py), so a single process gets RANK=0/WORLD_SIZE=1 defaults. Launchers
    (deepspeed, torchrun, Ray Train) set them and win, and the group binds where they say. gloo on CPU,
    nccl on CUDA. Idempotent."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    if not torch.cuda.is_available():
        # DeepSpeed detects the CPU accelerator itself, but says so with a warning; be explicit.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if int(os.environ["WORLD_SIZE"]) == 1:
        _init_single_process_group(backend)
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)  # adopts an existing group


def _init_single_process_group(backend: str) -> None:
    """A one-process group that listens on nothing beyond loopback.

    torch's TCP rendezvous store listens on every interface for the whole run, and gloo binds the address
    the hostname resolves to: a single process has no peer to meet, so it gets an in-memory store and its
    collective transport is pinned to the loopback interface."""
    loopback = loopback_interface()
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(),
                                         rank=int(os.environ["RANK"]), world_size=1)


def loopback_interface() -> str | None:
    """Name of the network interface holding 127.0.0.1 ('lo' on Linux, 'lo0' on macOS), None if there is none."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def resolve_precision(precision: str) -> str:
    """'auto' becomes bf16 on CUDA and fp32 on CPU (CPU bf16 matmuls are slow and gain nothing here)."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def deepspeed_config(cfg: EngineConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config for an EngineConfig; optimizer and scheduler are client objects, not here."""
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {cfg.zero_stage}")
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": resolve_precision(cfg.precision) == "bf16"},
        # torch AdamW is not on ZeRO's list of tested optimizers, but it is a plain torch optimizer.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,  # the trainer logs; keep DeepSpeed's per-step prints off
        "wall_clock_breakdown": False,
    }


def build_engine(model: nn.Module, cfg: EngineConfig) -> tuple[Any, Any, Any]:
    """Wrap the model in a DeepSpeed engine: (engine, optimizer, lr_scheduler).

    The scheduler is created by DeepSpeed from the callable below, on the optimizer it actually steps, and
    DeepSpeed steps it once per optimizer step (at each gradient-accumulation boundary)."""
    scalars = [n for n, p in model.named_parameters() if p.dim() == 0]
    if scalars:
        # DeepSpeed 0.19.8 breaks on 0-d parameters in its initial broadcast, in fp32 gradient clipping and in
        # ZeRO-3 partitioning; a shape-(1,) parameter is the same number without those problems.
        raise ValueError(f"DeepSpeed cannot handle 0-d parameters ({', '.join(scalars)}); store them with shape (1,)")
    init_distributed_env()  # also sets DS_ACCELERATOR on CPU, so it comes before importing deepspeed
    import deepspeed

    if cfg.total_steps is None:
        raise ValueError("engine.total_steps is unset (the trainer fills it from run.steps)")
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                  eps=cfg.eps)
    scheduler_fn = partial(warmup_cosine, warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps,
                           min_lr_ratio=cfg.min_lr_ratio)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                           lr_scheduler=scheduler_fn, config=deepspeed_config(cfg))
    return engine, optimizer, scheduler


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (one tiny all-reduce; every rank must call it)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def train_step(engine: Any, loss_fn: LossFn, batch: Any, total_key: str = "loss") -> dict[str, float]:
    """One micro-step: forward, then backward + engine.step() unless the loss is non-finite on any rank.

    loss_fn(engine, batch) returns a dict of loss terms whose `total_key` entry is the loss to minimise; it gets
    the engine (callable like the model; use `engine.module` for other methods) so DeepSpeed's forward
    bookkeeping (ZeRO-3 prefetch, autocast) runs. A non-finite total on any rank skips backward and step on every
    rank (the ranks agree, so no collective is left waiting), zeroes the gradients and raises NonFiniteLoss:
    weights and optimizer state are untouched. With grad_accum_steps > 1 the micro-batches already accumulated
    for this step are discarded too. Returns the terms as floats."""
    terms = loss_fn(engine, batch)
    total = terms[total_key]
    local_bad = not bool(torch.isfinite(total.detach()).all())
    if _any_rank(local_bad, total.device):
        engine.zero_grad()
        raise NonFiniteLoss(engine.global_steps, {k: float(v.detach().float().mean()) for k, v in terms.items()})
    engine.backward(total)
    engine.step()
    return {k: float(v.detach().float().mean()) for k, v in terms.items()}


# ----------------------------------------------------------------------------- ZeRO-3 parameter access
# The only DeepSpeed internals used outside engine construction; without ZeRO-3 every helper is plain torch.


def _partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_tensor")


@contextlib.contextmanager
def gathered_parameters(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Full tensors of ZeRO-3 partitioned parameters inside the block, on every rank (read-only); call on ALL
    ranks. Without ZeRO-3 the parameters are already whole and nothing happens."""
    params = list(params)
    if not any(_partitioned(p) for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def gather_persistent_parameters(module: nn.Module) -> None:
    """ZeRO-3: gather the persistent (small, always-whole) parameters of `module` that are still partitioned.
    DeepSpeed's hooks fetch only the parameters of modules whose forward runs, and a module called outside the
    engine's first forward (e.g. a momentum copy) may read some through a parent (timm's cls_token/pos_embed);
    once gathered, persistent parameters stay gathered. No-op without ZeRO-3."""
    pending = [p for p in module.parameters()
               if getattr(p, "ds_persist", False) and p.data.numel() != p.ds_numel]
    if pending:
        pending[0].all_gather(param_list=pending)


@torch.no_grad()
def ema_parameters_(pairs: Sequence[tuple[nn.Parameter, nn.Parameter]], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source for every (source, target) pair.

    ZeRO-3: sources and targets of the same shapes share one flat layout, so rank r holds the same elements of
    both; the update runs on the local partitions (`ds_tensor`) with no communication and no full copy. A
    persistent target also holds a full tensor, rebuilt from the updated partitions with one all-gather, so it
    never drifts from its partition (DeepSpeed restores only the partitions of frozen parameters)."""
    if not any(_partitioned(q) for _, q in pairs):
        for p, q in pairs:
            q.mul_(momentum).add_(p.to(q.dtype), alpha=1 - momentum)
        return
    whole = []
    for p, q in pairs:
        q.ds_tensor.data.mul_(momentum).add_(p.ds_tensor.data.to(q.ds_tensor.dtype), alpha=1 - momentum)
        if q.data.numel() == q.ds_numel:  # persistent: a full copy lives beside the partition
            whole.append(q)
    if whole:
        _refresh_full(whole)


def _refresh_full(params: list[nn.Parameter]) -> None:
    """Rebuild the full tensors of gathered ZeRO-3 parameters from their partitions (one all-gather)."""
    local = torch.cat([q.ds_tensor.data.reshape(-1) for q in params])
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_initialized() else 1
    full = torch.empty(world * local.numel(), dtype=local.dtype, device=local.device)
    if world > 1:
        dist.all_gather_into_tensor(full, local)
    else:
        full.copy_(local)
    full = full.view(world, -1)
    offset = 0
    for q in params:
        n = q.ds_tensor.numel()
        q.data.copy_(full[:, offset:offset + n].reshape(-1)[:q.ds_numel].view_as(q.data))
        offset += n


@torch.no_grad()
def parameters_finite(module: nn.Module) -> bool:
    """True when every parameter is finite on every rank (ZeRO-3: each rank checks its partitions); call on ALL
    ranks."""
    local = all(bool(torch.isfinite(p.ds_tensor if _partitioned(p) else p).all()) for p in module.parameters())
    device = next(module.parameters()).device
    return not _any_rank(not local, device)
