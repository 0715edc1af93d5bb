#!/usr/bin/env bash
# Session 10's H100 lease (issue 7), `bash benchmarks/gpu_session10.sh N`, logs to $OUT. Candidate indices are into
# kernels.wo_triton.CANDIDATES at the commit that ran them (BENCHMARKS.md names it). Call 1:
#   1. group-major FP4 weights (layout="groups": every K step's tile of rows one contiguous run; 49-57) beside
#      their row-major twins (36 = 49, 34 = 50), MXFP4 / NVFP4 at M = 16, 1, 32, device kernels listed;
#   2. Nsight Compute of 49 (DRAM sectors vs cycles active, against session 9 run 4's 47% / 61%).
#      (It profiled a row-major weight: ncu_wo.py then prepared the default layout, not the config's.)
# Call 2: no split-K on group-major weights (58-64: 8 warps, depths, 2 accumulators) beside run 1's best (52 no
#   split-K, 49 split-K 2), MXFP4 / NVFP4 at M = 16, 1, 32, kernels listed.
# Call 3 (at commit 1d3e78c, which had the rolling GEMM schedule): deeper pipelines without split-K (65-69; --smem-budget 200 KB) beside 64 / 52 / 49, MXFP4 at M = 16, 1,
#   32 (64 and 65 timed twice); then the GEMM: check + final sweep at 8192^3 with the rolling block schedule
#   (pair="roll", k128 s4 / s3) beside the paired forms, and scaled_dot in the same process.
# Call 4: two CTAs per SM without split-K (32-row tiles, 70-73) beside 64 (512-groups) and the 256-group forms
#   (49 group-major, 36 row-major), MXFP4 / NVFP4 at M = 1..256 (every candidate at M = 16 and 128).
# Call 5: the shipped FP4 defaults over M = 1..256 (group-major: 49 / 74 = 256-groups M <= 32 / larger, 64 / 67 =
#   512-groups; row-major 36 / 16 for comparison), MXFP4 and NVFP4, every candidate at every M; MXFP8's defaults
#   (1 / 5) at M = 16.
. benchmarks/gpu_env.sh
if [ "${1:-1}" = 1 ]; then
  timeout 330 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 36,34,49,50,51,52,53,54,55,56,57 --exact-extra "" --top 4 --out "$OUT" --budget 320 2>&1 \
    | grep -v Warn | tail -60
  ncu_one mxfp4_e2m1 49
  exit 0
fi
if [ "${1:-1}" = 2 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 52,49,58,59,60,61,62,63,64 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 \
    | grep -v Warn | tail -40
  exit 0
fi
if [ "${1:-1}" = 3 ]; then
  timeout 200 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1 --kernels \
    --cands 64,65,66,67,68,69,52,49,64,65 --smem-budget 204800 --exact-extra "" --top 3 --out "$OUT" \
    --budget 190 2>&1 | grep -v Warn | tail -30
  timeout 330 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set final \
    --sizes 8192x8192x8192 --sizes-lite --out "$OUT" --budget 320 2>&1 | grep -v Warn | tail -40
  exit 0
fi
if [ "${1:-1}" = 4 ]; then
  timeout 420 python3 benchmarks/bench_wo.py --ms 16,128,1,2,4,8,32,64,256 --anchors 16,128 --kernels \
    --fmts mxfp4_e2m1,nvfp4 --cands 64,70,71,72,73,49,36 --exact-extra "" --top 3 --out "$OUT" --budget 410 2>&1 \
    | grep -v Warn | tail -40
  exit 0
fi
if [ "${1:-1}" = 5 ]; then
  timeout 400 python3 benchmarks/bench_wo.py --ms 16,128,1,2,4,8,32,64,256 --anchors 16,128 --kernels \
    --fmts mxfp4_e2m1,nvfp4 --cands 49,74,64,67,36,16 --exact-extra "" --top 6 --out "$OUT" --budget 390 2>&1 \
    | grep -v Warn | tail -36
  mkdir -p "$OUT/fp8"
  timeout 100 python3 benchmarks/bench_wo.py --ms 16 --anchors 16 --fmts mxfp8_e4m3 --cands 1,5 \
    --exact-extra "" --top 2 --out "$OUT/fp8" --budget 90 2>&1 | grep -v Warn | tail -6
  exit 0
fi
