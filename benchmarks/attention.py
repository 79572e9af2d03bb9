"""Attention microbenchmark: `retina-bench attention` (also `python -m benchmarks attention`).

Times `kernels.attention.attention(..., backend=PROVIDER)` for the providers

    triton     kernels' FlashAttention-2 style Triton kernels (CUDA; on CPU only the interpreter, so only
               when asked for with --providers triton)
    sdpa       torch.nn.functional.scaled_dot_product_attention
    xformers   xformers.ops.memory_efficient_attention (CUDA and an importable xformers)
    eager      explicit softmax(QK^T)V, every B x H x Lq x Lk matrix materialised

on the shapes the models use (`SHAPES`: ViT-B/16 and ViT-L/14 at 224 px, ViT-B/16 at 512 px, padded text,
varlen text, the caption decoder's causal self- and cross-attention, and L = 4096, Dh = 128 as the
compute-bound point of a roofline), in three modes: forward (autograd recording, as in training), backward
(alone, after an untimed forward) and full (forward + backward). Times are medians of --repeats runs after --warmup
runs; an out-of-memory measurement is recorded as "oom" and the sweep goes on.

TFLOP/s count the dense matmuls: forward 4*B*H*Lq*Lk*Dh (QK^T and PV, 2 FLOPs per multiply-add),
backward 2.5x forward (dV, dP, dQ, dK, plus recomputing QK^T), full 3.5x; halved for causal shapes (the
kernels skip the upper triangle). Padding is not discounted: a padded shape counts its full length.

Varlen text (`varlen=True`): a batch of captions with lengths shaped like MM-Retinal's CFP captions
(median 43 of 77 tokens, 17% cut at 77: benchmarks/results/text_padding-cpu.json). The triton provider runs
`attention_varlen` on the real tokens packed without padding (what the text tower can do with the packed
path); every other provider runs the dense op on the padded batch with the key padding mask (what the text
tower does otherwise). Both count the padded FLOPs, so their TFLOP/s compare as times do.

On CUDA: bf16, the batch sizes of `SHAPES`. On CPU: fp32, batch 2 and no L = 4096 shapes (pass --shapes to
time them), a couple of minutes in all. Writes benchmarks/results/attention-<device>.json and a .png beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import device_info, device_slug, elapsed_ms, fmt, guarded, package_version, results_dir

PROVIDERS = ("triton", "sdpa", "xformers", "eager")
MODES = ("forward", "backward", "full")
BASELINES = ("sdpa", "eager")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLOPS_FACTOR = {"forward": 1.0, "backward": 2.5, "full": 3.5}
FLOPS_FORMULA = {
    "forward": "4*B*H*Lq*Lk*Dh", "backward": "2.5 * forward", "full": "3.5 * forward",
    "note": "QK^T and PV at 2 FLOPs per multiply-add; backward = dV, dP, dQ, dK and the recomputed QK^T. "
            "Halved for causal shapes (upper triangle skipped); padded keys are not discounted.",
}


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    causal: bool = False
    padded: bool = False  # random key lengths per batch element (seeded), the first one full
    varlen: bool = False  # padded self-attention whose triton provider runs packed (attention_varlen)
    note: str = ""

    def flops(self, mode: str) -> float:
        dense = 4.0 * self.batch * self.heads * self.seq_q * self.seq_k * self.head_dim
        return dense * FLOPS_FACTOR[mode] * (0.5 if self.causal else 1.0)


SHAPES = (
    Shape("vit_b16_224", 32, 12, 197, 197, 64, note="ViT-B/16 at 224 px: 196 patches + CLS"),
    Shape("vit_l14_224", 32, 16, 257, 257, 64, note="ViT-L/14 at 224 px: 256 patches + CLS"),
    Shape("vit_b16_512", 32, 12, 1025, 1025, 64, note="ViT-B/16 at 512 px: 1024 patches + CLS"),
    Shape("text_256_padded", 32, 12, 256, 256, 64, padded=True, note="BERT-base text encoder, padded batch"),
    Shape("text_varlen_77", 256, 12, 77, 77, 64, padded=True, varlen=True,
          note="text encoder over MM-Retinal-like captions: triton packed (varlen) vs the others padded + mask"),
    Shape("decoder_self_64", 32, 12, 64, 64, 64, causal=True, padded=True,
          note="caption decoder: causal self-attention over padded captions"),
    Shape("decoder_cross_64x197", 32, 12, 64, 197, 64,
          note="caption decoder: 64 text queries over ViT-B/16 image tokens"),
    Shape("long_4096", 4, 16, 4096, 4096, 128, note="roofline: long sequence, compute-bound"),
    Shape("long_4096_causal", 4, 16, 4096, 4096, 128, causal=True, note="roofline: causal"),
)
SHAPE_NAMES = tuple(s.name for s in SHAPES)
LONG_SHAPES = ("long_4096", "long_4096_causal")

CPU_DEFAULTS = {"batch": 2, "repeats": 3, "warmup": 1, "dtype": "fp32"}
GPU_DEFAULTS = {"batch": None, "repeats": 10, "warmup": 3, "dtype": "bf16"}
QUICK = {"batch": 1, "repeats": 2, "warmup": 1}
QUICK_MAX_HEADS, QUICK_MAX_SEQ, QUICK_MAX_HEAD_DIM = 2, 48, 32


@dataclass
class Config:
    device: torch.device
    shapes: list[Shape]
    providers: list[str]
    modes: list[str]
    repeats: int
    warmup: int
    dtype: str
    seed: int
    out: Path


# ---------------------------------------------------------------- inputs and providers

CAPTION_SHARE_AT_MAX, CAPTION_MEDIAN_SHARE = 0.174, 43 / 77  # MM-Retinal CFP captions at 77 tokens


def key_lengths(shape: Shape, seed: int) -> list[int]:
    if not shape.padded:
        return [shape.seq_k] * shape.batch
    gen = torch.Generator().manual_seed(seed)
    if shape.varlen:  # caption-like: a share cut at the maximum, the rest spread around the median
        median = max(1, round(shape.seq_k * CAPTION_MEDIAN_SHARE))
        spread = torch.randint(max(1, median // 4), min(shape.seq_k, 2 * median - median // 4) + 1, (shape.batch,),
                               generator=gen)
        at_max = torch.rand(shape.batch, generator=gen) < CAPTION_SHARE_AT_MAX
        lengths = torch.where(at_max, shape.seq_k, spread)
    else:
        lengths = torch.randint(max(1, shape.seq_k // 4), shape.seq_k + 1, (shape.batch,), generator=gen)
    lengths[0] = shape.seq_k  # the longest sets the padded length, as in a real batch
    return lengths.tolist()


def make_inputs(shape: Shape, dtype: str, device: torch.device, seed: int) -> dict:
    """Leaf q, k, v with gradients, the key padding mask (None when unpadded) and an output gradient."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def tensor(seq: int, grad: bool = True) -> torch.Tensor:
        t = torch.randn(shape.batch, shape.heads, seq, shape.head_dim, generator=gen, device=device)
        return t.to(DTYPES[dtype]).requires_grad_(grad)

    padding = None
    if shape.padded:
        lengths = torch.tensor(key_lengths(shape, seed), device=device)
        padding = torch.arange(shape.seq_k, device=device)[None, :] < lengths[:, None]
    inputs = {"q": tensor(shape.seq_q), "k": tensor(shape.seq_k), "v": tensor(shape.seq_k),
              "key_padding_mask": padding, "grad": tensor(shape.seq_q, grad=False)}
    if shape.varlen:
        inputs["packed"] = pack(inputs, key_lengths(shape, seed))
    return inputs


