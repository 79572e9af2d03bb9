#!/usr/bin/env bash
# Every GPU check of the project in one call, under 8 minutes on one Hopper GPU (each step has its own limit):
#   gpu-tests        pytest -m gpu tests/kernels: bf16/fp32 kernel correctness at real sizes (contrastive B = 32768)
#   contrastive      retina-bench contrastive: triton vs open_clip, Inf-CL, eager at B 16k/32k/64k, D 512/768
#   tile-sweep       benchmarks/contrastive_tile_sweep.py: the stripe kernels' spill-free candidates at B = 32768
#   attention        retina-bench attention: triton vs SDPA (and xformers where it loads)
#   train            benchmarks/train_throughput.py gpu: ViT-B/16 + BERT-base steps per second
# Usage: OUT=results-dir [WHEELS=dir] bash benchmarks/gpu_session.sh
#   WHEELS: a folder of wheels to install first (benchmarks/gpu_wheels.sh makes it: open_clip, Inf-CL).
# At most 8 files land in $OUT: session.log (device, versions, every step's log) and the results JSON/PNG,
# named after the GPU, to be committed under benchmarks/results/.
set -uo pipefail
OUT=${OUT:?set OUT to a results folder}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g; s/^nvidia-//')
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$PY" - <<'PY'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
for p in ("triton", "transformers", "timm", "open_clip_torch", "inf-cl", "xformers"):
    try: print(p, m.version(p))
    except Exception as e: print(p, "missing", e)
PY
} > "$LOG" 2>&1
cat "$LOG"

step() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.tmp" 2>&1
  local rc=$?
  cat "$OUT/$name.tmp" >> "$LOG"
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
  tail -n 14 "$OUT/$name.tmp"
  rm -f "$OUT/$name.tmp"
}

# The fp32 attention test is left out: its autotune space compiles spilling fp32 configurations for minutes
# (benchmarks/results/kernel-resources-sm90.json lists them); it returns once that space is pruned.
# The step limits add up to 460 s, so the whole call stays under 8 minutes even when a step runs to its limit.
step gpu-tests 120 "$PY" -m pytest -m gpu tests/kernels -q -p no:cacheprovider -o addopts="" \
  -k "not test_fp32_matches_reference_on_gpu"
step contrastive 130 "$PY" -m benchmarks contrastive --batch 16384 32768 65536 --dim 512 768 \
  --providers triton eager open_clip inf_cl --modes full --repeats 5 --warmup 2 --out "$OUT/contrastive-$GPU.json"
step tile-sweep 90 "$PY" benchmarks/contrastive_tile_sweep.py --batch 32768 --ds-rows 1024 2048 \
  --out "$OUT/contrastive_tile_sweep-$GPU.json"
step attention 60 "$PY" -m benchmarks attention --repeats 5 --warmup 2 --out "$OUT/attention-$GPU.json" \
  --shapes vit_b16_224 vit_b16_512 text_256_padded decoder_self_64 decoder_cross_64x197
step train 60 "$PY" benchmarks/train_throughput.py gpu --warmup 3 --steps 12 --out "$OUT/train_throughput-$GPU.json"
ls -la "$OUT"
