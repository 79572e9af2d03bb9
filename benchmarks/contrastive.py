"""Contrastive-loss microbenchmark: `retina-bench contrastive` (also `python -m benchmarks contrastive`).

Sweeps the batch B (M = N = B, identity positives) and the embedding dimension D over the providers of
`benchmarks.contrastive_providers` (triton, chunked, chunked_2dir, eager, open_clip, inf_cl) in three
modes: forward, backward (alone, after an untimed forward) and full (forward + backward). Times are
medians of --repeats runs after --warmup runs, with the baselines measured in the same run; the FLOP rate
of each provider counts the products it actually performs. Peak memory (benchmarks.memory) is that of
one forward + backward beyond the inputs. The targets of the contrastive v2 work are evaluated on what
was measured and printed with the table.

Writes benchmarks/results/contrastive-<device>.json and a .png plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import device_info, device_slug, elapsed_ms, fmt, guarded, package_version, results_dir
from benchmarks.contrastive_providers import (
    DTYPES,
    LOGIT_SCALE,
    PRODUCTS,
    PRODUCTS_NOTE,
    PROVIDERS,
    available_providers,
    flops,
    make_inputs,
    make_loss,
)
from benchmarks.memory import measure_memory, memory_method

MODES = ("forward", "backward", "full")
BASELINES = ("eager", "open_clip", "chunked_2dir", "inf_cl")
SHORT = {"eager": "eager", "open_clip": "oclip", "chunked_2dir": "2dir", "inf_cl": "infcl"}

CPU_DEFAULTS = {"batch": [2048, 4096, 8192], "dim": [512], "repeats": 3, "warmup": 1, "dtype": "fp32",
                "providers": ["chunked", "chunked_2dir", "eager", "open_clip"]}
GPU_DEFAULTS = {"batch": [16384, 32768, 65536], "dim": [512, 768], "repeats": 10, "warmup": 3, "dtype": "bf16",
                "providers": ["triton", "eager", "open_clip", "inf_cl"]}
QUICK = {"batch": [128, 256], "dim": [32], "repeats": 3, "warmup": 1}

# The acceptance point: chunked must need at most a tenth of eager's memory at B = 16384, D = 512.
CHECK_BATCH, CHECK_DIM, CHECK_MAX_RATIO = 16384, 512, 0.1
PARALLEL_PROBE_MAX_BATCH = 8192


@dataclass
class Config:
    device: torch.device
    batch: list[int]
    dim: list[int]
    providers: list[str]
    modes: list[str]
    repeats: int
    warmup: int
    dtype: str
    chunk_size: int
    memory: bool
    memory_check: bool
    out: Path


# ---------------------------------------------------------------- timing

def clear_grads(inputs: tuple[torch.Tensor, ...]) -> None:
    for t in inputs:
        t.grad = None


def run_mode(loss: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], mode: str,
             device: torch.device) -> float:
    clear_grads(inputs)
    if mode == "forward":
        return elapsed_ms(lambda: loss(*inputs), device)
    if mode == "backward":
        out = loss(*inputs)  # untimed forward
        return elapsed_ms(out.backward, device)
    return elapsed_ms(lambda: loss(*inputs).backward(), device)


def time_point(provider: str, loss: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
               mode: str, cfg: Config) -> dict:
    batch, dim = inputs[0].shape

    def runs() -> list[float]:
        for _ in range(cfg.warmup):
            run_mode(loss, inputs, mode, cfg.device)
        return [run_mode(loss, inputs, mode, cfg.device) for _ in range(cfg.repeats)]

    status, times = guarded(runs, cfg.device)
    clear_grads(inputs)
    record = {"provider": provider, "batch": batch, "dim": dim, "mode": mode, "status": status}
    if status == "ok":
        record.update(runs_ms=times, median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times))
        record["tflops"] = flops(provider, mode, batch, dim) / (record["median_ms"] * 1e-3) / 1e12
    return record


# ---------------------------------------------------------------- peak memory

def memory_check(cfg: Config) -> dict:
    # One at a time (jobs=1): eager alone needs several GiB here.
    chunked, eager = measure_memory([("chunked", CHECK_BATCH, CHECK_DIM), ("eager", CHECK_BATCH, CHECK_DIM)],
                                    cfg.device, cfg.dtype, cfg.chunk_size, jobs=1)
    result = {"batch": CHECK_BATCH, "dim": CHECK_DIM, "chunk_size": cfg.chunk_size, "dtype": cfg.dtype,
              "chunked_mib": chunked.get("peak_mib"), "eager_mib": eager.get("peak_mib"),
              "chunked_status": chunked["status"], "eager_status": eager["status"],
              "max_ratio": CHECK_MAX_RATIO, "ratio": None, "passed": None}
    if chunked["status"] == "ok" and eager["status"] == "ok" and eager["peak_mib"] > 0:
        result["ratio"] = chunked["peak_mib"] / eager["peak_mib"]
        result["passed"] = result["ratio"] <= CHECK_MAX_RATIO
    return result


# ---------------------------------------------------------------- the sweep

def sweep(cfg: Config) -> tuple[list[dict], list[dict]]:
    losses = {p: make_loss(p, cfg.chunk_size) for p in cfg.providers}
    timings = []
    memory = []
    for batch in cfg.batch:
        for dim in cfg.dim:
            inputs = make_inputs(batch, dim, cfg.dtype, cfg.device)
            for provider in cfg.providers:
                for mode in cfg.modes:
                    record = time_point(provider, losses[provider], inputs, mode, cfg)
                    timings.append(record)
                    shown = f"{record['median_ms']:.2f} ms" if record["status"] == "ok" else record["status"]
                    print(f"  {provider:>9} B={batch:<6} D={dim:<4} {mode:<8} {shown}", file=sys.stderr, flush=True)
            del inputs
    if cfg.memory:
        print("  measuring peak memory ...", file=sys.stderr, flush=True)
        points = [(p, b, d) for b in cfg.batch for d in cfg.dim for p in cfg.providers]
        # Two probes at a time save wall time; above PARALLEL_PROBE_MAX_BATCH one eager probe alone needs GiBs.
        small = [pt for pt in points if pt[1] <= PARALLEL_PROBE_MAX_BATCH]
        large = [pt for pt in points if pt[1] > PARALLEL_PROBE_MAX_BATCH]
        jobs = min(2, os.cpu_count() or 1)
        memory = (measure_memory(small, cfg.device, cfg.dtype, cfg.chunk_size, jobs)
                  + measure_memory(large, cfg.device, cfg.dtype, cfg.chunk_size, jobs=1))
    return timings, memory


def add_ratios(records: list[dict], value: str, name: str, speedup: bool) -> None:
    """Against each baseline at the same (B, D, mode): speedup = baseline / value, else value / baseline."""
    key = lambda r: (r["provider"], r["batch"], r["dim"], r.get("mode"))  # noqa: E731
    ok = {key(r): r[value] for r in records if r["status"] == "ok"}
    for record in records:
        for base in BASELINES:
            base_value = ok.get((base, *key(record)[1:]))
            if record["status"] != "ok" or base_value is None:
                continue
            num, den = (base_value, record[value]) if speedup else (record[value], base_value)
            record[f"{name}_{base}"] = num / den if den > 0 else None


# ---------------------------------------------------------------- reporting

def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": package_version("triton"),
            "open_clip": package_version("open_clip_torch"), "inf_cl": package_version("inf-cl")}


def format_table(timings: list[dict], memory: list[dict]) -> str:
    mems = {(m["provider"], m["batch"], m["dim"]): m for m in memory}
    bases = [b for b in BASELINES if any(r["provider"] == b for r in timings)]
    header = (f"{'provider':>12} {'B':>6} {'D':>4} {'mode':<8} {'median ms':>10} {'min-max ms':>17} {'peak MiB':>9} "
              + "".join(f" {'x ' + SHORT[b]:>8}" for b in bases)
              + f" {'mem/eager':>9} {'mem/oclip':>9} {'TFLOP/s':>7}")
    lines = [header, "-" * len(header)]
    order = {p: i for i, p in enumerate(PROVIDERS)}
    for r in sorted(timings, key=lambda r: (r["batch"], r["dim"], MODES.index(r["mode"]), order[r["provider"]])):
        mem = mems.get((r["provider"], r["batch"], r["dim"]), {})
        if r["status"] != "ok":
            spread, median = "", r["status"]
        else:
            spread, median = f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['median_ms']:.2f}"
        lines.append(f"{r['provider']:>12} {r['batch']:>6} {r['dim']:>4} {r['mode']:<8} {median:>10} {spread:>17} "
                     f"{fmt(mem.get('peak_mib'), '.1f'):>9}"
                     + "".join(f" {fmt(r.get(f'speedup_vs_{b}'), '.2f'):>8}" for b in bases)
                     + f" {fmt(mem.get('memory_vs_eager'), '.3f'):>9} {fmt(mem.get('memory_vs_open_clip'), '.3f'):>9}"
                     f" {fmt(r.get('tflops'), '.1f'):>7}")
    lines.append("x <baseline>: speedup (baseline time / time); mem/...: peak memory / baseline peak; peak = one "
                 "forward + backward beyond the inputs; TFLOP/s: the products each provider performs / time")
    return "\n".join(lines)


def targets(timings: list[dict], memory: list[dict], device: torch.device) -> list[dict]:
    """The contrastive v2 targets, judged on this run's full-step medians and peaks (only where measured)."""
    time_of = {(r["provider"], r["batch"], r["dim"]): r for r in timings if r["mode"] == "full" and r["status"] == "ok"}
    peak_of = {(m["provider"], m["batch"], m["dim"]): m for m in memory if m["status"] == "ok"}
    ours = "triton" if device.type == "cuda" else "chunked"
    rules = ([("open_clip", "time", lambda b: 0.7 if b >= 32768 else 1.0), ("inf_cl", "time", lambda b: 1.0),
              ("open_clip", "memory", lambda b: 0.02)] if device.type == "cuda" else
             [("open_clip", "time", lambda b: 1 / 1.2), ("chunked_2dir", "time", lambda b: 1 / 1.5)])
    found = []
    for provider, batch, dim in sorted(k for k in time_of if k[0] == ours):
        for base, what, limit in rules:
            table = time_of if what == "time" else peak_of
            mine, theirs = table.get((ours, batch, dim)), table.get((base, batch, dim))
            if mine is None or theirs is None:
                continue
            value = "median_ms" if what == "time" else "peak_mib"
            ratio = mine[value] / theirs[value]
            found.append({"provider": ours, "baseline": base, "batch": batch, "dim": dim, "measure": what,
                          "ratio": ratio, "max_ratio": limit(batch), "met": ratio <= limit(batch)})
    return found


