"""`retina-pretrain` (also `python -m pretrain`): training, evaluation and HF export.

    retina-pretrain train --config pretrain/configs/demo_cpu.yaml [--run.steps 20 --engine.lr 3e-4 ...]
    retina-pretrain train --help-config          # every dotted key with its type, default and help

`train` runs pretrain.train.train on a TrainConfig resolved from defaults < YAML < dotted overrides
(pretrain.config.parse_cli). Not implemented yet, and saying so with exit status 2: `eval` (issue 5),
`text-pretrain` (issue 6), `export-hf` and `import-hf` (issue 8).
"""

from __future__ import annotations

import argparse
import logging
import sys

PROG = "retina-pretrain"
PLANNED = {"eval": "issue 5", "text-pretrain": "issue 6", "export-hf": "issue 8", "import-hf": "issue 8"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Retinal vision-language pretraining.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("train", help="pretrain a model: --config PATH, --help-config, dotted overrides (--run.steps 20)",
                   add_help=False)
    for name, issue in PLANNED.items():
        sub.add_parser(name, help=f"not implemented yet ({issue})", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    if args.command in PLANNED:
        print(f"{PROG} {args.command}: not implemented yet ({PLANNED[args.command]})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pretrain.config import parse_cli
    from pretrain.train import TrainConfig, train

    cfg, _ = parse_cli(TrainConfig, rest, prog=f"{PROG} train")
    try:
        train(cfg)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
