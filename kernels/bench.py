"""`retina-bench` (also `python -m kernels.bench`): kernel microbenchmarks.

Not implemented yet: `contrastive` lands with issue 3 and `attention` with issue 4. Until then
this command says so and exits with status 2.
"""

import sys

PLANNED = "contrastive (issue 3), attention (issue 4)"


def main(argv: list[str] | None = None) -> int:
    print(f"retina-bench: not implemented yet; planned benchmarks: {PLANNED}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
