"""`retina-pretrain` (also `python -m pretrain`): training, evaluation and HF export.

Not implemented yet: the trainer lands with issue 5, the seed methods with issue 6 and HF export
with issue 8. Until then this command says so and exits with status 2.
"""

import sys

PLANNED = "train, eval (issue 5); text-pretrain (issue 6); export-hf, import-hf (issue 8)"


def main(argv: list[str] | None = None) -> int:
    print(f"retina-pretrain: not implemented yet; planned subcommands: {PLANNED}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
