#!/usr/bin/env bash
# Session 15 device calls: design (c) (variant "f16") of the block-scaled GEMM, removed after the runs: check out
# commit 9be7d7c (which holds the code they timed) to re-run them. OUT=$OUT bash benchmarks/gpu_session15.sh N
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
case "${1:-1}" in
  1) timeout 570 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set f16 --check-wo none \
       --sizes 8192x8192x8192 --sizes-lite --budget 540 --out "$OUT" ;;
esac
