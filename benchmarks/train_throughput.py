"""Training samples/s: retinascale's path against a plain PyTorch loop with the eager loss.

cpu  The demo config (pretrain/configs/demo_cpu.yaml) on the same shards and the same loader settings, twice:
     `retinascale` = the DeepSpeed engine (ZeRO 0, fp32) + the FLAIR objective through kernels.contrastive_loss
     (auto backend: chunked on CPU) + the guarded train_step, as `retina-pretrain train` runs it;
     `plain` = the same model and initial weights, torch AdamW with the same groups, the same objective with
     backend="eager" (dense B x B logits), loss.backward(), clip, step. Data loading is inside both timings.
gpu  ViT-B/16 at 224 px + a BERT-base text tower (random init, 77 tokens, padded batches), bf16 autocast, AdamW,
     batches of synthetic tensors already on the GPU (model and loss only, no data pipeline), three variants:
     `baseline` = timm's own attention (SDPA) + transformers' sdpa attention + the eager loss;
     `kernels`  = both towers through kernels.attention (Triton FlashAttention-2) + the Triton contrastive loss;
     `sdpa+triton-loss` = both towers through kernels.attention's sdpa backend + the Triton loss.

Each variant runs `--warmup` untimed steps, then `--steps` timed ones; the median step time is reported
(samples/s = batch / median). Variants alternate in rounds so drift hits them alike. Writes
benchmarks/results/train_throughput-<device>.json with medians, ratios to the baseline, device and versions.

    python benchmarks/train_throughput.py cpu [--public DIR --elite DIR]   # builds tiny shards if not given
    python benchmarks/train_throughput.py gpu [--batch 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_info, device_slug, package_version  # noqa: E402

PACKAGES = ("torch", "triton", "deepspeed", "transformers", "timm", "webdataset", "xformers")


def _timed_rounds(variants: dict[str, Callable[[], None]], warmup: int, steps: int, rounds: int,
                  sync: Callable[[], None]) -> dict[str, list[float]]:
    """Per-step wall times (s) of each variant, in `rounds` alternating blocks of steps // rounds."""
    for step in variants.values():
        for _ in range(warmup):
            step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            for _ in range(max(1, steps // rounds)):
                sync()
                start = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def _summary(times: dict[str, list[float]], batch: int, baseline: str) -> dict[str, dict]:
    out = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        out[name] = {"median_step_s": median, "samples_per_s": batch / median, "steps_timed": len(ts),
                     "step_s_min": min(ts), "step_s_max": max(ts)}
    for row in out.values():
        row["speedup_vs_" + baseline] = row["samples_per_s"] / out[baseline]["samples_per_s"]
    return out


# ----------------------------------------------------------------------------- CPU: the demo config


def synthetic_shards(workdir: Path, public: int, elite: int, eval: int = 0, image_size: int = 96,
                     workers: int = 1, synth_size: int | None = None) -> dict[str, Path]:
    """Synthetic fundus data built into shard sets as `make demo` builds them: public (the FLAIR-layout
    sources), elite (MM-Retinal) and, with eval > 0, eval (the transferability sets, split test).
    `synth_size`: render the images this size (rendering is single-process and slow at 512 px), then resize
    them to the shards' `image_size` canvases while building."""
    from shards.build import BuildConfig, build
    from shards.synth import synthesize

    data = workdir / "data"
    synthesize(data, public=public, elite=elite, eval=eval, seed=0, image_size=synth_size or image_size,
               progress=False)
    frames = sorted((data / "dataframes" / "pretraining").glob("9*_SYNTH_*.csv"))
    sets = {"public": [f"flair:{f}:{data / 'images'}" for f in frames],
            "elite": [f"mm-retinal:{data / 'images' / 'MM-Retinal'}"]}
    if eval:
        sets["eval"] = [f"flair:{data / 'dataframes' / 'transferability' / 'classification'}:{data / 'images'}"]
    out = {}
    for name, sources in sets.items():
        out[name] = workdir / name
        build(BuildConfig(out=out[name], sources=sources, shard_size=max(32, (public + elite) // 8),
                          image_size=image_size, split="test=100" if name == "eval" else "train=100",
                          order="source" if name == "eval" else "shuffle", workers=workers, progress=False))
    return out


def _demo_shards(workdir: Path) -> tuple[Path, Path]:
    sets = synthetic_shards(workdir, public=200, elite=64)
    return sets["public"], sets["elite"]


def run_cpu(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from pretrain.config import load_config
    from pretrain.data import make_loader
    from pretrain.engine import build_engine, init_distributed_env, train_step
    from pretrain.engine import param_groups
    from pretrain.model import build_model, resolve_model_paths
    from pretrain.objectives import build_objective, weighted_total
    from pretrain.schedule import warmup_cosine
    from pretrain.train import TrainConfig

    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    public, elite = (Path(args.public), Path(args.elite)) if args.public else _demo_shards(workdir)
    cfg = load_config(TrainConfig, args.config, [])
    cfg.data = dataclasses.replace(cfg.data, public=str(public), elite=str(elite))
    model_cfg = resolve_model_paths(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.text.name_or_path)
    total = args.warmup + args.steps + 1

    init_distributed_env()
    torch.manual_seed(0)
    ours_model = build_model(model_cfg)
    torch.manual_seed(0)
    plain_model = build_model(model_cfg)
    engine_cfg = dataclasses.replace(cfg.engine, micro_batch_size=cfg.data.batch_size, total_steps=total)
    engine, _, _ = build_engine(ours_model, engine_cfg)
    ours_objective = build_objective(cfg.method)  # backend auto: chunked on CPU
    plain_objective = build_objective(cfg.method, backend="eager")

    def loss_fn(eng, batch):
        terms = ours_objective(eng.module, batch)  # objectives get the bare model, as in pretrain.loop
        return {"loss": weighted_total(terms, cfg.loss_weights), **terms}

    optimizer = torch.optim.AdamW(param_groups(plain_model, cfg.engine.weight_decay), lr=cfg.engine.lr,
                                  betas=tuple(cfg.engine.betas), eps=cfg.engine.eps)
    scheduler = warmup_cosine(optimizer, cfg.engine.warmup_steps, total, cfg.engine.min_lr_ratio)
    ours_batches = iter(make_loader(cfg.data, tokenizer))
    plain_batches = iter(make_loader(cfg.data, tokenizer))

    def ours_step() -> None:
        train_step(engine, loss_fn, next(ours_batches))

    def plain_step() -> None:
        loss = weighted_total(plain_objective(plain_model, next(plain_batches)), cfg.loss_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), cfg.engine.grad_clip)
        optimizer.step()
        scheduler.step()

    times = _timed_rounds({"plain": plain_step, "retinascale": ours_step}, args.warmup, args.steps, args.rounds,
                          sync=lambda: None)
    config_name = args.config.resolve().relative_to(REPO) if args.config.resolve().is_relative_to(REPO) else args.config
    return {"benchmark": "train_throughput", "mode": "cpu", "config": str(config_name), "batch": cfg.data.batch_size,
            "image_size": cfg.data.image_size, "data_workers": cfg.data.workers, "method": cfg.method,
            "variants": _summary(times, cfg.data.batch_size, "plain"),
            "notes": "both variants read the same shards with the same loader settings; data loading is timed"}


# ----------------------------------------------------------------------------- GPU: ViT-B/16 + BERT-base


def _gpu_model(attention: str | None) -> torch.nn.Module:
    from pretrain.model import ModelConfig, TextConfig, VisionConfig, build_model

    # no attention-probability dropout in any variant (the kernels have none), so all do the same work
    text_overrides = {"model_type": "bert", "max_position_embeddings": 512, "attention_probs_dropout_prob": 0.0}
    text = TextConfig(name_or_path="bert-base-uncased", max_len=77, random_init=True,
                      attention_backend=attention, config_overrides=text_overrides)
    vision = VisionConfig(name="vit_base_patch16_224", image_size=224, attention_backend=attention)
    return build_model(ModelConfig(vision=vision, text=text, embed_dim=512))


def synthetic_batch(batch: int, image_size: int, device: torch.device, seq: int = 77,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images, token ids with random lengths (padded batches) and category ids, already on `device`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    lengths = torch.randint(8, seq + 1, (batch,), device=device, generator=gen)
    return {"pixel_values": torch.randn(batch, 3, image_size, image_size, device=device, generator=gen),
            "input_ids": torch.randint(1000, 30000, (batch, seq), device=device, generator=gen),
            "attention_mask": (torch.arange(seq, device=device)[None] < lengths[:, None]).long(),
            "category_ids": torch.randint(0, 16, (batch,), device=device, generator=gen)}


def plain_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss_backend: str,
               weight_decay: float = 0.1, lr: float = 1e-4) -> Callable[[], None]:
    """One step of the plain loop on fixed inputs: bf16 autocast forward, the contrastive loss (category
    positives), backward, clip, torch AdamW (fused on CUDA)."""
    from kernels import contrastive_loss
    from pretrain.engine import param_groups

    device = inputs["pixel_values"].device
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=device.type == "cuda")

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"])
            loss = contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"],
                                    labels=inputs["category_ids"], positives="labels", backend=loss_backend)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def run_gpu(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch, seq = args.batch, 77
    inputs = synthetic_batch(batch, 224, device, seq)

    def make_step(attention: str | None, loss_backend: str) -> tuple[Callable[[], None], torch.nn.Module]:
        torch.manual_seed(0)
        model = _gpu_model(attention).to(device)
        return plain_step(model, inputs, loss_backend), model

    plan = {"baseline": (None, "eager"), "kernels": ("triton", "triton"), "sdpa+triton-loss": ("sdpa", "triton")}
    variants, memory, attn_impl = {}, {}, {}
    for name in args.variants or plan:
        attention, loss_backend = plan[name]
        step, model = make_step(attention, loss_backend)
        attn_impl[name] = {"vision": attention or "timm default (fused SDPA)",
                           "text": model.text_model.model.config._attn_implementation, "loss": loss_backend}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            step()
        sync()
        if device.type == "cuda":
            memory[name] = torch.cuda.max_memory_allocated(device) / 2**30
        variants[name] = step
        del model  # the step closure keeps it alive; this only drops the local name
    times = _timed_rounds(variants, args.warmup, args.steps, args.rounds, sync=sync)
    summary = _summary(times, batch, next(iter(variants)))
    for name, gib in memory.items():
        summary[name]["peak_memory_gib_first_steps"] = gib
    for name, impl in attn_impl.items():
        summary[name]["implementation"] = impl
    return {"benchmark": "train_throughput", "mode": "gpu", "batch": batch, "image_size": 224, "text_len": seq,
            "model": "vit_base_patch16_224 + BERT-base (random init), embed 512, bf16 autocast, fused AdamW",
            "variants": summary,
            "notes": "synthetic batches resident on the GPU: model + loss + optimizer only, no data pipeline; "
                     "peak memory is measured over each variant's first two steps in isolation"}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("cpu", "gpu"))
    parser.add_argument("--config", type=Path, default=REPO / "pretrain" / "configs" / "demo_cpu.yaml",
                        help="cpu: training config (default: the demo config)")
    parser.add_argument("--public", help="cpu: public shard set (default: build tiny synthetic shards)")
    parser.add_argument("--elite", help="cpu: elite shard set")
    parser.add_argument("--batch", type=int, default=256, help="gpu: samples per step")
    parser.add_argument("--variants", nargs="+", choices=("baseline", "kernels", "sdpa+triton-loss"),
                        help="gpu: variants to run (default all; the first is the baseline of the ratios)")
    parser.add_argument("--device", default="cuda", help="gpu mode's device (cpu only to smoke-test the script)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (cpu 5, gpu 5)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (cpu 40, gpu 30)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating blocks the timed steps are split in")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/train_throughput-"
                                                 "<device>.json)")
    args = parser.parse_args(argv)
    if args.public and not args.elite:
        parser.error("--public needs --elite")
    args.warmup = 5 if args.warmup is None else args.warmup
    args.steps = (40 if args.mode == "cpu" else 30) if args.steps is None else args.steps
    if args.mode == "gpu" and args.device == "cuda" and not torch.cuda.is_available():
        parser.error("gpu mode needs CUDA")
    device = torch.device(args.device if args.mode == "gpu" else "cpu")
    result = run_cpu(args) if args.mode == "cpu" else run_gpu(args)
    result.update({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_info(device),
                   "versions": {name: package_version(name) for name in PACKAGES},
                   "warmup_steps": args.warmup, "statistic": "median step time"})
    out = args.out or REPO / "benchmarks" / "results" / f"train_throughput-{device_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':<20} {'samples/s':>10} {'step ms':>9} {'speedup':>8}")
    baseline = next(iter(result["variants"]))
    for name, row in result["variants"].items():
        print(f"{name:<20} {row['samples_per_s']:>10.1f} {row['median_step_s'] * 1e3:>9.1f} "
              f"{row['speedup_vs_' + baseline]:>8.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
