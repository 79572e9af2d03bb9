"""`retina-pretrain ablate`: every method trained on the same budget and seeds, evaluated the same way, compared.

    retina-pretrain ablate --out runs/ablation                       # synthesise + build the benchmark first
    retina-pretrain ablate --out runs/ablation-seeds --seeds 0 1 2   # every method per seed: mean +- std
    retina-pretrain ablate --out runs/ablation --public P --elite E --eval V --methods clip vilref

The budget is shared: the demo CPU model (pretrain/configs/demo_cpu.yaml), the same steps, learning-rate
schedule, seeds and samples per step. keepfit_v2 splits the `--batch-size` samples into 3/4 public + 1/4 elite
(data.mix: paired) and the single-stream methods draw elite samples with probability 1/4 (data.mix: ratio), so
they see the same number and mix of images; keepfit_v1 runs as released, 1/2 public + 1/2 elite per step (the
same number of images, more of them elite; keepfit_v1_cpu.yaml has the release's other settings). Each run trains in its own `python -m pretrain train` process,
then `pretrain.evaluate.evaluate` scores it on the evaluation shards (zero-shot and linear probe, averaged over
the evaluation datasets) and on the elite set's val split (retrieval). A method whose objective is not
registered (pretrain.objectives.OBJECTIVES) is skipped with a note.

Seeds: every method trains once per seed of `--seeds` (`--seed K` is `--seeds K`); the seed sets the model's
initialisation, the data order and the augmentation. The synthetic benchmark is made once, with DATA_SEED, and
the linear probe's split uses DATA_SEED for every run too: the spread over seeds is the spread of training alone,
and tables made with other --seeds compare on the same data.

FLAIR init: per seed, one `flair` run of `--flair_init_steps` steps (default half of --steps; 0: none) in
OUT/runs/seed<k>/flair_init; every method of `--from_flair` (default flair and keepfit_v1) starts from its
final checkpoint (`--model.init_from RUN_DIR`; training-only modules start fresh) and then trains its --steps, so flair and
keepfit_v1 compare the same starting weights and the same total budget (init + steps); the other methods start
from their config's weights with --steps.

Outputs in OUT: runs/seed<k>/<method> (and <method>.log), ablation.json (every metric of every run, and per
method the mean and sample std over seeds), ablation.md (mean +- std tables, the final loss terms and the collapse
diagnostic, which differences to flair exceed the seed spread, the exact command) and ablation.png. Run again
with the same OUT, it continues: a run that already reached its steps is evaluated again, not retrained.
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

from pretrain.ablate_report import (COLUMNS, aggregate, beyond_spread, fmt, loss_table, plot, results_table,
                                    spread_section)

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
PAIRED = ("keepfit_v1", "keepfit_v2")  # a public and an elite batch per step (data.mix: paired)
# --preset flair: FLAIR's input, text pooling and temperature range on every method (README "FLAIR parity"); the
# unseen-category hold-out and the definition swap need FLAIR's data and dictionary, so they stay off here
PRESETS: dict[str, list[str]] = {
    "ours": [],
    "flair": ["--data.style", "flair", "--data.balance_datasets", "true", "--model.vision.pixel_scaling", "unit",
              "--model.text.pooling", "flair", "--model.min_logit_scale", "1.0"],
}
INIT = "flair_init"  # the run every --from_flair method of a seed starts from
DATA_SEED = 0  # the benchmark's synthesis and the linear probe's split, the same for every seed
# metrics.jsonl keys that are not loss terms (keys with a "/" are the collapse diagnostic, kept as they are)
NOT_TERMS = frozenset({"step", "loss", "lr", "logit_scale", "samples_per_s", "mem_mib", "data_lost"})


@dataclass
class AblateConfig:
    out: str
    """Output folder (runs, data, ablation.md/json/png)."""
    methods: list[Method] = field(default_factory=lambda: list(METHODS))
    """Methods to compare."""
    steps: int = 250
    """Optimizer steps per method (after the FLAIR init for the --from_flair methods)."""
    batch_size: int = 32
    """Samples per step (public + elite)."""
    lr: float = 2e-3
    """Peak learning rate (the demo config's)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of model init, data order and augmentation: every method trains once per seed; also --seed K."""
    from_flair: list[Method] = field(default_factory=lambda: ["flair", "keepfit_v1"])
    """Methods that start from their seed's FLAIR init run (none: every method from its config's weights)."""
    flair_init_steps: int | None = None
    """Steps of the FLAIR init run of each seed (default: half of --steps; 0: no init run)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage of every run."""
    public: str | None = None
    """Public shard set (default: synthesise one under OUT/data)."""
    elite: str | None = None
    """Elite shard set with a val split (default: synthesised)."""
    eval_shards: str | None = None
    """Evaluation shard set with a test split (default: synthesised); also --eval."""
    synth: list[int] = field(default_factory=lambda: [600, 200, 200])
    """Images to synthesise per set (public, elite, eval) when no shard sets are given (once, for every seed)."""
    image_size: int = 96
    """Image side of the synthesised shards and the model."""
    k_shots: list[int] = field(default_factory=list)
    """k-shot probes (none by default)."""
    preset: Literal["ours", "flair"] = "ours"
    """ours: each method's config as shipped; flair: plus FLAIR's data style, [0, 1] pixels, dataset balance,
    text pooling and [1, 100] logit scale on every method (PRESETS)."""


@dataclass(frozen=True)
class Run:
    """One training of the ablation: a method (or the FLAIR init, name INIT) at one seed."""

    seed: int
    name: str
    method: str
    dir: Path
    steps: int
    init_from: Path | None = None  # this seed's FLAIR init run folder

    @property
    def label(self) -> str:
        return f"seed{self.seed}/{self.name}"


def init_steps(args: AblateConfig) -> int:
    return args.steps // 2 if args.flair_init_steps is None else args.flair_init_steps


def init_methods(args: AblateConfig) -> list[str]:
    """The methods that start from the FLAIR init run (none when it is off)."""
    return [m for m in args.methods if m in args.from_flair] if init_steps(args) > 0 else []


def plan(args: AblateConfig, out: Path) -> list[Run]:
    """Every training, in order: per seed, the FLAIR init run (when a method starts from it), then each method."""
    runs = []
    starts_from_init = init_methods(args)
    for seed in args.seeds:
        folder = out / "runs" / f"seed{seed}"
        if starts_from_init:
            runs.append(Run(seed, INIT, "flair", folder / INIT, init_steps(args)))
        for method in args.methods:
            init = folder / INIT if method in starts_from_init else None
            runs.append(Run(seed, method, method, folder / method, args.steps, init))
    return runs


def paired_split(method: str, batch_size: int) -> tuple[int, int]:
    """(public, elite) samples per step of a paired method: keepfit_v1 1:1 as released, keepfit_v2 3:1."""
    elite = batch_size // 2 if method == "keepfit_v1" else batch_size // 4
    return batch_size - elite, elite


def contrastive_batch(method: str, batch_size: int) -> int:
    """Samples per step of the `contrastive` term: keepfit_v1 computes it on its public half alone (the elite
    half has its own term); every other method on the whole batch."""
    return paired_split(method, batch_size)[0] if method == "keepfit_v1" else batch_size


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


def train_command(run: Run, sets: dict[str, Path], args: AblateConfig) -> list[str]:
    config, extra = METHOD_CONFIGS[run.method]
    public, elite = paired_split(run.method, args.batch_size)
    data = (["--data.mix", "paired", "--data.batch_size", str(public),
             "--data.elite_batch_size", str(elite)] if run.method in PAIRED else
            ["--data.mix", "ratio", "--data.batch_size", str(args.batch_size), "--data.elite_fraction", "0.25"])
    init = ["--model.init_from", str(run.init_from)] if run.init_from else []
    return [sys.executable, "-m", "pretrain", "train", "--config", str(CONFIGS / config), *extra,
            "--run.dir", str(run.dir), "--run.steps", str(run.steps), "--run.seed", str(run.seed),
            "--run.log_every", str(max(1, run.steps // 10)), "--run.save_every", "0", "--run.resume", "auto",
            "--data.public", str(sets["public"]), "--data.elite", str(sets["elite"]), "--data.seed", str(run.seed),
            "--data.workers", "1", "--data.image_size", str(args.image_size),
            "--model.vision.image_size", str(args.image_size), *data, *init,
            "--engine.zero_stage", str(args.zero_stage), "--engine.lr", str(args.lr),
            "--engine.warmup_steps", str(max(1, run.steps // 10)), "--engine.total_steps", str(run.steps),
            *PRESETS[args.preset]]


def finished(run: Run) -> bool:
    """The run's newest checkpoint is the one of its last step (it saves only at the end: run.save_every 0)."""
    from pretrain.checkpoint import step_tag

    latest = run.dir / "checkpoints" / "latest"
    return latest.is_file() and latest.read_text(encoding="utf-8").strip() == step_tag(run.steps)


def train_metrics(run_dir: Path) -> dict[str, float]:
    """The run's last log line (means over its last log interval): the loss as final_loss, each loss term as
    loss/<term>, and the collapse diagnostic (cos_image/<term>, cos_text/<term>) where the trainer logged it."""
    path = run_dir / "metrics.jsonl"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    if not lines:
        return {"final_loss": float("nan")}
    last = json.loads(lines[-1])  # a resumed run appends: the last line is the newest
    row = {"final_loss": float(last.get("loss", float("nan")))}
    for key, value in last.items():
        if key not in NOT_TERMS and isinstance(value, (int, float)):
            row[key if "/" in key else f"loss/{key}"] = float(value)
    return row


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


def make_report(per_seed: dict[str, dict[str, dict[str, float]]], notes: list[str], command: str,
                args: AblateConfig) -> dict[str, Any]:
    """ablation.json without the evaluations' details: every run's row (per_seed[method][seed]), mean, std, the
    comparison with flair, and what the rows started from."""
    per_seed = {method: rows for method, rows in per_seed.items() if rows}
    mean, std = aggregate(per_seed)
    return {"command": command, "seeds": list(args.seeds), "data_seed": DATA_SEED,
            "flair_init": {"steps": init_steps(args), "methods": init_methods(args)},
            "mean": mean, "std": std, "vs_flair": beyond_spread(mean, std), "per_seed": per_seed, "notes": notes}


def markdown(report: dict[str, Any], args: AblateConfig) -> str:
    """ablation.md: the budget, the mean ± std table, the losses with the collapse diagnostic, the comparison."""
    mean, std, per_seed = report["mean"], report["std"], report["per_seed"]
    n_init, from_init = report["flair_init"]["steps"], report["flair_init"]["methods"]
    preset = PRESETS[args.preset]
    init_text = (f"Rows with init `{INIT}` started from their seed's FLAIR init run ({n_init} steps of flair with "
                 f"the same batch and lr, runs/seed<k>/{INIT}), so their total budget is {n_init} + {args.steps} = "
                 f"{n_init + args.steps} steps; the other rows trained {args.steps} steps from their config's "
                 "initial weights." if from_init else "Every row trained from its config's initial weights.")
    lines = ["# Ablation: every method on the same budget and seeds (synthetic benchmark)", "",
             f"Command: `{report['command']}`", "",
             f"Budget per method and seed: {args.steps} steps x {args.batch_size} samples (keepfit_v1 1/2 public + "
             "1/2 elite in two batches, as released; keepfit_v2 3/4 + 1/4 in two batches; the others one stream, "
             f"elite with probability 1/4), lr {args.lr}, ZeRO-{args.zero_stage}, demo CPU model at "
             f"{args.image_size} px, preset {args.preset}{' (' + ' '.join(preset) + ')' if preset else ''}. "
             f"{init_text} Seeds {', '.join(map(str, report['seeds']))}: each sets model init, data order and "
             "augmentation; the benchmark and the linear probe's split are the same for every seed (seed "
             f"{report['data_seed']}). Cells are mean ± sample std over the seeds (– with one seed). "
             "ZS / LP: zero-shot and linear-probe balanced accuracy (ACA) and AUC, averaged over the evaluation "
             "datasets; retrieval on the elite val split; BLEU-4 / ROUGE-L of greedy captions of the elite val "
             "images (methods with a caption decoder).", ""]
    lines += results_table(mean, std, {m: len(rows) for m, rows in per_seed.items()},
                           {m: INIT for m in from_init})
    ln_batch = {method: math.log(contrastive_batch(method, args.batch_size)) for method in mean}
    lines += loss_table(mean, std, ln_batch) + spread_section(report)
    lines += [""] + [f"- {note}" for note in report["notes"]] + ["", "![ablation](ablation.png)", ""]
    return "\n".join(lines)


def _train(run: Run, sets: dict[str, Path], args: AblateConfig, env: dict[str, str], out: Path,
           notes: list[str]) -> bool:
    """Train `run` in its own process; False, with a note, when it fails."""
    cmd = train_command(run, sets, args)
    print(f"== {run.label}: {shlex.join(cmd[1:])}", flush=True)
    run.dir.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log = run.dir.with_name(f"{run.name}.log")
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        notes.append(f"{run.label}: training failed (exit {done.returncode}); see {log.relative_to(out)}")
        print(done.stdout[-2000:] + done.stderr[-4000:], file=sys.stderr)
    return done.returncode == 0


def run_ablation(args: AblateConfig, argv: list[str]) -> int:
    """Train and evaluate every run of plan(args); `argv` is recorded as the command in ablation.md."""
    if len(args.synth) != 3:
        print(f"{PROG}: error: --synth takes three counts: PUBLIC ELITE EVAL", file=sys.stderr)
        return 2
    from pretrain.evaluate import EvalConfig, evaluate, load_run_model
    from pretrain.eval_inputs import finite_or_none
    from pretrain.objectives import OBJECTIVES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.public and args.elite and args.eval_shards:
        sets = {"public": Path(args.public), "elite": Path(args.elite), "eval": Path(args.eval_shards)}
    elif args.public or args.elite or args.eval_shards:
        print(f"{PROG}: error: give all of --public, --elite and --eval, or none (to synthesise)", file=sys.stderr)
        return 2
    else:
        sets = build_benchmark(out, args.synth, DATA_SEED, args.image_size)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    notes = [f"{m}: skipped, its objective is not registered in pretrain.objectives"
             for m in args.methods if m not in OBJECTIVES]
    per_seed: dict[str, dict[str, dict[str, float]]] = {m: {} for m in args.methods}
    details: dict[str, dict[str, Any]] = {m: {} for m in args.methods}
    no_init: set[int] = set()  # seeds whose FLAIR init run failed
    for run in plan(args, out):
        if run.method not in OBJECTIVES:
            continue
        if run.init_from is not None and run.seed in no_init:
            notes.append(f"{run.label}: skipped, its FLAIR init run failed")
            continue
        was_done = finished(run)
        if was_done:
            print(f"== {run.label}: already at step {run.steps}, evaluated again, not retrained", flush=True)
        elif not _train(run, sets, args, env, out, notes):
            if run.name == INIT:
                no_init.add(run.seed)
            continue
        if run.name == INIT:  # the methods that start from it read its final checkpoint (model.init_from)
            continue
        try:
            model, tokenizer, _ = load_run_model(run.dir)
            metrics = evaluate(model, tokenizer, EvalConfig(eval_shards=str(sets["eval"]), split="test",
                                                            retrieval_shards=str(sets["elite"]), retrieval_split="val",
                                                            k_shots=list(args.k_shots), seed=DATA_SEED))
        except ValueError as err:  # e.g. NaN embeddings from weights an older version let turn non-finite
            notes.append(f"{run.label}: evaluation failed ({str(err).splitlines()[0]}); see runs/{run.label}.log")
            continue
        row = {**summarise(metrics), **train_metrics(run.dir)}
        per_seed[run.method][str(run.seed)] = row
        details[run.method][str(run.seed)] = metrics
        print(f"   {run.label}: " + ", ".join(f"{t} {fmt(row[k])}" for k, t in COLUMNS), flush=True)
    report = make_report(per_seed, notes, shlex.join(["retina-pretrain", "ablate", *argv]), args)
    details = {method: runs for method, runs in details.items() if runs}
    (out / "ablation.json").write_text(json.dumps(finite_or_none({**report, "metrics": details}), indent=1) + "\n",
                                       encoding="utf-8")
    (out / "ablation.md").write_text(markdown(report, args), encoding="utf-8")
    plot(report["mean"], report["std"], out / "ablation.png")
    print(f"table: {out / 'ablation.md'}")
    return 0 if report["mean"] and not any("failed" in n for n in notes) else 1