def pack(inputs: dict, lengths: list[int]) -> dict:
    """The real tokens of a padded self-attention batch as packed (total, H, Dh) leaves with cu_seqlens."""
    from kernels.attention import cu_seqlens_from_lengths

    def packed(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
        rows = torch.cat([t[b, :, :n].transpose(0, 1) for b, n in enumerate(lengths)]).detach().contiguous()
        return rows.requires_grad_(grad)

    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).to(inputs["q"].device)
    return {"q": packed(inputs["q"]), "k": packed(inputs["k"]), "v": packed(inputs["v"]),
            "grad": packed(inputs["grad"], grad=False), "cu_seqlens": cu, "max_seqlen": max(lengths)}


def provider_inputs(provider: str, shape: Shape, inputs: dict) -> dict:
    """What a provider runs on: the packed tokens for triton on a varlen shape, else the (padded) batch."""
    return inputs["packed"] if shape.varlen and provider == "triton" else inputs


def make_call(provider: str, shape: Shape, inputs: dict) -> Callable[[], torch.Tensor]:
    from kernels.attention import attention, attention_varlen

    if "cu_seqlens" in inputs:
        cu, longest = inputs["cu_seqlens"], inputs["max_seqlen"]
        return lambda: attention_varlen(inputs["q"], inputs["k"], inputs["v"], cu, cu, longest, longest,
                                        causal=shape.causal, backend=provider)
    return lambda: attention(inputs["q"], inputs["k"], inputs["v"], causal=shape.causal,
                             key_padding_mask=inputs["key_padding_mask"], backend=provider)


