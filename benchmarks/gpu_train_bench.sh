#!/usr/bin/env bash
# One H100 call (issue 3 / 7): GEMM-operand overhead, and the 135M GPT train step of each recipe vs bf16
# (pure-XLA emulation, and impl="auto": MX GEMMs on the Pallas kernel, per-tensor FP8 GEMMs on XLA's FP8
# GEMM), with the top device kernels of each step. Logs to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/mxbench}"; mkdir -p "$OUT"
RECIPES="${1:-bf16,mxfp8,fp8_current@auto,mxfp8@auto,fp8_current,fp8_delayed@auto}"
nvidia-smi -L
timeout 100 python3 -m benchmarks.bench_dot_overhead 2>&1 | grep -v Warn | tee "$OUT/dot_overhead2.log"
timeout 430 python3 -m benchmarks.bench_train_step --recipes "$RECIPES" --warmup 2 --iters 8 --profile \
  --out "$OUT/train_step2.json" 2>&1 | grep -v Warn | tee "$OUT/train_step2.log"
