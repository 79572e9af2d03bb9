"""The ablation's statistics and tables: mean and sample std over seeds, which differences to flair exceed the
seed spread, the markdown tables and the plot (pretrain.ablate runs the trainings and writes them)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = (("zs_aca", "ZS ACA"), ("zs_auc", "ZS AUC"), ("lp_aca", "LP ACA"), ("lp_auc", "LP AUC"),
           ("i2t_R@1", "i2t R@1"), ("i2t_R@5", "i2t R@5"), ("t2i_R@1", "t2i R@1"), ("t2i_R@5", "t2i R@5"),
           ("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L"))
REFERENCE = "flair"  # the row the other methods are compared with

Table = dict[str, dict[str, float]]  # method -> metric -> value


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def aggregate(per_seed: dict[str, dict[str, dict[str, float]]]) -> tuple[Table, Table]:
    """(mean, sample std with ddof=1) per method and metric over the seeds where that metric is finite: NaN mean
    when no seed has it, NaN std when fewer than two have it."""
    mean: Table = {}
    std: Table = {}
    for method, rows in per_seed.items():
        keys = dict.fromkeys(k for row in rows.values() for k in row)
        values = {k: np.array([row[k] for row in rows.values() if finite(row.get(k))], dtype=float) for k in keys}
        mean[method] = {k: float(v.mean()) if v.size else float("nan") for k, v in values.items()}
        std[method] = {k: float(v.std(ddof=1)) if v.size > 1 else float("nan") for k, v in values.items()}
    return mean, std


def beyond_spread(mean: Table, std: Table) -> dict[str, dict[str, list[str]]]:
    """Per method but REFERENCE: the COLUMNS metrics whose mean differs from REFERENCE's by more than the larger
    of the two stds ("exceeds") and those that do not ("within"); a metric missing a mean or a std is in neither."""
    if REFERENCE not in mean:
        return {}
    out = {}
    for method in mean:
        if method == REFERENCE:
            continue
        verdict: dict[str, list[str]] = {"exceeds": [], "within": []}
        for key, _ in COLUMNS:
            cells = [mean[method].get(key), mean[REFERENCE].get(key), std[method].get(key), std[REFERENCE].get(key)]
            if all(finite(c) for c in cells):
                m, ref, s, s_ref = cells
                verdict["exceeds" if abs(m - ref) > max(s, s_ref) else "within"].append(key)
        out[method] = verdict
    return out


def fmt(v: Any) -> str:
    return f"{v:.3f}" if finite(v) else "-"


def pm(mean: Any, std: Any) -> str:
    """mean ± std; "–" for the std of one seed."""
    return "-" if not finite(mean) else f"{mean:.3f} ± {f'{std:.3f}' if finite(std) else '–'}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def results_table(mean: Table, std: Table, seeds: dict[str, int], init: dict[str, str]) -> list[str]:
    """Evaluation metrics per method (mean ± std), with what it started from and how many seeds finished."""
    head = ["method", "init", "seeds", *(title for _, title in COLUMNS), "final loss"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for method in mean:
        cells = [pm(mean[method].get(k), std[method].get(k)) for k in [k for k, _ in COLUMNS] + ["final_loss"]]
        lines.append(_row([method, init.get(method, "-"), str(seeds.get(method, 0)), *cells]))
    if mean:
        chance = next(iter(mean.values())).get("chance_aca")
        lines += ["", f"Chance: ACA {fmt(chance)} (mean of 1/classes), AUC 0.500."]
    return lines


def loss_table(mean: Table, std: Table, ln_batch: dict[str, float]) -> list[str]:
    """The final loss terms next to ln B, and the collapse diagnostic of the contrastive term."""
    lines = ["", "## Training losses at the end and the collapse diagnostic", "",
             "Means of each run's last log interval. contrastive: the public data's contrastive term (keepfit_v1: "
             "on its public samples alone; the others: on the whole batch), about ln B for a collapsed model, B "
             "its samples per step; cos image / cos text: mean pairwise cosine of that term's image / text "
             "embeddings (near 1: every sample maps to the same point; - where the run did not log it).", ""]
    head = ["method", "loss", "contrastive", "ln B", "cos image", "cos text", "other terms"]
    lines += [_row(head), "|" + "---|" * len(head)]
    for method in mean:
        m, s = mean[method], std[method]
        others = ", ".join(f"{k.removeprefix('loss/')} {pm(m[k], s[k])}" for k in m
                           if k.startswith("loss/") and k != "loss/contrastive") or "-"
        lines.append(_row([method, pm(m.get("final_loss"), s.get("final_loss")),
                           pm(m.get("loss/contrastive"), s.get("loss/contrastive")), f"{ln_batch[method]:.3f}",
                           pm(m.get("cos_image/contrastive"), s.get("cos_image/contrastive")),
                           pm(m.get("cos_text/contrastive"), s.get("cos_text/contrastive")), others]))
    return lines


def spread_section(report: dict[str, Any]) -> list[str]:
    """Per method, which metrics differ from REFERENCE's by more than the seed spread (report["vs_flair"])."""
    mean, std = report["mean"], report["std"]
    lines = ["", f"## Differences to {REFERENCE} beyond the seed spread", ""]
    titles = dict(COLUMNS)
    if len(report["seeds"]) < 2:
        return lines + ["One seed: no spread to compare against."]
    if not report["vs_flair"]:
        return lines + [f"No {REFERENCE} row to compare against."]
    lines += [f"A difference counts when |mean - mean of {REFERENCE}| exceeds the larger of the two stds: "
              "a coarse screen over a few seeds, not a significance test.", ""]
    ref = mean[REFERENCE]
    for method, verdict in report["vs_flair"].items():
        exceeds = ", ".join(f"{titles[k]} {mean[method][k] - ref[k]:+.3f} ({pm(mean[method][k], std[method][k])}"
                            f" vs {pm(ref[k], std[REFERENCE][k])})" for k in verdict["exceeds"]) or "none"
        within = ", ".join(titles[k] for k in verdict["within"]) or "none"
        lines.append(f"- {method}: beyond the spread: {exceeds}; within it: {within}.")
    return lines


def plot(mean: Table, std: Table, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [("zs_aca", "ZS ACA"), ("zs_auc", "ZS AUC"), ("lp_aca", "LP ACA"), ("i2t_R@5", "i2t R@5")]
    fig = Figure(figsize=(8, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(mean))
    for i, method in enumerate(mean):
        values = [mean[method].get(k, float("nan")) for k, _ in keys]
        errors = [std[method].get(k, float("nan")) for k, _ in keys]
        ax.bar(np.arange(len(keys)) + i * width, np.nan_to_num(values), width, label=method,
               yerr=np.nan_to_num(errors), capsize=3, error_kw={"linewidth": 1})
    if mean:
        chance = next(iter(mean.values())).get("chance_aca", float("nan"))
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance ACA")
    ax.set_xticks(np.arange(len(keys)) + width * (len(mean) - 1) / 2, [t for _, t in keys])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("same-budget comparison on the synthetic benchmark (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
