#!/usr/bin/env bash
# The wheels benchmarks/gpu_session.sh needs beyond a stock CUDA PyTorch image (Python 3.12, x86-64):
# open_clip (ClipLoss, the baseline) with ftfy and wcwidth, and Inf-CL. Versions follow constraints.txt.
# Usage: bash benchmarks/gpu_wheels.sh [DIR]   (default .whl; pass it as WHEELS=DIR to gpu_session.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
pin() { grep -i "^$1==" constraints.txt | head -n 1; }
mkdir -p "$DIR"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" "$(pin open_clip_torch)" "$(pin ftfy)" "$(pin wcwidth)" "$(pin inf-cl)"
ls -la "$DIR"