def format_targets(found: list[dict]) -> str:
    return "\n".join(f"target {t['provider']} vs {t['baseline']} B={t['batch']} D={t['dim']} {t['measure']}: "
                     f"{t['ratio']:.3f} of the baseline (at most {t['max_ratio']:.3f}): "
                     f"{'met' if t['met'] else 'NOT met'}" for t in found)


def series(records: list[dict], provider: str, dim: int, value: str,
           mode: str | None = None) -> tuple[list[int], list[float]]:
    """(B, value) of the successful records of one line; non-positive values cannot go on a log axis."""
    points = sorted((r["batch"], r[value]) for r in records
                    if (r["provider"], r["dim"], r.get("mode")) == (provider, dim, mode)
                    and r["status"] == "ok" and r[value] > 0)
    return [b for b, _ in points], [v for _, v in points]


def plot(result: dict, path: Path) -> None:
    """Full-step time and peak memory against B, one line per (provider, D), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    params = result["params"]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = dict(zip(PROVIDERS, ("tab:red", "tab:blue", "tab:cyan", "tab:gray", "tab:green", "tab:purple")))
    styles = dict(zip(params["dim"], ("-", "--", ":", "-.") * 4))
    for provider in params["providers"]:
        for dim, style in styles.items():
            line = {"color": colors[provider], "linestyle": style, "marker": "o", "label": f"{provider} D={dim}"}
            ax_time.plot(*series(result["timings"], provider, dim, "median_ms", "full"), **line)
            ax_mem.plot(*series(result["memory"], provider, dim, "peak_mib"), **line)
    ax_time.set(title=f"forward + backward, {params['dtype']}, {result['device']['name']}",
                ylabel="median time (ms)")
    ax_mem.set(title="peak memory of forward + backward", ylabel="peak beyond the inputs (MiB)")
    for ax, empty in ((ax_time, "no successful full-mode timing"),
                      (ax_mem, "peak memory not measured" if not result["memory"] else "no successful measurement")):
        ax.set_xlabel("batch B")
        if not any(len(line.get_xdata()) for line in ax.lines):
            ax.text(0.5, 0.5, empty, ha="center", transform=ax.transAxes)  # a log axis needs data
            ax.set(xticks=[], yticks=[])
            continue
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(params["batch"], [str(b) for b in params["batch"]])  # the swept sizes, not powers of ten
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- CLI

def build_parser(prog: str = "retina-bench contrastive") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", metavar="B",
                        help=f"batch sizes to sweep (M = N = B); default {' '.join(map(str, CPU_DEFAULTS['batch']))} "
                             f"on CPU, {' '.join(map(str, GPU_DEFAULTS['batch']))} on CUDA")
    parser.add_argument("--dim", type=int, nargs="+", metavar="D",
                        help="embedding dimensions to sweep; default 512 on CPU, 512 768 on CUDA")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS,
                        help=f"implementations to compare (triton and inf_cl need CUDA); default "
                             f"{' '.join(CPU_DEFAULTS['providers'])} on CPU, {' '.join(GPU_DEFAULTS['providers'])} "
                             "on CUDA")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="forward; backward = the backward alone after an untimed forward; "
                             "full = forward + backward (default: all)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement, the median is reported "
                                                    "(default 3 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed runs before the timed ones (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--dtype", choices=DTYPES, help="embedding dtype (default fp32 on CPU, bf16 on CUDA); "
                                                        "the logit scale stays fp32")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="row chunk of the chunked provider, the size of its B x chunk working set (default 1024)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run; auto = cuda when available (default auto)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory measurement of the sweep (on CPU: one fresh process per "
                             "provider, B and D)")
    parser.add_argument("--memory-check", action=argparse.BooleanOptionalAction, default=None,
                        help=f"measure only the peak memory of chunked and eager at B={CHECK_BATCH}, "
                             f"D={CHECK_DIM} (one forward + backward each) and require chunked <= "
                             f"{CHECK_MAX_RATIO:g} x eager; exits 1 if not. Default: on for a full CPU run, "
                             f"off on CUDA and with --quick")
    parser.add_argument("--out", type=Path,
                        help="results JSON; the plot goes beside it as .png "
                             "(default benchmarks/results/contrastive-<device>.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny smoke-test sizes: B {QUICK['batch']}, D {QUICK['dim']}, no memory check "
                             "(explicit --batch, --dim, --memory-check win)")
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """Fill the device-dependent defaults; explicit flags always win."""
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise SystemExit("retina-bench contrastive: --device cuda but CUDA is not available")
    device = torch.device("cuda" if want_cuda else "cpu")
    defaults = (GPU_DEFAULTS if want_cuda else CPU_DEFAULTS) | (QUICK if args.quick else {})
    pick = lambda name: defaults[name] if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    providers, skipped = available_providers(pick("providers"), device)
    check = args.memory_check if args.memory_check is not None else not (want_cuda or args.quick)
    out = args.out or default_out(device)
    return Config(device=device, batch=pick("batch"), dim=pick("dim"), providers=providers, modes=args.modes,
                  repeats=pick("repeats"), warmup=pick("warmup"), dtype=pick("dtype"), chunk_size=args.chunk_size,
                  memory=args.memory, memory_check=check, out=out), skipped


def default_out(device: torch.device) -> Path:
    return results_dir() / f"contrastive-{device_slug(device)}.json"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, skipped = resolve_config(args)
    for provider, why in skipped.items():
        print(f"retina-bench contrastive: skipping {provider} ({why})", file=sys.stderr)
    print(f"contrastive benchmark on {cfg.device.type}: B {cfg.batch}, D {cfg.dim}, {cfg.providers}, "
          f"{cfg.modes}, {cfg.dtype}", file=sys.stderr)
    timings, memory = sweep(cfg)
    add_ratios(timings, "median_ms", "speedup_vs", speedup=True)
    add_ratios(memory, "peak_mib", "memory_vs", speedup=False)
    check = None
    if cfg.memory_check:
        print(f"  memory check: chunked vs eager at B={CHECK_BATCH}, D={CHECK_DIM} ...", file=sys.stderr, flush=True)
        check = memory_check(cfg)

    params = {"batch": cfg.batch, "dim": cfg.dim, "providers": cfg.providers, "skipped_providers": skipped,
              "modes": cfg.modes, "repeats": cfg.repeats, "warmup": cfg.warmup, "dtype": cfg.dtype,
              "chunk_size": cfg.chunk_size, "logit_scale": LOGIT_SCALE, "positives": "identity (M = N = B)",
              "timer": "torch.cuda.Event" if cfg.device.type == "cuda" else "time.perf_counter",
              "memory": cfg.memory, "memory_method": memory_method(cfg.device), "memory_check": cfg.memory_check}
    result = {"benchmark": "contrastive", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": device_info(cfg.device), "versions": versions(), "params": params,
              "products": {"per_provider": {p: PRODUCTS[p] for p in cfg.providers}, "note": PRODUCTS_NOTE},
              "timings": timings, "memory": memory, "memory_check": check,
              "targets": targets(timings, memory, cfg.device), "plot": cfg.out.with_suffix(".png").name}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, cfg.out.with_suffix(".png"))

    print(format_table(timings, memory))
    print(format_targets(result["targets"]))
    if check is not None:
        verdict = {True: "ok", False: "FAILED", None: "inconclusive"}[check["passed"]]
        print(f"memory check B={CHECK_BATCH} D={CHECK_DIM}: chunked {fmt(check['chunked_mib'], '.1f')} MiB, "
              f"eager {fmt(check['eager_mib'], '.1f')} MiB, ratio {fmt(check['ratio'], '.4f')} "
              f"(required <= {CHECK_MAX_RATIO:g}): {verdict}")
    print(f"results written to {cfg.out} and {cfg.out.with_suffix('.png').name}")
    return 1 if check is not None and check["passed"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
