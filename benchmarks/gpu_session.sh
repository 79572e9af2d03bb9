#!/usr/bin/env bash
# Everything that needs a GPU, in one go per part (each part fits a 10-minute machine slot):
#   part 1: GPU-marked tests (bf16 kernel correctness at real sizes), training throughput, attention benchmark
#   part 2: contrastive-loss benchmark
# Usage: OUT=results-dir bash benchmarks/gpu_session.sh 1|2   (WHEELS=dir of extra wheels to install first)
# Results land in $OUT as JSON/PNG/logs, to be committed under benchmarks/results/.
set -uo pipefail
PART=${1:?part 1 or 2}
OUT=${OUT:?set OUT to a results folder}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/device-$PART.txt"
"$PY" - <<'PY' | tee -a "$OUT/device-$PART.txt"
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
for p in ("triton", "transformers", "timm", "open_clip_torch", "xformers"):
    try: print(p, m.version(p))
    except Exception as e: print(p, "missing", e)
try:
    import xformers.ops  # noqa: F401
    print("xformers.ops importable")
except Exception as e:
    print("xformers.ops not importable:", repr(e)[:300])
PY

step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 25 "$OUT/$name.log"
}

if [ "$PART" = 1 ]; then
  step gpu-tests 150 "$PY" -m pytest -m gpu tests/kernels -q -p no:cacheprovider -o addopts=""
  step train-throughput 200 "$PY" benchmarks/train_throughput.py gpu --out "$OUT/train_throughput-h100.json"
  step attention-bench 190 "$PY" -m kernels.bench attention --out "$OUT/attention-h100.json"
else
  step contrastive-bench 540 "$PY" -m kernels.bench contrastive --out "$OUT/contrastive-h100.json"
fi
ls -la "$OUT"