def select_providers(requested: list[str], explicit: bool, device: torch.device,
                     dtype: str) -> tuple[list[str], dict[str, str]]:
    """The requested providers that run here, and why the others are skipped (the API's own RuntimeError)."""
    if device.type != "cuda" and "triton" in requested and explicit:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when kernels.attention.triton_flash is imported
    from kernels.attention import attention

    skipped = {}
    for provider in requested:
        if provider == "triton" and device.type != "cuda" and not explicit:
            skipped[provider] = ("no CUDA: Triton would run in its CPU interpreter, far too slow to time; "
                                 "pass --providers triton to force it")
            continue
        probe = torch.zeros(1, 1, 16, 16, dtype=DTYPES[dtype], device=device)
        try:
            attention(probe, probe, probe, backend=provider)
        except RuntimeError as exc:
            skipped[provider] = str(exc)
    return [p for p in requested if p not in skipped], skipped


# ---------------------------------------------------------------- timing

def clear_grads(inputs: dict) -> None:
    for name in ("q", "k", "v"):
        inputs[name].grad = None


def run_mode(call: Callable[[], torch.Tensor], inputs: dict, mode: str, device: torch.device) -> float:
    clear_grads(inputs)
    if mode == "forward":
        return elapsed_ms(call, device)
    if mode == "backward":
        out = call()  # untimed forward
        return elapsed_ms(lambda: out.backward(inputs["grad"]), device)
    return elapsed_ms(lambda: call().backward(inputs["grad"]), device)


def time_point(provider: str, shape: Shape, inputs: dict, mode: str, cfg: Config) -> dict:
    inputs = provider_inputs(provider, shape, inputs)
    call = make_call(provider, shape, inputs)

    def runs() -> list[float]:
        for _ in range(cfg.warmup):
            run_mode(call, inputs, mode, cfg.device)
        return [run_mode(call, inputs, mode, cfg.device) for _ in range(cfg.repeats)]

    record = {"provider": provider, "shape": shape.name, "mode": mode}
    try:
        status, times = guarded(runs, cfg.device)
    except Exception as exc:  # one failing kernel (a shape it rejects, a compile error) must not end the sweep
        status, times, record["detail"] = "failed", None, f"{type(exc).__name__}: {exc}"[:500]
    clear_grads(inputs)
    record["status"] = status
    if status == "ok":
        median = statistics.median(times)
        record.update(runs_ms=times, median_ms=median, min_ms=min(times), max_ms=max(times),
                      tflops=shape.flops(mode) / (median * 1e-3) / 1e12)
    return record


def sweep(cfg: Config) -> list[dict]:
    timings = []
    for shape in cfg.shapes:
        status, inputs = guarded(lambda: make_inputs(shape, cfg.dtype, cfg.device, cfg.seed), cfg.device)
        for provider in cfg.providers:
            for mode in cfg.modes:
                if inputs is None:
                    record = {"provider": provider, "shape": shape.name, "mode": mode, "status": status}
                else:
                    record = time_point(provider, shape, inputs, mode, cfg)
                timings.append(record)
                shown = f"{record['median_ms']:.3f} ms" if record["status"] == "ok" else record["status"]
                print(f"  {shape.name:>20} {provider:>8} {mode:<8} {shown}", file=sys.stderr, flush=True)
        del inputs
        gc.collect()
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()
    return timings


