"""`retina-bench resources`: what every Triton kernel configuration costs on Hopper, found without a GPU.

Each kernel the dispatch can launch is compiled for sm_90a (`GPUTarget("cuda", 90, 32)`) on the CPU,
with the arguments of a real launch: the package's own launcher runs on small CPU tensors until it calls
the kernel, the call is captured instead of launched, and the kernel's own binder
(`triton.runtime.jit.create_function_from_signature`) specialises those arguments as a launch would
(alignment, divisibility by 16, constexprs). For an autotuned kernel every config of its space is
compiled. From the result: the `ptxas -v` and `cuobjdump -res-usage` shipped in the triton wheel give
registers per thread, spill bytes, stack and local memory; `metadata.shared` the shared memory per
block; the PTX whether Hopper's `wgmma` (or only `mma.sync`) carries the dots.

A configuration that spills, needs more than an H100's 227 KiB of shared memory per block, or (16-bit
contrastive tiles) misses wgmma is `ok: false` in the report. Run it before any GPU time is spent.

    retina-bench resources [--families contrastive attention] [--jobs 2] [--out results.json]

Needs a process without TRITON_INTERPRET (the kernels must be JIT functions, not interpreted ones).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

H100_MAX_SHARED = 227 * 1024
ARCH = 90
FAMILIES = ("contrastive", "attention")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One kernel launch to compile: which launcher call reaches it, in which variant."""

    family: str
    kernel: str  # the launcher's kernel, e.g. "fwd" / "ds" (contrastive), "fwd" / "dkdv" / "dq" (attention)
    dtype: str
    dim: int
    variant: str
    params: dict = field(default_factory=dict)


class _Captured(Exception):
    def __init__(self, kernel, args, kwargs):
        super().__init__("captured")
        self.kernel, self.args, self.kwargs = kernel, args, kwargs


def capture_launch(kernel, launch, skip=()) -> _Captured:
    """Run `launch()` until it calls `kernel` (a JITFunction or Autotuner; the kernels in `skip` do nothing)
    and return that call's arguments instead of launching it."""
    def record(*args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        raise _Captured(kernel, args, kwargs)

    kernel.run = record  # an instance attribute shadows the method that `kernel[grid](...)` calls
    for other in skip:
        other.run = lambda *args, **kwargs: None
    try:
        launch()
    except _Captured as call:
        return call
    finally:
        for patched in (kernel, *skip):
            del patched.run
    raise RuntimeError(f"the launcher never called {kernel}")


# ------------------------------------------------------------------------------------- the cases


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CONTRASTIVE_LABELS = {  # variant -> (label kind, LossOptions fields)
    "no-labels": (None, {}),
    "class-exclude": ("class", {"exclude_false_negatives": True}),
    "multi-hot-jaccard-exclude": ("bits", {"positives": "labels", "weighting": "jaccard",
                                           "exclude_false_negatives": True}),
}


def contrastive_cases(dims=(512, 768), dtypes=("bf16", "fp32")) -> list[Case]:
    """Every shipped configuration (the launch table's), for every label rule and with/without columns."""
    cases = []
    for dtype in dtypes:
        for dim in dims:
            for labels in CONTRASTIVE_LABELS:
                for kernel in ("fwd", "ds"):
                    for columns in (True, False):
                        variant = f"{labels}, {'rows+columns' if columns else 'rows'}"
                        cases.append(Case("contrastive", kernel, dtype, dim, variant,
                                          dict(labels=labels, columns=columns)))
    return cases


def candidate_cases(dims=(512, 768)) -> list[Case]:
    """The tile sweep's 16-bit candidates (triton_stripe.SWEEP_CANDIDATES), both kernels, rows + columns."""
    from kernels.contrastive.triton_stripe import SWEEP_CANDIDATES

    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "num_warps", "num_stages")
    return [Case("contrastive", kernel, "bf16", dim, f"candidate, {labels}, rows+columns",
                 dict(labels=labels, columns=True, config=dict(zip(keys, candidate))))
            for dim in dims for labels in ("no-labels", "multi-hot-jaccard-exclude")
            for kernel in ("fwd", "ds") for candidate in SWEEP_CANDIDATES]


def attention_cases(head_dims=(32, 64, 128), dtypes=("bf16", "fp16", "fp32")) -> list[Case]:
    """Causal + key padding mask: the variant with the most live values (every mask on the boundary tiles)."""
    return [Case("attention", kernel, dtype, dim, "causal + padding mask", dict(causal=True))
            for dtype in dtypes for dim in head_dims for kernel in ("fwd", "dq", "dkdv")]


