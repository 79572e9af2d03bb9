"""`retina-bench` (also `python -m benchmarks`): kernel microbenchmarks and the compile-only resource report.

    retina-bench contrastive [--quick] [--batch 1024 2048] [--dim 512] ...   # see `retina-bench contrastive -h`
    retina-bench attention [--quick] [--shapes vit_b16_224] [--providers sdpa]  # see `retina-bench attention -h`
    retina-bench resources [--families contrastive attention]  # compile-only sm_90a report, no GPU needed
    retina-bench text-padding [--batch 32]  # text tower fwd+bwd: padded to max_len / dynamic / unpadded

Each benchmark owns its flags (and its `-h`); this module only dispatches to it. The benchmarks live in this
package; `resources` is the library's own report (`kernels.resources`).
"""

from __future__ import annotations

import argparse
import sys

BENCHMARKS = {
    "contrastive": "symmetric CLIP loss: triton / chunked / eager / open_clip, time and peak memory",
    "attention": "multi-head attention: triton / sdpa / xformers / eager on ViT, text and decoder shapes",
    "resources": "registers, spills, shared memory and wgmma of every Triton kernel config, compiled for sm_90a",
    "text-padding": "text tower forward + backward: captions padded to max_len, dynamically, or unpadded (varlen)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retina-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, summary in BENCHMARKS.items():
        # add_help=False: `-h` after the benchmark name reaches that benchmark's own parser
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if args.benchmark == "contrastive":
        from benchmarks import contrastive

        return contrastive.main(rest)
    if args.benchmark == "resources":
        from kernels import resources

        return resources.main(rest)
    if args.benchmark == "text-padding":
        from benchmarks import text_padding

        return text_padding.main(rest)
    from benchmarks import attention

    return attention.main(rest)


if __name__ == "__main__":
    sys.exit(main())
