"""`retina-pretrain ablate`: every method trained on the same budget, evaluated the same way (pretrain.ablate)."""

from __future__ import annotations

PROG = "retina-pretrain ablate"


def cli_main(argv: list[str]) -> int:
    from pretrain import ablate
    from shards.commandline import Command, command_parser, parse_command

    command = Command(ablate.AblateConfig, aliases={"--eval": "eval_shards"})
    _, cfg = parse_command(command_parser(command, prog=PROG, description=ablate.__doc__), argv)
    return ablate.run_ablation(cfg, list(argv))