def _contrastive_launch(case: Case):
    """(kernel, launcher call, kernels to skip on the way)."""
    from kernels.contrastive import triton_stripe as ts
    from kernels.contrastive.spec import LossOptions, label_codes, pack_multi_hot

    batch = 1024  # sizes only decide specialisation (multiples of 16 here, as at real batch sizes)
    q = torch.zeros(batch, case.dim, dtype=DTYPES[case.dtype])
    kind, options = CONTRASTIVE_LABELS[case.params["labels"]]
    codes = None
    if kind == "class":
        codes = label_codes(torch.arange(batch) % 7)
    elif kind == "bits":
        codes = label_codes(pack_multi_hot(torch.eye(40, dtype=torch.bool)[torch.arange(batch) % 40]))
    opts, columns, config = LossOptions(**options), case.params["columns"], case.params.get("config")
    if case.kernel == "fwd":
        return ts._stripe_fwd_kernel, lambda: ts.stripe_forward(q, q, torch.ones(()), codes, codes, 0, opts,
                                                                columns, config=config), ()
    lse = torch.zeros(batch)
    return ts._stripe_ds_kernel, lambda: ts.stripe_backward(q, q, torch.ones(()), lse, lse, lse,
                                                            lse if columns else None, codes, codes, 0, opts,
                                                            config=config), ()


def _attention_launch(case: Case):
    from kernels.attention import triton_ops as tf
    from kernels.attention import triton_tuning as tt

    q = torch.zeros(2, 4, 256, case.dim, dtype=DTYPES[case.dtype])
    pad = torch.ones(2, 256, dtype=torch.bool)
    causal = case.params["causal"]
    if case.kernel == "fwd":
        return tt.fwd_tuned, lambda: tf.attention_forward(q, q, q, pad, causal), ()
    lse = torch.zeros(2, 4, 256)
    backward = lambda: tf.attention_backward(q, q, q, q, q, lse, pad, causal)  # noqa: E731
    if case.kernel == "dq":  # the backward's first launch
        return tt.dq_tuned, backward, ()
    return tt.dkdv_tuned, backward, (tt.dq_tuned,)


