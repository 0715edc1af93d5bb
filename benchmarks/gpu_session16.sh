#!/usr/bin/env bash
# Session 16 device calls: the Mosaic GPU MXFP4 weight-only kernel (kernels/wo_mgpu.py).
#   OUT=$OUT bash benchmarks/gpu_session16.sh N
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
case "${1:-1}" in
  1) timeout 560 python3 benchmarks/bench_wo_mgpu.py --budget 530 --out "$OUT" ;;
esac
