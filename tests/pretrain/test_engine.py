"""The DeepSpeed engine, schedule and checkpointing on CPU (gloo).

Every DeepSpeed run happens in spawned processes (tests.helpers.run_ranks) so the pytest process never holds a
process group. A tiny two-tower model (with dropout, so resuming must restore the RNG) and
kernels.contrastive_loss keep each run to seconds. Resume tolerance: fp32 on CPU is deterministic, so the
resumed run must match the uninterrupted one exactly (torch.equal on every parameter, == on the loss).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.schedule import warmup_cosine
from tests.helpers import run_ranks

# ----------------------------------------------------------------------------- schedule


def _lrs(warmup: int, total: int, min_ratio: float, steps: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup, total, min_ratio)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_values():
    lrs = _lrs(warmup=4, total=12, min_ratio=0.1, steps=14)
    assert lrs[0] == pytest.approx(2.0 * 1 / 4)           # warmup start: already training
    assert lrs[3] == pytest.approx(2.0)                   # warmup end: peak
    assert lrs[4] == pytest.approx(2.0)                   # cosine start
    assert lrs[8] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # mid-cosine (progress 1/2)
    assert lrs[6] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lrs[12] == pytest.approx(0.2)                  # end: min_lr_ratio * lr
    assert lrs[13] == pytest.approx(0.2)                  # and stays there
    assert lrs[:4] == sorted(lrs[:4]) and lrs[4:] == sorted(lrs[4:], reverse=True)


def test_warmup_cosine_rejects_bad_args():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_cosine(opt, 10, 5, 0.0)
    with pytest.raises(ValueError):
        warmup_cosine(opt, 1, 5, 1.5)


# ----------------------------------------------------------------------------- workers (spawned)


class TinyCLIP(nn.Module):
    def __init__(self, dim_in: int = 16, dim: int = 8, scalar_logit_scale: bool = False):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(dim_in, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, dim))
        self.text = nn.Sequential(nn.Linear(dim_in, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, dim))
        # shape (1,) like RetinaCLIP's: DeepSpeed cannot handle 0-d parameters (build_engine refuses them)
        init = torch.tensor(math.log(1 / 0.07))
        self.logit_scale = nn.Parameter(init if scalar_logit_scale else init.reshape(1))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embeds": nn.functional.normalize(self.image(images), dim=-1),
                "text_embeds": nn.functional.normalize(self.text(texts), dim=-1),
                "logit_scale": self.logit_scale.exp()}


def clip_loss(model, batch) -> dict[str, torch.Tensor]:
    from kernels.contrastive import contrastive_loss

    out = model(batch["images"], batch["texts"])
    loss = contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])
    return {"loss": loss, "contrastive": loss.detach()}


def nan_loss(model, batch) -> dict[str, torch.Tensor]:
    terms = clip_loss(model, batch)
    return {"loss": terms["loss"] * float("nan"), "contrastive": terms["contrastive"]}


def nan_gradient_loss(model, batch) -> dict[str, torch.Tensor]:
    """A finite loss whose gradient is NaN: sqrt's derivative at 0 is inf, and inf * 0 = NaN."""
    terms = clip_loss(model, batch)
    return {**terms, "loss": terms["loss"] + 0 * torch.sqrt(model.logit_scale.sum() * 0)}


