"""The wheels (paths given) whose distribution this interpreter lacks, one per line; the others are named on
stderr as kept. gpu_session.sh installs only the missing ones: a package the GPU image already has was built for
its torch and numpy, so it stays in use.

    python benchmarks/missing_wheels.py DIR/*.whl
"""

import importlib.metadata
import os
import sys

for path in sys.argv[1:]:
    name = os.path.basename(path).split("-")[0]  # a wheel's file name starts with its distribution name
    try:
        print(f"kept {name} {importlib.metadata.version(name)}", file=sys.stderr)
    except importlib.metadata.PackageNotFoundError:
        print(path)
