"""`retina-pretrain` (also `python -m pretrain`): training, evaluation, methods, HF export.

    retina-pretrain train --config pretrain/configs/demo_cpu.yaml [--run.steps 20 --engine.lr 3e-4 ...]
    retina-pretrain train --help                 # every dotted option with its type, default and docstring
    retina-pretrain train --config ... --print_config   # the resolved config as YAML
    retina-pretrain eval | text-pretrain | ablate | export-hf | import-hf | import-checkpoint --help

Each command lives in its own module of pretrain.commands as `cli_main(argv) -> exit status` (COMMANDS below),
imported only when run, so a command's heavy imports never slow another. Every command parses its options
with jsonargparse from a dataclass whose field docstrings are the help (shards.commandline).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

PROG = "retina-pretrain"

# command -> (module with cli_main, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pretrain.commands.train", "pretrain a model: --config PATH, dotted overrides (--run.steps 20), "
              "--print_config"),
    "eval": ("pretrain.commands.evaluate", "evaluate a checkpoint: zero-shot, linear/k-shot probes, retrieval, report"),
    "export-hf": ("pretrain.commands.export_hf", "write a checkpoint as a Hugging Face transformers directory"),
    "import-hf": ("pretrain.commands.import_hf", "initialise training from an exported Hugging Face directory"),
    "import-checkpoint": ("pretrain.commands.import_checkpoint",
                          "convert a released FLAIR / KeepFIT checkpoint into an export folder"),
    "text-pretrain": ("pretrain.commands.text_pretrain",
                      "KeepFIT V2 stage 1: masked-language pretraining of the text tower"),
    "ablate": ("pretrain.commands.ablate",
               "train and evaluate every method on the same budget and seeds; mean ± std table + plot"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Retinal vision-language pretraining.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _strip_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher puts `--local_rank=N` before the command (and sets LOCAL_RANK too): drop it."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith(("--local_rank=", "--local-rank=")):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank"):
            skip = True
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _strip_local_rank(list(sys.argv[1:] if argv is None else argv))
    args, rest = _parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
