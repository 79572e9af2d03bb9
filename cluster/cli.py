"""`retina-cluster` (also `python -m cluster`): a local Ray head, job submission, status, logs, embeddings.

Not implemented yet: it lands with issue 7. Until then this command says so and exits with status 2.
"""

import sys

PLANNED = "up, down, submit, status, logs, stop, embed (issue 7)"


def main(argv: list[str] | None = None) -> int:
    print(f"retina-cluster: not implemented yet; planned subcommands: {PLANNED}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
