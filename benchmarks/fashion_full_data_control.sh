#!/usr/bin/env bash
# Full-data control for the default model's SADCL step: continue the step-1 (Query2Label) model for the same
# one epoch with the asymmetric loss alone (same lr, γ−, EMA, seed as step 2 of train_fashion.sh), then evaluate
# on the same 10,000 test mosaics. Compare with step 2 of the same run.
# Usage: bash benchmarks/fashion_full_data_control.sh RUN_DIR   (a folder written by train_fashion.sh)
set -euo pipefail
run=${1:-runs/fashion}
data=${DATA_DIR:-data}
sadcl train --data "$data/fashion/train.csv" --val-data "$data/fashion-val/train.csv" --label-names "$data/fashion/labels.txt" \
  --model sadcl_fashion_mosaic --augment none --batch-size 64 --weight-decay 1e-4 --ema-decay 0.999 --amp none \
  --num-workers 1 --no-progress --seed 0 --no-early-stop \
  --objective asl --gamma-neg 0 --epochs 1 --lr 2e-4 --checkpoint "$run/step1/best.safetensors" --output "$run/control"
sadcl eval --checkpoint "$run/control/best.safetensors" --data "$data/fashion/test.csv" --output "$run/control_test_metrics.json"
