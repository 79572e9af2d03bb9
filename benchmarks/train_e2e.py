"""The training path end to end, as a user runs it: synthetic shards -> `retina-pretrain train` (DeepSpeed, bf16
on a GPU) -> `retina-pretrain eval` -> `retina-pretrain export-hf`, each as its own command-line process.

Reported per config: training samples/s (the median of the per-interval samples/s the run wrote to its
metrics.jsonl; data loading included, as in any real run), peak GPU memory (the largest logged peak), and
the same model's samples/s in the plain torch loop of benchmarks/train_throughput.py (bf16 autocast, AdamW,
eager loss, synthetic batches already on the GPU: no data pipeline, no engine), measured right after the run
on the same device; `vs_plain` is their ratio. The eval's headline metrics and the export's verification are recorded.

    python benchmarks/train_e2e.py shards --work DIR                       # synthetic shard sets at 512 px
    python benchmarks/train_e2e.py run --config pretrain/configs/gpu_vit_b16_224.yaml --work DIR --out JSON
        [--steps N] [--text TOKENIZER_DIR]

Each `run` adds its config's entry to JSON (one file for a session's runs) and rewrites it after every stage,
so a run stopped by its time limit still leaves what it finished. --smoke (both commands) is the CPU check of
this path (tests/benchmarks/test_train_e2e.py): tiny shards, towers and steps, fp32, no GPU needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_info, package_version  # noqa: E402
from benchmarks.train_throughput import PACKAGES, plain_step, synthetic_batch, synthetic_shards  # noqa: E402

# Tiny towers and batches for --smoke, as tests/helpers.py's tiny_model_config: the whole path on a CPU.
SMOKE_TEXT = ("{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
              "intermediate_size: 64, max_position_embeddings: 64}")
SMOKE_VISION = {"resnet": ["--model.vision.name", "resnet18"],
                "vit": ["--model.vision.name", "vit_tiny_patch16_224", "--model.vision.model_kwargs", "{depth: 2}"]}
SMOKE_IMAGE = 64


def build_shards(args: argparse.Namespace) -> int:
    work = Path(args.work).resolve()
    # 512 px canvases serve both configs (the loader resizes, decoding full 512 px JPEGs as in a real run). The
    # images are rendered at 128 px (rendering at 512 px takes a CPU core tenths of a second an image) and the training
    # streams are resampled, so a few hundred images serve any number of steps: throughput, not learning.
    sizes = dict(public=48, elite=16, eval=24, image_size=SMOKE_IMAGE) if args.smoke else \
        dict(public=400, elite=100, eval=120, image_size=512, synth_size=128)
    start = time.perf_counter()
    sets = synthetic_shards(work / "shards", workers=args.workers, **sizes)
    print(f"shards in {time.perf_counter() - start:.1f}s: " + ", ".join(f"{k} {v}" for k, v in sets.items()))
    return 0


def _command(name: str, argv: list[str], cpu: bool) -> float:
    """Run `python -m pretrain NAME ...` (the retina-pretrain entry point); the wall time in s.
    Its output goes to ours, so a session log keeps the interval lines even if a time limit stops the run."""
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {}))  # --smoke stays on the CPU anywhere
    start = time.perf_counter()
    sys.stdout.flush()
    subprocess.run([sys.executable, "-m", "pretrain", name, *argv], cwd=REPO, env=env, check=True)
    return time.perf_counter() - start


def _overrides(args: argparse.Namespace, run_dir: Path, shards: Path) -> list[str]:
    out = ["--run.dir", str(run_dir), "--data.public", str(shards / "public"), "--data.elite", str(shards / "elite"),
           "--model.text.name_or_path", args.text]
    if args.steps:
        out += ["--run.steps", str(args.steps), "--run.log_every", str(max(1, args.steps // 10))]
    if args.smoke:
        vision = "vit" if "vit" in Path(args.config).stem else "resnet"
        out += [*SMOKE_VISION[vision], "--model.vision.image_size", str(SMOKE_IMAGE),
                "--data.image_size", str(SMOKE_IMAGE), "--model.text.config_overrides", SMOKE_TEXT,
                "--model.text.max_len", "32", "--data.max_text_len", "32", "--model.embed_dim", "32",
                "--data.batch_size", "8", "--data.workers", "1", "--data.shuffle_buffer", "32",
                "--engine.precision", "fp32", "--engine.warmup_steps", "1"]
    return out


def training_rates(metrics_jsonl: Path) -> dict:
    """samples/s per logged interval of a run and their median; peak memory (MiB) over the intervals."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    rates = [row["samples_per_s"] for row in rows]
    return {"samples_per_s": statistics.median(rates), "samples_per_s_intervals": rates,
            "steps_per_interval": rows[1]["step"] - rows[0]["step"] if len(rows) > 1 else rows[0]["step"],
            "peak_memory_mib": max(row["mem_mib"] for row in rows), "final_loss": rows[-1]["loss"]}