def _batch(rank: int, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(n, 16, generator=g)
    return {"images": x + 0.1 * torch.randn(n, 16, generator=g), "texts": x}


def _params(engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def _build(stage: int, seed: int):
    from pretrain.engine import EngineConfig, build_engine

    torch.manual_seed(seed)
    cfg = EngineConfig(zero_stage=stage, micro_batch_size=8, lr=1e-2, warmup_steps=2, total_steps=20)
    return build_engine(TinyCLIP(), cfg)[0]


def _run(engine, rank: int, start: int, stop: int, run_dir: Path | None = None, save_at: int | None = None):
    from pretrain.checkpoint import save_checkpoint
    from pretrain.engine import train_step

    losses = []
    for step in range(start, stop):
        losses.append(train_step(engine, clip_loss, _batch(rank))["loss"])
        if save_at is not None and step + 1 == save_at:
            save_checkpoint(engine, run_dir, step + 1, extra={"data_position": step + 1})
    return losses


def _worker(rank: int, world: int, scenario: str, out_dir: str) -> dict:
    from pretrain.checkpoint import load_checkpoint, save_run_config
    from pretrain.engine import NonFiniteLoss, init_distributed_env, train_step

    init_distributed_env()
    stage = int(scenario[-1])
    run_dir = Path(out_dir) / "run"
    result: dict = {}
    if scenario.startswith("train"):
        engine = _build(stage, seed=0)
        result["losses"] = _run(engine, rank, 0, 10)
        result["lr"] = engine.lr_scheduler.get_last_lr()
    elif scenario.startswith("resume"):
        engine = _build(stage, seed=0)
        save_run_config(run_dir, {"engine": {"zero_stage": stage}})
        result["losses"] = _run(engine, rank, 0, 8, run_dir, save_at=4)
        result["params"] = _params(engine)
        # A fresh engine with different initial weights and RNG: everything must come from the checkpoint.
        torch.manual_seed(1234)
        engine = _build(stage, seed=1)
        state = load_checkpoint(engine, run_dir, "auto")
        result["client_state"] = state
        result["resumed_losses"] = _run(engine, rank, state["step"], 8)
        result["resumed_params"] = _params(engine)
    if scenario.startswith("brokenweights"):  # the training loop stops once the weights themselves are NaN
        from pretrain.loop import NonFiniteWeights, RunConfig, TrainingLoop

        engine = _build(stage, seed=0)
        loop = TrainingLoop(engine, engine.optimizer, RunConfig(dir=str(run_dir), steps=6, log_every=0, save_every=0,
                                                                resume="none"))
        try:
            batch = {**_batch(rank), "image": _batch(rank)["images"]}  # the loop counts samples by "image"
            loop.run(lambda step: batch, nan_gradient_loss)
            result["broken"] = None
        except NonFiniteWeights as err:
            result["broken"] = str(err)
    if scenario.startswith("nan") or scenario.startswith("train"):
        engine = engine if scenario.startswith("train") else _build(stage, seed=0)
        before = _params(engine)
        # NaN on the last rank only: every rank must skip.
        loss_fn = nan_loss if rank == world - 1 else clip_loss
        try:
            train_step(engine, loss_fn, _batch(rank))
            result["nan_error"] = None
        except NonFiniteLoss as err:
            result["nan_error"] = (err.step, str(err))
        result["unchanged"] = all(torch.equal(before[n], p) for n, p in _params(engine).items())
        result["after_nan_loss"] = train_step(engine, clip_loss, _batch(rank))["loss"]
    return result


def _spawn(tmp_path: Path, scenario: str, world: int) -> list[dict]:
    return run_ranks(_worker, world, scenario, str(tmp_path))


def _check_training(results: list[dict]) -> None:
    for res in results:
        losses = res["losses"]
        assert all(math.isfinite(x) for x in losses)
        assert losses[-1] < losses[0] - 0.05, losses
        step, message = res["nan_error"]
        assert step == 10 and "step 10" in message and "contrastive" in message
        assert res["unchanged"]
        assert math.isfinite(res["after_nan_loss"])


def _check_resume(results: list[dict]) -> None:
    for res in results:
        assert res["client_state"]["step"] == 4 and res["client_state"]["data_position"] == 4
        assert "rng" not in res["client_state"]
        assert res["resumed_losses"] == res["losses"][4:]
        for name, p in res["params"].items():
            assert torch.equal(p, res["resumed_params"][name]), name


# ----------------------------------------------------------------------------- tests


def test_single_process_zero0_trains_and_skips_nan(tmp_path):
    _check_training(_spawn(tmp_path, "train0", world=1))


def test_single_process_zero0_resume_is_exact(tmp_path):
    _check_resume(_spawn(tmp_path, "resume0", world=1))
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000004"
    assert (ckpt / "step00000004").is_dir()
    assert not list(ckpt.glob(".*tmp"))
    assert "zero_stage: 0" in (tmp_path / "run" / "config.yaml").read_text()


def test_weights_that_turn_nan_stop_the_run_instead_of_skipping_every_step(tmp_path):
    [result] = _spawn(tmp_path, "brokenweights0", world=1)
    assert result["broken"] is not None, "the loop went on skipping steps"
    assert "NaN/inf after optimizer step 1" in result["broken"] and "no checkpoint yet" in result["broken"]


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_zero_trains_and_skips_nan_on_one_rank(tmp_path, stage):
    results = _spawn(tmp_path, f"train{stage}", world=2)
    _check_training(results)
    assert results[0]["losses"] != results[1]["losses"]  # per-rank batches really differ
    assert results[0]["lr"] == results[1]["lr"]


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_resume_is_exact(tmp_path, stage):
    _check_resume(_spawn(tmp_path, f"resume{stage}", world=2))


@pytest.mark.parametrize("stage", [0, 3])
def test_zero_dim_parameters_are_refused_with_their_names(stage):
    from pretrain.engine import EngineConfig, build_engine

    with pytest.raises(ValueError, match="logit_scale"):
        build_engine(TinyCLIP(scalar_logit_scale=True), EngineConfig(zero_stage=stage))
    assert not torch.distributed.is_initialized()  # rejected before any process group exists


def test_deepspeed_config_from_engine_config():
    from pretrain.engine import EngineConfig, deepspeed_config

    ds = deepspeed_config(EngineConfig(zero_stage=3, precision="bf16", micro_batch_size=4, grad_accum_steps=2,
                                       grad_clip=0.5))
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5 and ds["zero_optimization"] == {"stage": 3}
    assert ds["bf16"] == {"enabled": True} and ds["wall_clock_breakdown"] is False
    assert deepspeed_config(EngineConfig(precision="fp32"))["bf16"] == {"enabled": False}
    with pytest.raises(ValueError):
        deepspeed_config(EngineConfig(zero_stage=4))
