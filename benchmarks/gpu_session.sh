#!/usr/bin/env bash
# Every GPU check of the project in one run (about 5 minutes on an H100), for a session lent a GPU machine:
#   bash benchmarks/gpu_session.sh [RESULTS_DIR]      (default benchmarks/results)
# 1. cuda_checks.py: the CUDA paths against CPU float64 references (losses, memory bank, default model);
# 2. gpu_tagging.py: sadcl train fed from a JPEG folder against the synthetic step, and predict from files on the
#    GPU against tensors (issue 13);
# 3. bench_memory_bank.py --device cuda: the memory-bank update against the per-label loop on the GPU;
# 4. bench_train_gpu.py: sadcl_coco_448 training step, ours vs the authors'-style configuration (issue 6.5);
# 5. gpu_train_tiny.py: a tiny SADCL trained a few hundred steps with bf16 and with fp16+GradScaler (issue 3.7);
# 6. bench_train_gpu.py --compile, if time allows (torch.compile adds minutes of compilation).
# Writes RESULTS_DIR/gpu_session.log and one JSON per step. Runs from the source tree (PYTHONPATH), so the
# machine needs torch, timm, huggingface_hub, safetensors and pillow but no install step. A failing step does
# not stop the others, and the script exits non-zero if any failed. GPU_SESSION_BUDGET_S (default 540) bounds
# the whole run: each step's time limit is cut to what is left of it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
budget=${GPU_SESSION_BUDGET_S:-540}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=0
log="$out/gpu_session.log"
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 30 ]; then echo "=== $name: skipped, ${left}s of the budget left" | tee -a "$log"; failed=1; return; fi
  echo "=== $name (limit ${limit}s, at ${SECONDS}s)" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after ${SECONDS}s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed=1
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
  'import torch, timm, huggingface_hub; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__, "hf_hub", huggingface_hub.__version__)'; } \
  2>&1 | tee "$log"
step cuda_checks 120 python3 benchmarks/cuda_checks.py --out "$out/cuda_checks.json"
step gpu_tagging 330 env GPU_TAGGING_BUDGET_S=320 python3 benchmarks/gpu_tagging.py --out "$out/gpu_tagging.json"
step memory_bank 90 python3 benchmarks/bench_memory_bank.py --device cuda --out "$out/memory_bank_cuda.json"
step train_gpu 240 python3 benchmarks/bench_train_gpu.py --out "$out/train_gpu.json"
step gpu_train_tiny_bf16 120 python3 benchmarks/gpu_train_tiny.py --amp bf16 --out "$out/gpu_train_tiny.json"
step gpu_train_tiny_fp16 120 python3 benchmarks/gpu_train_tiny.py --amp fp16 --steps 100 --out "$out/gpu_train_tiny_fp16.json"
step train_gpu_compile 300 python3 benchmarks/bench_train_gpu.py --compile --out "$out/train_gpu_compile.json"
exit $failed