# ------------------------------------------------------------------------------------ compilation


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _ptxas_report(ptx: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([_tool("ptxas"), "-v", f"--gpu-name=sm_{ARCH}a", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    number = lambda pattern: int(re.search(pattern, log).group(1))  # noqa: E731
    return {"registers": number(r"Used (\d+) registers"), "spill_store_bytes": number(r"(\d+) bytes spill stores"),
            "spill_load_bytes": number(r"(\d+) bytes spill loads"), "stack_bytes": number(r"(\d+) bytes stack frame")}


def _cuobjdump_report(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        log = subprocess.run([_tool("cuobjdump"), "-res-usage", fh.name], capture_output=True, text=True,
                             check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", log)
    return {"cubin_registers": int(found.group(1)), "local_bytes": int(found.group(4))}


def compile_call(call: _Captured, extra: dict) -> dict:
    """Compile one captured call (+ an autotune config's kwargs) for sm_90a and read its resources."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = call.kernel.fn if hasattr(call.kernel, "configs") else call.kernel  # an Autotuner wraps the JIT function
    target = GPUTarget("cuda", ARCH, 32)
    backend = make_backend(target)
    kwargs = call.kwargs | extra
    kwargs.setdefault("debug", False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*call.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton_compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    ptx = compiled.asm["ptx"]
    return {"shared_bytes": compiled.metadata.shared, "wgmma": "wgmma.mma_async" in ptx,
            "mma_sync": "mma.sync" in ptx, **_ptxas_report(ptx), **_cuobjdump_report(compiled.asm["cubin"])}


def _config_text(kwargs: dict) -> str:
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "num_warps", "num_stages")
    return " ".join(f"{k}={kwargs[k]}" for k in keys if k in kwargs)


def tuned_configs(call: _Captured) -> list:
    """The configs the autotuner would try for this call: its space after its own early_config_prune."""
    tuner = call.kernel
    if getattr(tuner, "early_config_prune", None) is None:
        return list(tuner.configs)
    return tuner.early_config_prune(tuner.configs, dict(zip(tuner.arg_names, call.args)), **call.kwargs)


def run_case(case: Case) -> list[dict]:
    """Every configuration of one case, each compiled and judged."""
    kernel, launch, skip = (_contrastive_launch if case.family == "contrastive" else _attention_launch)(case)
    call = capture_launch(kernel, launch, skip)
    configs = [c.all_kwargs() for c in tuned_configs(call)] if hasattr(call.kernel, "configs") else [{}]
    rows = []
    for extra in configs:
        row = asdict(case) | {"config": _config_text(call.kwargs | extra)}
        started = time.perf_counter()
        try:
            row |= compile_call(call, extra)
        except Exception as exc:  # a config that cannot compile (out of resources) is a finding too
            row |= {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
        row["compile_s"] = round(time.perf_counter() - started, 2)
        rows.append(row | judge(row))
    return rows


def judge(row: dict) -> dict:
    problems = []
    if "error" in row:
        problems.append("does not compile")
    else:
        if row["spill_store_bytes"] or row["spill_load_bytes"] or row["local_bytes"]:
            problems.append("spills")
        if row["shared_bytes"] > H100_MAX_SHARED:
            problems.append("shared memory over 227 KiB")
        if row["family"] == "contrastive" and row["dtype"] != "fp32" and not row["wgmma"]:
            problems.append("no wgmma")
    return {"ok": not problems, "problems": problems}


# ------------------------------------------------------------------------------------ the report


def _versions() -> dict:
    import triton

    ptxas = subprocess.run([_tool("ptxas"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
            "ptxas": ptxas.splitlines()[-1] if ptxas else None}


def report(cases: list[Case], jobs: int) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("retina-bench resources: unset TRITON_INTERPRET (it turns the kernels into interpreted "
                         "functions, which cannot be compiled)")
    if jobs <= 1:
        return [row for case in cases for row in run_case(case)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return [row for rows in pool.map(run_case, cases) for row in rows]


def format_table(rows: list[dict]) -> str:
    header = (f"{'family':<11} {'kernel':<5} {'dtype':<5} {'D':>4} {'variant':<40} {'config':<62} {'regs':>4} "
              f"{'spill B':>7} {'smem KiB':>8} {'wgmma':>5}  verdict")
    lines = [header, "-" * len(header)]
    for r in rows:
        spill = r.get("spill_store_bytes", 0) + r.get("spill_load_bytes", 0) if "error" not in r else "-"
        smem = f"{r['shared_bytes'] / 1024:.0f}" if "shared_bytes" in r else "-"
        verdict = "ok" if r["ok"] else "; ".join(r["problems"])
        lines.append(f"{r['family']:<11} {r['kernel']:<5} {r['dtype']:<5} {r['dim']:>4} {r['variant']:<40} "
                     f"{r['config']:<62} {r.get('registers', '-'):>4} {spill:>7} {smem:>8} "
                     f"{str(r.get('wgmma', '-')):>5}  {verdict}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retina-bench resources", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--no-candidates", dest="candidates", action="store_false",
                        help="skip the contrastive tile-sweep candidates (compiled so the GPU sweep tries only "
                             "those that pass)")
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 768], help="contrastive embedding sizes")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128], help="attention head sizes")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES,
                        help="input dtypes (default: bf16 fp32 for contrastive, bf16 fp16 fp32 for attention)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (default: cores)")
    parser.add_argument("--require", nargs="*", choices=FAMILIES, default=["contrastive"],
                        help="families whose every configuration must pass (exit 1 otherwise); default contrastive")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kernel-resources-sm90.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = []
    if "contrastive" in args.families:
        dtypes = tuple(args.dtypes or ("bf16", "fp32"))
        cases += contrastive_cases(tuple(args.dims), dtypes)
        if args.candidates and "bf16" in dtypes:
            cases += candidate_cases(tuple(args.dims))
    if "attention" in args.families:
        cases += attention_cases(tuple(args.head_dims), tuple(args.dtypes or ("bf16", "fp16", "fp32")))
    print(f"compiling {len(cases)} kernel variants for sm_{ARCH}a ...", file=sys.stderr, flush=True)
    rows = report(cases, args.jobs)
    failed = [r for r in rows
              if not r["ok"] and r["family"] in args.require and not r["variant"].startswith("candidate")]
    result = {"report": "kernel-resources", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "target": f"sm_{ARCH}a", "max_shared_bytes": H100_MAX_SHARED, "versions": _versions(),
              "method": __doc__.split("\n\n")[1].replace("\n", " "), "rows": rows,
              "summary": {"configurations": len(rows), "ok": sum(r["ok"] for r in rows),
                          "failing_required": len(failed)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(rows))
    print(f"{result['summary']['ok']} of {len(rows)} configurations ok; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
