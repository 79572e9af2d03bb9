"""`retina-pretrain ablate`: every method trained on the same budget, evaluated the same way (pretrain.ablate)."""

from __future__ import annotations

import sys

PROG = "retina-pretrain ablate"
ALIASES = {"--eval": "eval_shards", "--seed": "seeds"}  # --seed K: one seed, as before --seeds


def cli_main(argv: list[str]) -> int:
    from pretrain import ablate
    from shards.commandline import Command, command_parser, parse_command
    from shards.output_paths import OutputPathError, check_output_dir

    command = Command(ablate.AblateConfig, aliases=ALIASES)
    _, cfg = parse_command(command_parser(command, prog=PROG, description=ablate.__doc__), argv)
    try:
        check_values(cfg)
        check_output_dir(cfg.out, "--out")
    except (OutputPathError, ValueError) as err:  # before any data is synthesised or a run starts
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return ablate.run_ablation(cfg, list(argv))


def check_values(cfg) -> None:
    """The numbers every run of the ablation is built from (each run would refuse them, one by one, later)."""
    for name in ("steps", "batch_size", "image_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"--zero_stage must be 0, 1, 2 or 3, got {cfg.zero_stage}")
    if any(k < 1 for k in cfg.k_shots) or any(n < 1 for n in cfg.synth):
        raise ValueError("every --k_shots and --synth count must be >= 1")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"--seeds needs at least one seed and no repeats, got {cfg.seeds}")
    if cfg.flair_init_steps is not None and cfg.flair_init_steps < 0:
        raise ValueError(f"--flair_init_steps must be >= 0 (0: no FLAIR init run), got {cfg.flair_init_steps}")
