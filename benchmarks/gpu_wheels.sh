#!/usr/bin/env bash
# What benchmarks/gpu_session.sh needs beyond a stock CUDA PyTorch image (Python 3.12, x86-64, with torch,
# triton, numpy, transformers, timm and what those pull in: pyyaml, pillow, safetensors, tokenizers,
# huggingface_hub, tqdm, packaging, fsspec). The GPU machine reaches no package index, so it is carried:
#   benchmarks:  open_clip (ClipLoss, the baseline) with ftfy and wcwidth, and Inf-CL;
#   retina-pretrain train / eval / export-hf: DeepSpeed and its requirements (einops, hjson, msgpack, ninja, psutil,
#     py-cpuinfo, pydantic with pydantic-core, annotated-types, typing-inspection), webdataset with braceexpand,
#     jsonargparse with docstring-parser (the command lines), tensorboard with protobuf and absl-py (the run's
#     SummaryWriter), scikit-learn with scipy, joblib (+ cloudpickle), threadpoolctl and narwhals (eval's metrics
#     and probes);
#   minilm-tokenizer/: the bundled MiniLM's tokenizer files, no weights (the random-init text towers' tokenizer).
# gpu_session.sh installs only those whose distribution the GPU machine lacks (benchmarks/missing_wheels.py), so
# its own builds stay in use. benchmarks/gpu_wheels_check.py checks on a CPU that the list is complete.
# Binary wheels are the cp312 manylinux ones; DeepSpeed has only an sdist, so it is built locally into a
# py3-none-any wheel with its CUDA ops left out (DS_BUILD_OPS=0: they would JIT-compile; the training uses torch's
# AdamW), which installs without a compiler. About 58 MiB in all, scipy 34 of it:
# at most 64 MiB beside the repository travels to the GPU machine.
# Versions follow constraints.txt.
# Usage: bash benchmarks/gpu_wheels.sh [DIR]   (`make gpu-wheels`; default .whl; gpu_session.sh takes it as WHEELS)
#   PYTHON: an interpreter with the project's torch (builds DeepSpeed, finds the MiniLM tokenizer); default python3
#   PY_VERSION: the GPU machine's Python (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
pin() { grep -i "^$1==" constraints.txt | head -n 1; }
mkdir -p "$DIR"
WANTED=(open_clip_torch ftfy wcwidth inf-cl
        einops hjson msgpack ninja psutil py-cpuinfo pydantic pydantic_core annotated-types typing-inspection
        webdataset braceexpand jsonargparse docstring_parser tensorboard protobuf absl-py
        scikit-learn scipy joblib cloudpickle threadpoolctl narwhals)
PINS=()
for name in "${WANTED[@]}"; do
  p=$(pin "$name") || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  PINS+=("$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  -d "$DIR" "${PINS[@]}"

DS=$(pin deepspeed)
if ! ls "$DIR"/deepspeed-"${DS#*==}"-*.whl > /dev/null 2>&1; then
  # --no-build-isolation: DeepSpeed's setup.py imports torch, so it builds against the project's own torch
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-binary deepspeed -w "$DIR" "$DS"
fi

TOKENIZER=$("$PY" -c "from pretrain.towers import offline_minilm_path; print(offline_minilm_path())")
mkdir -p "$DIR/minilm-tokenizer"
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  cp "$TOKENIZER/$f" "$DIR/minilm-tokenizer/"
done
ls -la "$DIR" "$DIR/minilm-tokenizer"
du -sh "$DIR"
