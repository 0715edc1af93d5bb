#!/usr/bin/env bash
# Session 11's H100 lease (issue 7), `bash benchmarks/gpu_session11.sh N`, logs to $OUT. Candidate indices are into
# kernels.wo_triton.CANDIDATES at the commit that ran them (BENCHMARKS.md names it). Call 1:
#   1. split-K summed in the kernel (WOConfig(reduce="kernel"), 75-79, 81) bit for bit against the XLA-summed
#      config, 10 repeats per shape (benchmarks/check_wo_kred.py);
#   2. MXFP4 / NVFP4 at M = 16, 1, 32: 75-79 beside their XLA-summed twins (49, 50, 54, 68, 74) and 64 (no split-K);
#   3. MXFP8 at M = 16: the default (1) beside split-K 2 summed by XLA (80) / in the kernel (81).
. benchmarks/gpu_env.sh
if [ "${1:-1}" = 1 ]; then
  timeout 170 python3 benchmarks/check_wo_kred.py --repeats 10 --out "$OUT" \
    --pairs mxfp4_e2m1:75,mxfp4_e2m1:77,nvfp4:79,mxfp8_e4m3:81 2>&1 | grep -v Warn | tail -30
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 75,49,76,50,77,54,78,68,79,74,64 --exact-extra "" --top 4 --out "$OUT" --budget 290 2>&1 \
    | grep -v Warn | tail -60
  mkdir -p "$OUT/fp8"
  timeout 90 python3 benchmarks/bench_wo.py --ms 16 --anchors 16 --fmts mxfp8_e4m3 --cands 1,80,81 --kernels \
    --exact-extra "" --top 3 --out "$OUT/fp8" --budget 80 2>&1 | grep -v Warn | tail -12
  exit 0
fi
# Call 2: the in-kernel sum where XLA's grows (M >= 32): FP4 defaults 49 / 74 beside 75 / 79 (and 50 / 76),
#   MXFP4 / NVFP4 at M = 32, 64, 128, 256; MXFP8's defaults (82 at M = 64, 5 above) beside 83 / 84; then Nsight
#   Compute of 49 and 64 on their group-major weights (none was taken in session 10).
if [ "${1:-1}" = 2 ]; then
  timeout 250 python3 benchmarks/bench_wo.py --ms 32,64,128,256 --anchors 32,64,128,256 --kernels \
    --fmts mxfp4_e2m1,nvfp4 --cands 49,75,74,79,50,76 --exact-extra "" --top 6 --out "$OUT" --budget 240 2>&1 \
    | grep -v Warn | tail -24
  mkdir -p "$OUT/fp8"
  timeout 100 python3 benchmarks/bench_wo.py --ms 64,128,256 --anchors 64,128,256 --fmts mxfp8_e4m3 --kernels \
    --cands 82,83,5,84 --exact-extra "" --top 4 --out "$OUT/fp8" --budget 90 2>&1 | grep -v Warn | tail -10
  ncu_one mxfp4_e2m1 49
  ncu_one mxfp4_e2m1 64
  exit 0
fi
