"""`retina-pretrain ablate`: every method trained on the same budget, evaluated the same way, compared.

    retina-pretrain ablate --out runs/ablation                       # synthesise + build the benchmark first
    retina-pretrain ablate --out runs/ablation --public P --elite E --eval V --methods clip vilref

The budget is shared: the demo CPU model (pretrain/configs/demo_cpu.yaml), the same steps, learning-rate
schedule, seed and samples per step. A method with paired data (KeepFIT) splits the `--batch-size` samples
into 3/4 public + 1/4 elite; the others draw elite samples with probability 1/4 (data.mix: ratio), so every
method sees the same number and mix of images. Each method trains in its own `python -m pretrain train`
process, then `pretrain.evaluate.evaluate` scores it on the evaluation shards (zero-shot and linear probe,
averaged over the evaluation datasets) and on the elite set's val split (retrieval). A method whose objective
is not registered (pretrain.objectives.OBJECTIVES) is skipped with a note. Outputs in OUT: ablation.md (the
table and the exact command), ablation.json (every metric of every method) and ablation.png. Run again with the
same OUT, it continues: a method whose run already reached --steps is evaluated again, not retrained.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

PROG = "retina-pretrain ablate"
Method = Literal["clip", "flair", "keepfit_v1", "keepfit_v2", "vilref"]
METHODS: tuple[str, ...] = get_args(Method)
CONFIGS = Path(__file__).resolve().parent / "configs"
# method -> (config, extra overrides); keepfit_v2 skips its stage-1 text pretraining for a fair budget
METHOD_CONFIGS: dict[str, tuple[str, list[str]]] = {
    "clip": ("demo_cpu.yaml", ["--method", "clip"]),
    "flair": ("demo_cpu.yaml", ["--method", "flair"]),
    "keepfit_v1": ("keepfit_v1_cpu.yaml", []),
    "keepfit_v2": ("keepfit_v2_cpu.yaml", ["--model.text.name_or_path", "offline-minilm"]),
    "vilref": ("vilref_cpu.yaml", []),
}
# --preset flair: FLAIR's input, text pooling and temperature range on every method (README "FLAIR parity"); the
# unseen-category hold-out and the definition swap need FLAIR's data and dictionary, so they stay off here
PRESETS: dict[str, list[str]] = {
    "ours": [],
    "flair": ["--data.style", "flair", "--data.balance_datasets", "true", "--model.vision.pixel_scaling", "unit",
              "--model.text.pooling", "flair", "--model.min_logit_scale", "1.0"],
}
COLUMNS = (("zs_aca", "ZS ACA"), ("zs_auc", "ZS AUC"), ("lp_aca", "LP ACA"), ("lp_auc", "LP AUC"),
           ("i2t_R@1", "i2t R@1"), ("i2t_R@5", "i2t R@5"), ("t2i_R@1", "t2i R@1"), ("t2i_R@5", "t2i R@5"),
           ("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L"))


@dataclass
class AblateConfig:
    out: str
    """Output folder (runs, data, ablation.md/json/png)."""
    methods: list[Method] = field(default_factory=lambda: list(METHODS))
    """Methods to compare."""
    steps: int = 250
    """Optimizer steps per method."""
    batch_size: int = 32
    """Samples per step (public + elite)."""
    lr: float = 2e-3
    """Peak learning rate (the demo config's)."""
    seed: int = 0
    """Seed of data synthesis, model init and data order."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage of every run."""
    public: str | None = None
    """Public shard set (default: synthesise one under OUT/data)."""
    elite: str | None = None
    """Elite shard set with a val split (default: synthesised)."""
    eval_shards: str | None = None
    """Evaluation shard set with a test split (default: synthesised); also --eval."""
    synth: list[int] = field(default_factory=lambda: [600, 200, 200])
    """Images to synthesise per set (public, elite, eval) when no shard sets are given."""
    image_size: int = 96
    """Image side of the synthesised shards and the model."""
    k_shots: list[int] = field(default_factory=list)
    """k-shot probes (none by default)."""
    preset: Literal["ours", "flair"] = "ours"
    """ours: each method's config as shipped; flair: plus FLAIR's data style, [0, 1] pixels, dataset balance,
    text pooling and [1, 100] logit scale on every method (PRESETS)."""


def build_benchmark(out: Path, counts: list[int], seed: int, image_size: int) -> dict[str, Path]:
    """Synthetic public / elite (train+val) / eval (test) shard sets under OUT/data, reused when present."""
    from shards.build import BuildConfig, build
    from shards.synth import synthesize

    data, sets = out / "data", {name: out / "shards" / name for name in ("public", "elite", "eval")}
    if all((s / "index.json").is_file() for s in sets.values()):
        return sets
    public, elite, evaluation = counts
    synthesize(data, public=public, elite=elite, eval=evaluation, seed=seed, image_size=max(image_size, 64),
               progress=False)
    frames = sorted((data / "dataframes" / "pretraining").glob("9*_SYNTH_*.csv"))
    common = {"image_size": image_size, "workers": 1, "progress": False}
    build(BuildConfig(out=sets["public"], sources=[f"flair:{f}:{data / 'images'}" for f in frames], shard_size=200,
                      **common))
    build(BuildConfig(out=sets["elite"], sources=[f"mm-retinal:{data / 'images' / 'MM-Retinal'}"], shard_size=100,
                      split="train=80,val=20", **common))
    build(BuildConfig(out=sets["eval"], sources=[f"flair:{data / 'dataframes' / 'transferability' / 'classification'}"
                                                 f":{data / 'images'}"], shard_size=200, split="test=100",
                      order="source", **common))
    return sets


def train_command(method: str, run_dir: Path, sets: dict[str, Path], args: AblateConfig) -> list[str]:
    config, extra = METHOD_CONFIGS[method]
    elite = args.batch_size // 4
    paired = method in ("keepfit_v1", "keepfit_v2")
    data = (["--data.mix", "paired", "--data.batch_size", str(args.batch_size - elite),
             "--data.elite_batch_size", str(elite)] if paired else
            ["--data.mix", "ratio", "--data.batch_size", str(args.batch_size), "--data.elite_fraction", "0.25"])
    return [sys.executable, "-m", "pretrain", "train", "--config", str(CONFIGS / config), *extra,
            "--run.dir", str(run_dir), "--run.steps", str(args.steps), "--run.seed", str(args.seed),
            "--run.log_every", str(max(1, args.steps // 10)), "--run.save_every", "0", "--run.resume", "auto",
            "--data.public", str(sets["public"]), "--data.elite", str(sets["elite"]), "--data.seed", str(args.seed),
            "--data.workers", "1", "--data.image_size", str(args.image_size),
            "--model.vision.image_size", str(args.image_size), *data,
            "--engine.zero_stage", str(args.zero_stage), "--engine.lr", str(args.lr),
            "--engine.warmup_steps", str(max(1, args.steps // 10)), "--engine.total_steps", str(args.steps),
            *PRESETS[args.preset]]


def summarise(metrics: dict[str, Any]) -> dict[str, float]:
    """Mean over evaluation datasets of zero-shot / linear-probe ACA and AUC, chance ACA, and retrieval R@K."""
    datasets = metrics["datasets"].values()

    def mean(values: list[Any]) -> float:
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    row = {"zs_aca": mean([d["zero_shot"]["aca"] for d in datasets]),
           "zs_auc": mean([d["zero_shot"]["auc"] for d in datasets]),
           "lp_aca": mean([d.get("linear_probe", {}).get("aca") for d in datasets]),
           "lp_auc": mean([d.get("linear_probe", {}).get("auc") for d in datasets]),
           "chance_aca": mean([1.0 / len(d["classes"]) for d in datasets])}
    retrieval = metrics.get("retrieval") or {}
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"):
        row[key] = float(retrieval.get(key, float("nan")))
    captioning = metrics.get("captioning") or {}  # only methods with a caption decoder (keepfit_v2)
    for key in ("bleu4", "rouge_l"):
        row[key] = float(captioning.get(key, float("nan")))
    return row


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def markdown(rows: dict[str, dict[str, float]], notes: list[str], command: str, args: AblateConfig) -> str:
    head = ["method", *(title for _, title in COLUMNS), "final loss"]
    lines = ["# Ablation: every method on the same budget (synthetic benchmark)", "",
             f"Command: `{command}`", "",
             f"Budget per method: {args.steps} steps x {args.batch_size} samples (3/4 public, 1/4 elite), "
             f"lr {args.lr}, seed {args.seed}, ZeRO-{args.zero_stage}, demo CPU model at {args.image_size} px, "
             f"preset {args.preset}{' (' + ' '.join(PRESETS[args.preset]) + ')' if PRESETS[args.preset] else ''}. "
             "ZS / LP: zero-shot and linear-probe balanced accuracy (ACA) and AUC, averaged over the evaluation "
             "datasets; retrieval on the elite val split; BLEU-4 / ROUGE-L of greedy captions of the elite val "
             "images (methods with a caption decoder).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in rows.items():
        lines.append("| " + " | ".join([method, *(_fmt(row.get(key)) for key, _ in COLUMNS),
                                        _fmt(row.get("final_loss"))]) + " |")
    if rows:
        chance = next(iter(rows.values()))["chance_aca"]
        lines += ["", f"Chance: ACA {_fmt(chance)} (mean of 1/classes), AUC 0.500."]
    lines += [""] + [f"- {note}" for note in notes] + ["", "![ablation](ablation.png)", ""]
    return "\n".join(lines)


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [("zs_aca", "ZS ACA"), ("zs_auc", "ZS AUC"), ("lp_aca", "LP ACA"), ("i2t_R@5", "i2t R@5")]
    fig = Figure(figsize=(8, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(rows))
    for i, (method, row) in enumerate(rows.items()):
        values = [row.get(k, float("nan")) for k, _ in keys]
        ax.bar(np.arange(len(keys)) + i * width, np.nan_to_num(values), width, label=method)
    if rows:
        chance = next(iter(rows.values()))["chance_aca"]
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance ACA")
    ax.set_xticks(np.arange(len(keys)) + width * (len(rows) - 1) / 2, [t for _, t in keys])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("same-budget comparison on the synthetic benchmark")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_ablation(args: AblateConfig, argv: list[str]) -> int:
    """Train and evaluate every method of `args`; `argv` is recorded as the command in ablation.md."""
    if len(args.synth) != 3:
        print(f"{PROG}: error: --synth takes three counts: PUBLIC ELITE EVAL", file=sys.stderr)
        return 2
    from pretrain.evaluate import EvalConfig, evaluate, load_run_model
    from pretrain.objectives import OBJECTIVES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.public and args.elite and args.eval_shards:
        sets = {"public": Path(args.public), "elite": Path(args.elite), "eval": Path(args.eval_shards)}
    elif args.public or args.elite or args.eval_shards:
        print(f"{PROG}: error: give all of --public, --elite and --eval, or none (to synthesise)", file=sys.stderr)
        return 2
    else:
        sets = build_benchmark(out, args.synth, args.seed, args.image_size)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {}
    notes: list[str] = []
    for method in args.methods:
        if method not in OBJECTIVES:
            notes.append(f"{method}: skipped, its objective is not registered in pretrain.objectives")
            continue
        run_dir = out / "runs" / method
        cmd = train_command(method, run_dir, sets, args)
        print(f"== {method}: {shlex.join(cmd[1:])}", flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (out / "runs").mkdir(exist_ok=True)
        (out / "runs" / f"{method}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            notes.append(f"{method}: training failed (exit {done.returncode}); see runs/{method}.log")
            print(done.stdout[-2000:] + done.stderr[-4000:], file=sys.stderr)
            continue
        model, tokenizer, _ = load_run_model(run_dir)
        try:
            metrics = evaluate(model, tokenizer, EvalConfig(eval_shards=str(sets["eval"]), split="test",
                                                            retrieval_shards=str(sets["elite"]), retrieval_split="val",
                                                            k_shots=list(args.k_shots), seed=args.seed))
        except ValueError as err:  # e.g. NaN embeddings from weights an older version let turn non-finite
            notes.append(f"{method}: evaluation failed ({str(err).splitlines()[0]}); see runs/{method}.log")
            continue
        losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows[method] = {**summarise(metrics), "final_loss": float(losses[-1]["loss"]) if losses else float("nan")}
        details[method] = metrics
        print(f"   {method}: " + ", ".join(f"{t} {_fmt(rows[method][k])}" for k, t in COLUMNS), flush=True)
    command = shlex.join(["retina-pretrain", "ablate", *argv])
    from pretrain.eval_inputs import finite_or_none

    (out / "ablation.json").write_text(json.dumps(finite_or_none(
        {"command": command, "summary": rows, "metrics": details, "notes": notes}), indent=1) + "\n", encoding="utf-8")
    (out / "ablation.md").write_text(markdown(rows, notes, command, args), encoding="utf-8")
    plot(rows, out / "ablation.png")
    print(f"table: {out / 'ablation.md'}")
    return 0 if rows and not any("failed" in n for n in notes) else 1
