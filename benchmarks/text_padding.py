"""Text-tower padding benchmark: `retina-bench text-padding` (also `python -m benchmarks text-padding`).

Times one forward + backward of the text tower (cls pooling) on the same batches of captions in three forms:

    max_length   every caption padded to max_len (the baseline, measured in the same run)
    dynamic      padded to the batch's longest caption rounded up to 8 (pretrain.data, Collate "dynamic")
    unpad        no padding at all: text.unpad, captions packed into one row, attention_varlen (--varlen-backend)

The padded forms run transformers' own attention (sdpa); the unpadded one attn_implementation="retinascale".
Captions are the MM-Retinal CFP captions of the reference dataframes when they are beside the repository
(../shared/reference-data), tokenized with the offline all-MiniLM-L6-v2 tokenizer; else synthetic captions
whose lengths are drawn at random (the source is recorded). Batches are drawn at random (seeded) from the
captions; the variants take turns on each batch and each time is the median over batches and repeats.

    retina-bench text-padding [--batch 32] [--batches 4] [--repeats 3] [--threads 1]

Writes benchmarks/results/text_padding-<device>.json; CPU numbers are ratios to compare, not absolute speeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.common import REPO, device_info, device_slug, elapsed_ms, package_version, results_dir

VARIANTS = ("max_length", "dynamic", "unpad")
MM_RETINAL_CAPTIONS = (REPO.parent / "shared" / "reference-data" / "keepfit-dataframes" / "pretraining"
                       / "39_MM_Retinal_dataset.csv")
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128}


def load_captions(path: Path = MM_RETINAL_CAPTIONS, seed: int = 0, synthetic: int = 2000) -> tuple[list[str], str]:
    """(captions, where they come from): the MM-Retinal CFP captions, or synthetic ones of random lengths
    (a word count from 3 to 120, log-uniform, so short captions dominate as in real caption sets)."""
    if path.is_file():
        with path.open(newline="") as fh:
            captions = [row["caption"] for row in csv.DictReader(fh) if row["caption"].strip()]
        return captions, "MM-Retinal CFP captions (reference dataframes, 39_MM_Retinal_dataset.csv)"
    rng = random.Random(seed)
    words = [round(3 * 40 ** rng.random()) for _ in range(synthetic)]
    return [" ".join(["fundus"] * n) for n in words], "synthetic (MM-Retinal captions absent)"


def build_towers(tiny: bool, max_len: int, varlen_backend: str):
    """(padded tower, unpadded tower with the same weights)."""
    from pretrain.towers import TextConfig, build_text_tower, offline_minilm_path

    # attention-probability dropout 0 in both: the varlen kernels have none, and the comparison stays fair
    overrides = {"attention_probs_dropout_prob": 0.0} | (TINY_BERT if tiny else {})
    cfg = TextConfig(name_or_path=offline_minilm_path(), max_len=max_len, random_init=tiny,
                     config_overrides=overrides, pooling="cls")
    padded = build_text_tower(cfg)
    unpadded = build_text_tower(TextConfig(**(vars(cfg) | {"unpad": True, "attention_backend": varlen_backend})))
    unpadded.load_state_dict(padded.state_dict())
    return padded, unpadded


def make_batches(captions: list[str], tokenizer, batch: int, batches: int, max_len: int, seed: int) -> list[dict]:
    from pretrain.data import Collate

    rng = random.Random(seed)
    out = []
    for _ in range(batches):
        texts = rng.sample(captions, batch)
        full = Collate(tokenizer, max_len, 1, "max_length").tokenize(texts)
        dynamic = Collate(tokenizer, max_len, 1, "dynamic").tokenize(texts)
        out.append({"max_length": full, "dynamic": dynamic, "unpad": dynamic})
    return out


def step(tower, tokens: dict) -> None:
    tower.zero_grad(set_to_none=True)
    tower(tokens["input_ids"], tokens["attention_mask"]).square().mean().backward()


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from pretrain.towers import offline_minilm_path

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    captions, source = load_captions(Path(args.captions) if args.captions else MM_RETINAL_CAPTIONS)
    tokenizer = AutoTokenizer.from_pretrained(offline_minilm_path())
    lengths = [min(len(ids), args.max_len) for ids in tokenizer(captions)["input_ids"]]
    padded, unpadded = build_towers(args.tiny, args.max_len, args.varlen_backend)
    towers = {"max_length": padded, "dynamic": padded, "unpad": unpadded}
    batches = make_batches(captions, tokenizer, args.batch, args.batches, args.max_len, args.seed)

    for b in batches[: args.warmup]:
        for variant in VARIANTS:
            step(towers[variant], b[variant])
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for b in batches:
            for variant in VARIANTS:  # take turns, so a slow spell of a shared machine hits every variant
                times[variant].append(elapsed_ms(lambda: step(towers[variant], b[variant]), device))

    real = [int(b["dynamic"]["attention_mask"].sum()) for b in batches]
    width = {v: statistics.mean(b[v]["input_ids"].shape[1] for b in batches) for v in ("max_length", "dynamic")}
    results = {}
    for variant in VARIANTS:
        computed = ([args.batch * width[variant]] * len(batches) if variant != "unpad" else real)
        results[variant] = {"median_ms": round(statistics.median(times[variant]), 2),
                            "min_ms": round(min(times[variant]), 2), "max_ms": round(max(times[variant]), 2),
                            "runs": len(times[variant]), "tokens_per_batch": round(statistics.mean(computed), 1)}
        if variant != "unpad":
            results[variant]["mean_width"] = width[variant]
    base = results["max_length"]["median_ms"]
    return {
        "benchmark": "text_padding",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": package_version("transformers"), "triton": package_version("triton")},
        "params": {"model": "tiny random BERT" if args.tiny else "all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads)",
                   "pooling": "cls", "batch": args.batch, "batches": args.batches, "repeats": args.repeats,
                   "warmup": args.warmup, "max_len": args.max_len, "threads": args.threads, "seed": args.seed,
                   "padded_attention": "transformers sdpa", "varlen_backend": args.varlen_backend,
                   "step": "text tower forward + backward of mean(feature^2), cls pooling"},
        "captions": {"source": source, "count": len(captions), "median_tokens": statistics.median(lengths),
                     "mean_tokens": round(statistics.mean(lengths), 1),
                     "share_at_max_len": round(sum(n >= args.max_len for n in lengths) / len(lengths), 3)},
        "results": results,
        "speedup_vs_max_length": {v: round(base / results[v]["median_ms"], 2) for v in VARIANTS},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retina-bench text-padding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="captions per batch")
    parser.add_argument("--batches", type=int, default=4, help="distinct random batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the batches")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--max-len", type=int, default=77, help="text.max_len (the baseline's padded length)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--varlen-backend", default="eager", help="attention_varlen backend of the unpadded tower")
    parser.add_argument("--captions", default=None, help="an MM-Retinal-style caption CSV (default: the reference one)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT (tests)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    out = args.out or results_dir() / f"text_padding-{device_slug(torch.device('cpu'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for variant, r in result["results"].items():
        print(f"{variant:>10}: median {r['median_ms']:9.1f} ms  {r['tokens_per_batch']:7.1f} tokens/batch  "
              f"x{result['speedup_vs_max_length'][variant]:.2f} vs max_length")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
