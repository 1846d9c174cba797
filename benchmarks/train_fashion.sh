#!/usr/bin/env bash
# Trains the shipped default model `sadcl_fashion_mosaic` on CPU, the paper's two steps at small scale:
#   step 1: the Query2Label baseline (asymmetric loss only) from scratch;
#   step 2: SADCL fine-tuning (ASL + 100·SSCL + 50·PSCL, prototypes from the step-1 model, memory bank).
# Then evaluates on 10,000 test mosaics (built from Fashion-MNIST's test split only).
# Usage: bash benchmarks/train_fashion.sh [OUT_DIR]   (default runs/fashion; data in data/fashion*)
set -euo pipefail
out=${1:-runs/fashion}
data=${DATA_DIR:-data}
[ -f "$data/fashion/train.csv" ] || sadcl mosaics "$data/fashion" --split train -n 60000 --seed 0
[ -f "$data/fashion/test.csv" ] || sadcl mosaics "$data/fashion" --split test -n 10000 --seed 2
[ -f "$data/fashion-val/train.csv" ] || sadcl mosaics "$data/fashion-val" --split train -n 2000 --seed 1
common=(--data "$data/fashion/train.csv" --val-data "$data/fashion-val/train.csv" --label-names "$data/fashion/labels.txt"
        --model sadcl_fashion_mosaic --augment none --batch-size 64 --weight-decay 1e-4 --ema-decay 0.999
        --amp none --num-workers 1 --no-progress --seed 0 --no-early-stop)
start=$(date +%s)
sadcl train "${common[@]}" --objective asl --gamma-neg 4 --epochs 3 --lr 2e-3 --output "$out/step1"
sadcl train "${common[@]}" --objective sadcl --gamma-neg 0 --epochs 1 --lr 2e-4 \
  --checkpoint "$out/step1/best.safetensors" --output "$out/step2"
echo "training wall time: $(( $(date +%s) - start )) s"
sadcl eval --checkpoint "$out/step2/best.safetensors" --data "$data/fashion/test.csv" \
  --output "$out/test_metrics.json"
