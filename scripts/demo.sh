#!/usr/bin/env bash
# `make demo`: the main job end to end on built-in data.
# Synthesize fundus data in the real layouts, build public / elite / eval shard sets and verify them, train on
# them, evaluate (report with plots), export to Hugging Face format and classify from the export.
set -euo pipefail
PY=${1:-python}
OUT=${2:-demo-output}
DATA="$OUT/data"

echo "== 1/6 synthesize data into $DATA"
"$PY" -m shards synth --out "$DATA" --public 600 --elite 200 --eval 200 --seed 0

echo "== 2/6 build shards"
public_sources=()
for frame in "$DATA"/dataframes/pretraining/9*_SYNTH_*.csv; do
  public_sources+=(--source "flair:$frame:$DATA/images")
done
"$PY" -m shards build --out "$OUT/shards/public" "${public_sources[@]}" \
  --shard-size 200 --image-size 224 --split train=95,val=5
"$PY" -m shards build --out "$OUT/shards/elite" --source "mm-retinal:$DATA/images/MM-Retinal" \
  --shard-size 100 --image-size 224 --split train=90,val=10
"$PY" -m shards build --out "$OUT/shards/eval" \
  --source "flair:$DATA/dataframes/transferability/classification:$DATA/images" \
  --shard-size 200 --image-size 224 --split test=100 --order source

echo "== 3/6 verify and summarise"
for set in public elite eval; do
  "$PY" -m shards -q verify "$OUT/shards/$set"
done
"$PY" -m shards -q stats "$OUT/shards/public" --plot "$OUT/public-stats.png"
"$PY" -m shards -q inspect "$OUT/shards/elite" -n 2

echo "== 4/6 train a FLAIR-style model on the shards (DeepSpeed, CPU; rerunning resumes)"
"$PY" -m pretrain train --config pretrain/configs/demo_cpu.yaml --run.dir "$OUT/run" \
  --data.public "$OUT/shards/public" --data.elite "$OUT/shards/elite"

echo "== 5/6 evaluate: zero-shot, linear/k-shot probes, retrieval; run report"
"$PY" -m pretrain eval --run "$OUT/run" --eval-shards "$OUT/shards/eval" \
  --retrieval-shards "$OUT/shards/elite" --retrieval-split val --report

echo "== 6/6 export to Hugging Face format and classify from the export with stock transformers"
"$PY" -m pretrain export-hf "$OUT/run" "$OUT/hf" --eval "$OUT/run/eval/metrics.json" --overwrite
"$PY" scripts/zero_shot_from_export.py "$OUT/hf" \
  "$DATA/dataframes/transferability/classification/SYNTH_FIVES.csv" "$DATA/images" -n 20
echo "demo finished: shards under $OUT/shards; run, checkpoints, TensorBoard and report ($OUT/run/eval/report.md)"
echo "under $OUT/run; the Hugging Face export under $OUT/hf"
