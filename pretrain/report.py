"""The run report: one Markdown page with PNGs, written next to the evaluation's metrics.json.

    write_report(run_dir, metrics, out_dir)   # -> out_dir/report.md, loss.png, confusion_<dataset>.png

It reads RUN_DIR/config.yaml (as plain YAML, so a report still renders if the config schema moved on) and
RUN_DIR/metrics.jsonl (one record per log interval; a resumed run appends, so the LAST record of each step
wins), and takes the evaluation results as the dict `pretrain.evaluate.evaluate` returns. Figures are drawn
on matplotlib Figure objects with the Agg canvas, never through pyplot, so no global backend is touched.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_training_log", "write_report"]

# metrics.jsonl fields that are not loss terms
NON_LOSS = frozenset({"step", "lr", "logit_scale", "samples_per_s", "mem_mib", "data_skipped", "data_lost"})
METRIC_NAMES = (("aca", "ACA"), ("macro_f1", "macro-F1"), ("auc", "AUC"), ("kappa", "kappa"))


def read_training_log(run_dir: str | Path) -> list[dict[str, float]]:
    """Records of RUN_DIR/metrics.jsonl sorted by step, the last one of each step kept; [] if absent.
    Unreadable lines (e.g. a half-written last line after a crash) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            by_step[int(record["step"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return [by_step[s] for s in sorted(by_step)]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


# ----------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_losses(records: list[dict[str, float]], path: Path) -> None:
    """Every loss term (and the weighted total `loss`) against the step; the collapse diagnostic (a cosine, not a
    loss) stays in the table."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    terms = [k for k in records[0] if k not in NON_LOSS and not k.startswith("cos_")]  # cos_*: collapse diagnostic
    steps = [r["step"] for r in records]
    for term in terms:
        ax.plot(steps, [r.get(term, float("nan")) for r in records], marker="o", markersize=3, label=term)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    """Counts with rows = true class, columns = predicted class, each cell annotated."""
    import numpy as np

    counts = np.asarray(matrix)
    size = 2.5 + 0.6 * len(classes)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    threshold = counts.max() / 2 if counts.size else 0
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path)


# ----------------------------------------------------------------------------- sections


def _config_section(run_dir: Path) -> list[str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return ["## Configuration", "", f"No config.yaml in {run_dir.name}.", ""]
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    get = lambda *keys: _dig(cfg, keys)  # noqa: E731
    rows = [
        ["method", str(get("method"))],
        ["steps", str(get("run", "steps"))],
        ["image tower", f"{get('model', 'vision', 'name')} @ {get('model', 'vision', 'image_size')} px"],
        ["text tower", f"{get('model', 'text', 'name_or_path')} (max {get('model', 'text', 'max_len')} tokens)"],
        ["embedding dim", str(get("model", "embed_dim"))],
        ["data", f"public {get('data', 'public')}, elite {get('data', 'elite')}, mix {get('data', 'mix')}"],
        ["batch size / rank", str(get("data", "batch_size"))],
        ["engine", f"ZeRO {get('engine', 'zero_stage')}, {get('engine', 'precision')}, lr {get('engine', 'lr')}"],
        ["loss weights", json.dumps(get("loss_weights"))],
    ]
    return ["## Configuration", "", *_table(["setting", "value"], rows)]


def _dig(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _training_section(records: list[dict[str, float]], out_dir: Path) -> list[str]:
    lines = ["## Training", ""]
    if not records:
        return [*lines, "No metrics.jsonl records (the run logged no interval).", ""]
    last = records[-1]
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    rows = [["steps logged", str(len(records))], ["last step", str(int(last["step"]))],
            ["final loss", _fmt(last.get("loss"), 4)],
            ["samples/s (mean of intervals)", _fmt(sum(speeds) / len(speeds) if speeds else None, 1)],
            ["peak memory (MiB)", _fmt(max((r.get("mem_mib", 0.0) for r in records)), 0)],
            ["data lost (samples)", _fmt(last.get("data_lost", last.get("data_skipped")), 0)]]
    rows += [[f"final {k}", _fmt(v, 4)] for k, v in last.items() if k not in NON_LOSS and k != "loss"]
    plot_losses(records, out_dir / "loss.png")
    return [*lines, *_table(["", ""], rows), "![loss per step](loss.png)", ""]


def _metric_cells(result: dict[str, Any], std: bool = False) -> list[str]:
    cells = []
    for key, _ in METRIC_NAMES:
        value = _fmt(result.get(key))
        if std and result.get(f"{key}_std") is not None and value != "-":
            value += f" ± {_fmt(result[f'{key}_std'])}"
        cells.append(value)
    return cells


def _flair_sections(datasets: dict[str, Any]) -> list[str]:
    """FLAIR's protocols (pretrain.flair_protocols): zero-shot, linear probe and adapters, each named."""
    flair = {d: r["flair"] for d, r in datasets.items() if "flair" in r}
    if not flair:
        return []
    names = [label for _, label in METRIC_NAMES]
    lines = ["## FLAIR protocols", "", "As FLAIR's public code runs them (pretrain.flair_protocols): FLAIR's class "
             "lists and prompts; linear probe and adapters as mean ± std over seeded 80/20 (K-shot/20%) splits.", "",
             "### Zero-shot (FLAIR)", ""]
    lines += _table(["dataset", "class list", "classes", "n", *names],
                    [[d, r["class_list"], str(len(r["classes"])), str(r["n"]), *_metric_cells(r["zero_shot"])]
                     for d, r in flair.items()])
    probes = [[d, str(r["linear_probe"].get("folds", "-")), *_metric_cells(r["linear_probe"], std=True)]
              for d, r in flair.items() if "linear_probe" in r]
    if probes:
        lines += ["### Linear probe (FLAIR: logistic regression on backbone features)", ""]
        lines += _table(["dataset", "folds", *names], probes)
    adapters = [[d, a, k, str(s.get("folds", "-")), *_metric_cells(s, std=True)]
                for d, r in flair.items() for a, by_k in r.get("adapters", {}).items() for k, s in by_k.items()]
    if adapters:
        lines += ["### Few-shot adapters (FLAIR)", ""]
        lines += _table(["dataset", "adapter", "k", "folds", *names], adapters)
    return lines


def _eval_sections(metrics: dict[str, Any], out_dir: Path) -> list[str]:
    all_datasets: dict[str, Any] = metrics.get("datasets", {})
    datasets = {d: r for d, r in all_datasets.items() if "zero_shot" in r}  # our protocols ran
    names = [label for _, label in METRIC_NAMES]
    lines = ["## Zero-shot classification", "",
             "Prompt-ensemble class embeddings; kappa (quadratic) only for DR grading.", ""] if datasets else []
    lines += _table(["dataset", "classes", "n", *names],
                    [[d, str(len(r["classes"])), str(r["n"]), *_metric_cells(r["zero_shot"])]
                     for d, r in datasets.items()]) if datasets else []
    probed = {d: r for d, r in datasets.items() if "linear_probe" in r}
    if probed:
        lines += ["## Linear probe", ""]
        rows = []
        for d, r in probed.items():
            lp = r["linear_probe"]
            if "skipped" in lp:
                rows.append([d, "-", "-", *["-"] * len(names)])
            else:
                rows.append([d, str(lp["n_train"]), str(lp["n_test"]), *_metric_cells(lp)])
        lines += _table(["dataset", "train", "test", *names], rows)
    shots = [[d, k, str(s["repeats"]), *_metric_cells(s, std=True)]
             for d, r in datasets.items() for k, s in r.get("k_shot", {}).items()]
    if shots:
        lines += ["## k-shot linear probe", "", "Mean ± standard deviation over the repeats.", ""]
        lines += _table(["dataset", "k", "repeats", *names], shots)
    lines += _flair_sections(all_datasets)
    if "retrieval" in metrics:
        r = metrics["retrieval"]
        lines += ["## Image-text retrieval", "", f"{r['n']} image-caption pairs of {r['split']}.", ""]
        lines += _table(["direction", "R@1", "R@5", "R@10"],
                        [[label, *(_fmt(r.get(f"{d}_R@{k}")) for k in (1, 5, 10))]
                         for d, label in (("i2t", "image → text"), ("t2i", "text → image"))])
    if datasets:
        lines += ["## Confusion matrices (zero-shot)", ""]
    for d, r in datasets.items():
        png = f"confusion_{_safe_name(d)}.png"
        plot_confusion(r["zero_shot"]["confusion_matrix"], r["classes"], f"{d} (zero-shot)", out_dir / png)
        lines += [f"### {d}", "", f"![{d} confusion matrix]({png})", ""]
    return lines


def write_report(run_dir: str | Path, metrics: dict[str, Any], out_dir: str | Path) -> Path:
    """Write out_dir/report.md (config, training summary, eval tables) with loss.png and one
    confusion_<dataset>.png per evaluation dataset; returns the path of report.md."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: {run_dir.name}", ""]
    if metrics.get("checkpoint"):
        lines += [f"Checkpoint `{metrics['checkpoint']}`, evaluated on `{metrics.get('eval_shards')}` "
                  f"(split {metrics.get('split')}); all numbers in [metrics.json](metrics.json).", ""]
    lines += _config_section(run_dir)
    lines += _training_section(read_training_log(run_dir), out_dir)
    lines += _eval_sections(metrics, out_dir)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
