"""GPU tile sweep of the contrastive stripe kernels: forward and backward timed per candidate configuration.

The candidates are `kernels.contrastive.triton_stripe.SWEEP_CANDIDATES` that the committed compile-only
report (benchmarks/results/kernel-resources-sm90.json, `retina-bench resources`) passed for every label
rule: none that spills or misses wgmma costs GPU time. For each D the forward kernel (rows + columns, the
square case) and the backward (dS kernel + the dq/dk GEMMs, for each dS row chunk in --ds-rows) are
timed on bf16 inputs at B x B, identity positives, and checked against the default configuration's
result. FLOP rates count 1 product (2 B^2 D) for the forward and 3 for the backward.

    python benchmarks/contrastive_tile_sweep.py [--batch 32768] [--dims 512 768] [--out results.json]
    TRITON_INTERPRET=1 python benchmarks/contrastive_tile_sweep.py --device cpu --batch 64 --dims 40 --limit 2
                                                             # a smoke test of the script; timings mean nothing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_info, elapsed_ms  # noqa: E402
from kernels.contrastive.spec import LossOptions  # noqa: E402
from kernels.contrastive import triton_stripe as ts  # noqa: E402

KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "num_warps", "num_stages")
REPORT = REPO / "benchmarks" / "results" / "kernel-resources-sm90.json"


def eligible_candidates() -> dict[str, list[dict]]:
    """Per kernel ("fwd", "ds"), the candidates whose every compiled variant of that kernel passed the report
    (every candidate if the report is missing)."""
    candidates = [dict(zip(KEYS, c)) for c in ts.SWEEP_CANDIDATES]
    if not REPORT.exists():
        print(f"no {REPORT.name}: trying every candidate", flush=True)
        return {"fwd": candidates, "ds": candidates}
    rows = [r for r in json.loads(REPORT.read_text())["rows"] if r["variant"].startswith("candidate")]
    text = lambda c: " ".join(f"{k}={c[k]}" for k in KEYS)  # noqa: E731  (the report's config text)
    return {kernel: [c for c in candidates
                     if not any(r["kernel"] == kernel and r["config"] == text(c) and not r["ok"] for r in rows)]
            for kernel in ("fwd", "ds")}


def median_ms(fn, device: torch.device, reps: int = 7) -> float:
    for _ in range(2):
        fn()
    return statistics.median(elapsed_ms(fn, device) for _ in range(reps))


def sweep_dim(batch: int, dim: int, ds_rows: list[int], candidates: dict[str, list[dict]],
              device: torch.device) -> list[dict]:
    gen = torch.Generator(device=device).manual_seed(dim)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter's 16-bit dot is broken
    q = F.normalize(torch.randn(batch, dim, device=device, generator=gen), dim=1).to(dtype)
    k = F.normalize(torch.randn(batch, dim, device=device, generator=gen), dim=1).to(dtype)
    scale, opts = torch.tensor([50.0], device=device), LossOptions()
    grad = torch.full((batch,), 0.5 / batch, device=device)
    ref_row, ref_col = ts.stripe_forward(q, k, scale, None, None, 0, opts, True)
    ref_dq, _, _ = ts.stripe_backward(q, k, scale, ref_row, ref_col, grad, grad, None, None, 0, opts)
    product = 2.0 * batch * batch * dim
    rows = []
    for kernel, cfg in [("fwd", c) for c in candidates["fwd"]] + [("ds", c) for c in candidates["ds"]]:
        label = " ".join(f"{key}={cfg[key]}" for key in KEYS)
        try:
            if kernel == "fwd":
                row_lse, col_lse = ts.stripe_forward(q, k, scale, None, None, 0, opts, True, config=cfg)
                err = ((row_lse - ref_row).abs().max() + (col_lse - ref_col).abs().max()).item()
                fwd = median_ms(lambda: ts.stripe_forward(q, k, scale, None, None, 0, opts, True, config=cfg), device)
                row = dict(dim=dim, kernel="fwd", config=label, ms=fwd, tflops=product / (fwd * 1e-3) / 1e12,
                           err=err)
                rows.append(row)
                print(f"D={dim} fwd {label:<62} {fwd:8.2f} ms {row['tflops']:6.0f} TFLOP/s  err {err:.1e}",
                      flush=True)
                continue
            for chunk in ds_rows:
                dq, _, _ = ts.stripe_backward(q, k, scale, ref_row, ref_col, grad, grad, None, None, 0, opts,
                                              ds_rows=chunk, config=cfg)
                err = ((dq.float() - ref_dq.float()).norm() / ref_dq.float().norm()).item()
                bwd = median_ms(lambda: ts.stripe_backward(q, k, scale, ref_row, ref_col, grad, grad, None, None, 0,
                                                           opts, ds_rows=chunk, config=cfg), device)
                row = dict(dim=dim, kernel="bwd", config=label, ds_rows=chunk, ms=bwd,
                           tflops=3 * product / (bwd * 1e-3) / 1e12, err=err)
                rows.append(row)
                print(f"D={dim} bwd {label:<62} rows {chunk:5d} {bwd:8.2f} ms {row['tflops']:6.0f} TFLOP/s  "
                      f"rel err {err:.1e}", flush=True)
        except Exception as exc:  # out of resources on this device: not a candidate
            print(f"D={dim} {label} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32768)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--ds-rows", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke test of this script in the Triton interpreter (TRITON_INTERPRET=1, "
                             "fp32, tiny sizes); its timings mean nothing")
    parser.add_argument("--limit", type=int, help="try only the first N candidates per kernel")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    candidates = {kernel: found[:args.limit] for kernel, found in eligible_candidates().items()}
    print(f"candidates: {candidates}", flush=True)
    rows = [row for dim in args.dims for row in sweep_dim(args.batch, dim, args.ds_rows, candidates, device)]
    for dim in args.dims:
        for kernel in ("fwd", "bwd"):
            best = sorted((r for r in rows if r["dim"] == dim and r["kernel"] == kernel), key=lambda r: r["ms"])[:3]
            print(f"best {kernel} D={dim}: " + "; ".join(
                f"{r['config']}{' rows ' + str(r['ds_rows']) if 'ds_rows' in r else ''} {r['ms']:.2f} ms" for r in best))
    if args.out:
        args.out.write_text(json.dumps({"batch": args.batch, "dtype": "bf16" if device.type == "cuda" else "fp32",
                                        "device": device_info(device),
                                        "shipped": {f"{k}/{p}": v for (k, p), v in ts.GPU_CONFIGS.items()},
                                        "ds_rows_default": ts.DS_ROWS, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