def add_speedups(records: list[dict]) -> None:
    """speedup_vs_<baseline> = baseline median / median, at the same shape and mode."""
    ok = {(r["provider"], r["shape"], r["mode"]): r["median_ms"] for r in records if r["status"] == "ok"}
    for record in records:
        for base in BASELINES:
            base_ms = ok.get((base, record["shape"], record["mode"]))
            if record["status"] == "ok" and base_ms is not None and record["median_ms"] > 0:
                record[f"speedup_vs_{base}"] = base_ms / record["median_ms"]


# ---------------------------------------------------------------- reporting

def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": package_version("triton"),
            "xformers": package_version("xformers")}


def format_table(timings: list[dict], shapes: list[Shape]) -> str:
    by_name = {s.name: s for s in shapes}
    header = (f"{'shape':>20} {'B':>3} {'H':>3} {'Lq':>5} {'Lk':>5} {'Dh':>4} {'mode':<8} {'provider':>8} "
              f"{'median ms':>10} {'min-max ms':>17} {'TFLOP/s':>8} {'x sdpa':>7} {'x eager':>7}")
    lines = [header, "-" * len(header)]
    order = {p: i for i, p in enumerate(PROVIDERS)}
    shape_order = {s.name: i for i, s in enumerate(shapes)}
    for r in sorted(timings, key=lambda r: (shape_order[r["shape"]], MODES.index(r["mode"]), order[r["provider"]])):
        s = by_name[r["shape"]]
        if r["status"] == "ok":
            median, spread = f"{r['median_ms']:.3f}", f"{r['min_ms']:.3f}-{r['max_ms']:.3f}"
        else:
            median, spread = r["status"], ""
        lines.append(f"{s.name:>20} {s.batch:>3} {s.heads:>3} {s.seq_q:>5} {s.seq_k:>5} {s.head_dim:>4} "
                     f"{r['mode']:<8} {r['provider']:>8} {median:>10} {spread:>17} {fmt(r.get('tflops'), '.3g'):>8} "
                     f"{fmt(r.get('speedup_vs_sdpa'), '.2f'):>7} {fmt(r.get('speedup_vs_eager'), '.2f'):>7}")
    lines.append("TFLOP/s: " + FLOPS_FORMULA["note"] + " x sdpa / x eager: baseline time / time.")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """TFLOP/s per shape, one bar per provider, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = result["params"]
    shapes = [s["name"] for s in params["shapes"]]
    providers = params["providers"]
    ok = {(r["provider"], r["shape"], r["mode"]): r["tflops"] for r in result["timings"] if r["status"] == "ok"}
    colors = dict(zip(PROVIDERS, ("tab:red", "tab:blue", "tab:green", "tab:gray")))
    fig, axes = plt.subplots(1, len(params["modes"]), figsize=(5 + 2.2 * len(shapes), 4.8), squeeze=False)
    width = 0.8 / max(1, len(providers))
    for ax, mode in zip(axes[0], params["modes"]):
        for i, provider in enumerate(providers):
            xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(shapes))]
            ax.bar(xs, [ok.get((provider, s, mode), 0.0) for s in shapes], width, color=colors[provider],
                   label=provider)
        ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"{mode}, {params['dtype']}", ylabel="TFLOP/s (missing bar: skipped or failed)")
        ax.grid(True, axis="y", alpha=0.3)
        if providers:
            ax.legend(fontsize=8)
    fig.suptitle(f"attention, {result['device']['name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- CLI

def build_parser(prog: str = "retina-bench attention") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=SHAPE_NAMES, metavar="SHAPE",
                        help=f"shapes to time, of {', '.join(SHAPE_NAMES)} (default: all; on CPU all but "
                             f"{' and '.join(LONG_SHAPES)})")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS,
                        help="backends to compare (default: all that run here; triton on CPU only when named)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="forward; backward = the backward alone after an untimed forward; "
                             "full = forward + backward (default: all)")
    parser.add_argument("--batch", type=int, help="batch size of every shape (default: the shape's own on CUDA, "
                                                  f"{CPU_DEFAULTS['batch']} on CPU)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement, the median is reported "
                                                    "(default 3 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--dtype", choices=DTYPES, help="q, k, v dtype (default fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run; auto = cuda when available (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and padded lengths (default 0)")
    parser.add_argument("--out", type=Path, help="results JSON; the plot goes beside it as .png "
                                                 "(default benchmarks/results/attention-<device>.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke-test sizes: batch 1, at most {QUICK_MAX_HEADS} heads, L <= {QUICK_MAX_SEQ}, "
                             f"Dh <= {QUICK_MAX_HEAD_DIM}, {QUICK['repeats']} repeats")
    return parser


def shrink(shape: Shape) -> Shape:
    """--quick: the same kinds of problem (self / cross, causal, padded), tiny."""
    factor = min(1.0, QUICK_MAX_SEQ / max(shape.seq_q, shape.seq_k))  # one factor keeps Lq / Lk of cross-attention
    return replace(shape, heads=min(shape.heads, QUICK_MAX_HEADS), seq_q=max(1, round(shape.seq_q * factor)),
                   seq_k=max(1, round(shape.seq_k * factor)), head_dim=min(shape.head_dim, QUICK_MAX_HEAD_DIM))


def resolve_config(args: argparse.Namespace) -> tuple[Config, dict[str, str]]:
    """Fill the device-dependent defaults; explicit flags always win."""
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise SystemExit("retina-bench attention: --device cuda but CUDA is not available")
    device = torch.device("cuda" if want_cuda else "cpu")
    defaults = (GPU_DEFAULTS if want_cuda else CPU_DEFAULTS) | (QUICK if args.quick else {})
    pick = lambda name: defaults[name] if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    names = args.shapes or [n for n in SHAPE_NAMES if want_cuda or n not in LONG_SHAPES]
    shapes = [s for s in SHAPES if s.name in names]
    batch = pick("batch")
    shapes = [replace(s, batch=batch or s.batch) for s in shapes]
    if args.quick:
        shapes = [shrink(s) for s in shapes]
    providers, skipped = select_providers(args.providers or list(PROVIDERS), args.providers is not None, device,
                                          pick("dtype"))
    out = args.out or default_out(device)
    return Config(device=device, shapes=shapes, providers=providers, modes=args.modes, repeats=pick("repeats"),
                  warmup=pick("warmup"), dtype=pick("dtype"), seed=args.seed, out=out), skipped


def default_out(device: torch.device) -> Path:
    return results_dir() / f"attention-{device_slug(device)}.json"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, skipped = resolve_config(args)
    for provider, why in skipped.items():
        print(f"retina-bench attention: skipping {provider} ({why})", file=sys.stderr)
    print(f"attention benchmark on {cfg.device.type}: {[s.name for s in cfg.shapes]}, {cfg.providers}, "
          f"{cfg.modes}, {cfg.dtype}", file=sys.stderr)
    timings = sweep(cfg)
    add_speedups(timings)

    shapes = [asdict(s) | {"key_lengths": key_lengths(s, cfg.seed)} if s.padded else asdict(s) for s in cfg.shapes]
    params = {"shapes": shapes, "providers": cfg.providers, "skipped_providers": skipped, "modes": cfg.modes,
              "repeats": cfg.repeats, "warmup": cfg.warmup, "dtype": cfg.dtype, "seed": cfg.seed,
              "quick": args.quick, "forward": "with autograd recording (training forward)",
              "timer": "torch.cuda.Event" if cfg.device.type == "cuda" else "time.perf_counter"}
    result = {"benchmark": "attention", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": device_info(cfg.device), "versions": versions(), "params": params, "flops": FLOPS_FORMULA,
              "timings": timings, "plot": cfg.out.with_suffix(".png").name}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, cfg.out.with_suffix(".png"))

    print(format_table(timings, cfg.shapes))
    print(f"results written to {cfg.out} and {cfg.out.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
