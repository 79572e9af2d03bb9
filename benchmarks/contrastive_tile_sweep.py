"""Tile-size sweep of the Triton contrastive kernels on a GPU (forward, dq and dk kernels timed separately).

Overrides the launch table (kernels.contrastive.triton_direction._launch_config) with each candidate
(BLOCK_M, BLOCK_N, num_warps, num_stages), checks the loss against the default table's, and reports the
median time of each kernel. Class-id positives (FLAIR's case) at B x D given on the command line.

    python benchmarks/contrastive_tile_sweep.py [--batch 16384] [--dims 512 768] [--out results.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kernels.bench_common import device_info  # noqa: E402
from kernels.contrastive import LossOptions  # noqa: E402
from kernels.contrastive import triton_direction as td  # noqa: E402
from kernels.contrastive.spec import label_codes  # noqa: E402

TILES = ((32, 64), (64, 32), (64, 64), (128, 32), (128, 64), (64, 128))
CANDIDATES = [(bm, bn, w, s) for (bm, bn), w, s in itertools.product(TILES, (4, 8), (1, 2))]


def median_ms(fn, reps: int = 10) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    default_config = td._launch_config
    rows_out = []
    for dim in args.dims:
        gen = torch.Generator(device="cuda").manual_seed(dim)
        q = F.normalize(torch.randn(args.batch, dim, device="cuda", generator=gen), dim=1).bfloat16()
        k = F.normalize(torch.randn(args.batch, dim, device="cuda", generator=gen), dim=1).bfloat16()
        labels = label_codes(torch.randint(0, 64, (args.batch,), device="cuda", generator=gen))
        scale = torch.tensor([50.0], device="cuda")
        opts = LossOptions("labels", False, None, 0.5)
        grad = torch.ones((), device="cuda")
        td._launch_config = default_config
        ref_loss, lse, count = td.contrastive_forward(q, k, scale, labels, labels, 0, opts)
        ref = ref_loss.sum().item()
        for bm, bn, warps, stages in [(None, None, None, None)] + CANDIDATES:
            label = "default" if bm is None else f"{bm}x{bn} w{warps} s{stages}"
            if bm is not None:
                td._launch_config = (lambda d, dt, a, b, bm=bm, bn=bn, w=warps, s=stages: dict(
                    BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=max(16, 1 << (d - 1).bit_length()), num_warps=w, num_stages=s))
            try:
                loss, _, _ = td.contrastive_forward(q, k, scale, labels, labels, 0, opts)
                err = abs(loss.sum().item() - ref) / abs(ref)
                fwd = median_ms(lambda: td.contrastive_forward(q, k, scale, labels, labels, 0, opts))
                dq = median_ms(lambda: td.contrastive_backward(grad, q, k, args.batch, scale, lse, count, labels,
                                                               labels, 0, opts, need_dk=False))
                dk = median_ms(lambda: td.contrastive_backward(grad, q, k, args.batch, scale, lse, count, labels,
                                                               labels, 0, opts, need_dq=False))
            except Exception as exc:  # out of shared memory / registers: not a candidate
                print(f"D={dim} {label:<18} failed: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
                continue
            tflops = 2 * args.batch * args.batch * dim * 2 / (fwd * 1e-3) / 1e12
            row = dict(dim=dim, config=label, fwd_ms=fwd, dq_ms=dq, dk_ms=dk, total_ms=fwd + dq + dk,
                       fwd_tflops=tflops, rel_err=err)
            rows_out.append(row)
            print(f"D={dim} {label:<18} fwd {fwd:8.2f} ms ({tflops:5.0f} TF/s)  dq {dq:8.2f}  dk {dk:8.2f}  "
                  f"total {fwd + dq + dk:8.2f}  err {err:.1e}", flush=True)
    td._launch_config = default_config
    for dim in args.dims:
        best = sorted((r for r in rows_out if r["dim"] == dim), key=lambda r: r["total_ms"])[:5]
        print(f"best for D={dim}: " + "; ".join(f"{r['config']} {r['total_ms']:.1f} ms" for r in best))
    if args.out:
        args.out.write_text(json.dumps({"batch": args.batch, "device": device_info(torch.device("cuda")),
                                        "rows": rows_out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
