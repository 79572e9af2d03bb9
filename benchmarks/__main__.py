"""`python -m benchmarks`: the same as the `retina-bench` console script."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