def plain_loop(cfg, device: torch.device, warmup: int, steps: int) -> dict:
    """The plain torch loop (benchmarks/train_throughput.py) on this config's model, batch size and image size."""
    from benchmarks.train_throughput import _timed_rounds
    from pretrain.model import build_model, resolve_model_paths

    torch.manual_seed(cfg.run.seed)
    model = build_model(resolve_model_paths(cfg.model)).to(device)
    inputs = synthetic_batch(cfg.data.batch_size, cfg.data.image_size, device, seq=cfg.data.max_text_len)
    step = plain_step(model, inputs, "eager", weight_decay=cfg.engine.weight_decay, lr=cfg.engine.lr)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _timed_rounds({"plain": step}, warmup, steps, rounds=1, sync=sync)["plain"]
    median = statistics.median(times)
    out = {"samples_per_s": cfg.data.batch_size / median, "median_step_s": median, "steps_timed": len(times)}
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _write(out: Path, name: str, entry: dict) -> None:
    results = json.loads(out.read_text()) if out.is_file() else {"benchmark": "train_e2e", "runs": {}}
    results["runs"][name] = entry
    results["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


def run(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.train import TrainConfig

    # absolute paths: the retina-pretrain processes run in the repository root
    work, out, config = Path(args.work).resolve(), Path(args.out).resolve(), Path(args.config).resolve()
    name = config.stem
    shards, run_dir = work / "shards", work / "runs" / name
    overrides = _overrides(args, run_dir, shards)
    cfg = load_config(TrainConfig, config, overrides)  # the resolved config, as the train command sees it
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    shown = config.relative_to(REPO) if config.is_relative_to(REPO) else config
    entry = {"config": str(shown), "overrides": overrides, "device": device_info(device),
             "versions": {p: package_version(p) for p in PACKAGES}, "steps": cfg.run.steps,
             "batch": cfg.data.batch_size, "image_size": cfg.data.image_size, "method": cfg.method,
             "precision": cfg.engine.precision, "zero_stage": cfg.engine.zero_stage,
             "vision": cfg.model.vision.name, "text": "random-init " + str(cfg.model.text.config_overrides),
             "memory": "peak_memory_mib: torch.cuda.max_memory_allocated on a GPU, the process's max RSS on a CPU",
             "seconds": {}}

    entry["seconds"]["train"] = _command("train", ["--config", str(config), *overrides], args.smoke)
    entry["retinascale"] = training_rates(run_dir / "metrics.jsonl")
    _write(out, name, entry)

    start = time.perf_counter()  # the GPU is free again: the plain loop on the same model and batch size
    entry["plain"] = plain_loop(cfg, device, warmup=2 if args.smoke else 3, steps=3 if args.smoke else 20)
    entry["seconds"]["plain"] = time.perf_counter() - start
    entry["vs_plain"] = entry["retinascale"]["samples_per_s"] / entry["plain"]["samples_per_s"]
    _write(out, name, entry)

    eval_dir = run_dir / "eval"
    entry["seconds"]["eval"] = _command("eval", [
        "--run", str(run_dir), "--eval_shards", str(shards / "eval"), "--k_shots", "1", "5", "--k_shot_repeats", "1",
        "--batch_size", "16" if args.smoke else "128"], args.smoke)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    # a few hundred steps on synthetic data: the numbers show the path works, not that the model is good
    entry["eval"] = {dataset: {"n": d["n"], "zero_shot_aca": d["zero_shot"]["aca"],
                            "linear_probe_aca": d.get("linear_probe", {}).get("aca")}
                     for dataset, d in metrics["datasets"].items()}
    _write(out, name, entry)

    export_dir = work / "export" / name
    entry["seconds"]["export"] = _command("export-hf", [str(run_dir), str(export_dir), "--eval",
                                                        str(eval_dir / "metrics.json"), "--overwrite"], args.smoke)
    # export-hf compares the exported model's features with the training model's and fails on a mismatch
    entry["export"] = {"files": sorted(p.name for p in export_dir.iterdir()), "verified": True}
    _write(out, name, entry)
    rates = entry["retinascale"]
    print(f"{name}: {rates['samples_per_s']:.1f} samples/s (plain loop {entry['plain']['samples_per_s']:.1f}, "
          f"ratio {entry['vs_plain']:.2f}), peak {rates['peak_memory_mib']:.0f} MiB; eval and export done -> {out}")
    return 0 if all(math.isfinite(r) and r > 0 for r in rates["samples_per_s_intervals"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    shards = sub.add_parser("shards", help="synthesize and build the public, elite and eval shard sets")
    shards.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    one = sub.add_parser("run", help="train, measure, evaluate and export one config")
    one.add_argument("--config", required=True, help="training config (pretrain/configs/gpu_*.yaml)")
    one.add_argument("--out", required=True, help="results JSON (entries of other configs are kept)")
    one.add_argument("--steps", type=int, help="training steps (default: the config's run.steps)")
    one.add_argument("--text", default="offline-minilm",
                     help="tokenizer folder of the random-init text tower (default: the bundled MiniLM's)")
    for p in (shards, one):
        p.add_argument("--work", required=True, help="folder for the shards, runs and exports")
        p.add_argument("--smoke", action="store_true", help="CPU check: tiny data, towers and steps")
    args = parser.parse_args(argv)
    return build_shards(args) if args.command == "shards" else run(args)


if __name__ == "__main__":
    sys.exit(main())
