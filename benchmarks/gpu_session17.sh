#!/usr/bin/env bash
# Session 17 device calls: design (b) with one dequantized B tile shared by both warpgroups (GemmConfig(coop=True)).
# OUT=$OUT bash benchmarks/gpu_session17.sh N
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
case "${1:-1}" in
  1) timeout 570 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set coop --check-wo none \
       --sizes 8192x8192x8192 --sizes-lite --budget 540 --out "$OUT" ;;
esac
