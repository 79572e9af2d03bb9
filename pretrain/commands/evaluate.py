"""`retina-pretrain eval`: transfer evaluation of a checkpoint (pretrain.evaluate), from the command line.

    retina-pretrain eval --run RUN_DIR --eval_shards demo-output/shards/eval --report
    retina-pretrain eval --run RUN_DIR --eval_shards EVAL --retrieval_shards demo-output/shards/elite

--run and --eval_shards are required. Results go to OUT/metrics.json (default RUN_DIR/eval); --report also
writes OUT/report.md with its PNGs. --protocol flair|both runs FLAIR's zero-shot and linear probe (with
--adapters clip_adapter tip_adapter tip_adapter_f and --adapter_shots 1 5 10 its few-shot adapters too).
The argparse-era spellings still work: --eval-shards, --k-shots 1 5 10 (--k-shots alone: no k-shot probes),
--no-linear-probe, --no-prompt-ensemble, --no-prompt-description.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

PROG = "retina-pretrain eval"


def cli_main(argv: list[str]) -> int:
    from pretrain.evaluate import EvalConfig, EvalInputError
    from shards.commandline import Command, command_parser, parse_command

    _, cfg = parse_command(command_parser(Command(EvalConfig), prog=PROG, description=__doc__), argv)
    try:
        return _run(cfg)
    except EvalInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def _run(cfg) -> int:
    import torch

    from pretrain.eval_inputs import shard_urls_or_fail
    from pretrain.evaluate import EvalInputError, evaluate, load_run_model, write_metrics
    from shards.output_paths import OutputPathError, check_output_dir

    if cfg.run is None or cfg.eval_shards is None:
        raise EvalInputError("--run and --eval_shards are required")
    if cfg.batch_size < 1 or cfg.k_shot_repeats < 1 or any(k < 1 for k in cfg.k_shots):
        raise EvalInputError("--batch_size, --k_shot_repeats and every --k_shots value must be >= 1")
    if not 0.0 < cfg.probe_train_fraction < 1.0:
        raise EvalInputError(f"--probe_train_fraction must be in (0, 1), got {cfg.probe_train_fraction}")
    check_protocol_options(cfg)
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.run) / "eval"
    try:
        check_output_dir(out_dir, "--out" if cfg.out else "--run (its eval/ folder)")
    except OutputPathError as err:
        raise EvalInputError(str(err)) from None
    # Check the shard sets before the (slower) model load, so a typo fails in a second.
    shard_urls_or_fail(cfg.eval_shards, cfg.split)
    if cfg.retrieval_shards is not None:
        shard_urls_or_fail(cfg.retrieval_shards, cfg.retrieval_split)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, _ = load_run_model(cfg.run, cfg.checkpoint, device)
    metrics = {"run": str(cfg.run), "checkpoint": str(cfg.checkpoint or cfg.run), **evaluate(model, tokenizer, cfg)}
    path = write_metrics(metrics, out_dir)
    print(format_table(metrics))
    print(f"metrics: {path}")
    if cfg.report:
        from pretrain.report import write_report

        print(f"report: {write_report(cfg.run, metrics, out_dir)}")
    return 0


def check_protocol_options(cfg) -> None:
    """EvalInputError for a --protocol, --adapters, --adapter_shots or --flair_folds that cannot run."""
    from pretrain.adapters import ADAPTERS
    from pretrain.evaluate import PROTOCOLS, EvalInputError

    if cfg.protocol not in PROTOCOLS:
        raise EvalInputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    unknown = [a for a in cfg.adapters if a not in ADAPTERS]
    if unknown:
        raise EvalInputError(f"unknown adapter(s) {', '.join(unknown)}; known: {', '.join(ADAPTERS)}")
    if cfg.adapters and cfg.protocol == "ours":
        raise EvalInputError("--adapters are FLAIR's protocols: they need --protocol flair or both")
    if cfg.flair_folds < 1 or any(k < 1 for k in cfg.adapter_shots):
        raise EvalInputError("--flair_folds and every --adapter_shots value must be >= 1")


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _protocol_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(row label, results) per dataset and protocol: ours as `NAME`, FLAIR's as `NAME [flair]`."""
    rows = []
    for name, d in metrics["datasets"].items():
        if "zero_shot" in d:
            rows.append((name, d))
        if "flair" in d:
            rows.append((f"{name} [flair]", d["flair"]))
    return rows


def format_table(metrics: dict[str, Any]) -> str:
    """A compact fixed-width summary: one line per dataset and protocol (k-shot columns: our probe's; FLAIR's
    adapters: their ACA by k), then the retrieval line."""
    results = _protocol_rows(metrics)
    ks = sorted({int(k) for _, d in results for k in d.get("k_shot", {})})
    adapters = [(a, int(k)) for a in metrics.get("adapters", []) for k in sorted(
        {int(k) for _, d in results for k in d.get("adapters", {}).get(a, {})})]
    head = ["dataset", "C", "n", "ZS ACA", "ZS F1", "ZS AUC", "ZS kappa", "LP ACA", "LP AUC"]
    head += [f"{k}-shot ACA" for k in ks] + [f"{a} {k}-shot ACA" for a, k in adapters]
    rows = [head]
    for name, d in results:
        zs, lp = d["zero_shot"], d.get("linear_probe", {})
        row = [name, str(len(d["classes"])), str(d["n"]), _fmt(zs["aca"]), _fmt(zs["macro_f1"]), _fmt(zs["auc"]),
               _fmt(zs.get("kappa")), _fmt(lp.get("aca")), _fmt(lp.get("auc"))]
        row += [_fmt(d.get("k_shot", {}).get(str(k), {}).get("aca")) for k in ks]
        row += [_fmt(d.get("adapters", {}).get(a, {}).get(str(k), {}).get("aca")) for a, k in adapters]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        lines.append(f"retrieval ({r['n']} pairs): " + "  ".join(
            f"{d}_R@{k} {_fmt(r[f'{d}_R@{k}'])}" for d in ("i2t", "t2i") for k in (1, 5, 10)))
    if "captioning" in metrics:
        c = metrics["captioning"]
        lines.append(f"captioning ({c['n']} images): BLEU-4 {_fmt(c['bleu4'])}  ROUGE-L {_fmt(c['rouge_l'])}")
    return "\n".join(lines)
