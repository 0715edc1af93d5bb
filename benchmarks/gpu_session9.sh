#!/usr/bin/env bash
# Session 9's H100 lease (issue 7), `bash benchmarks/gpu_session9.sh N`, logs to $OUT. Candidate indices are into
# kernels.wo_triton.CANDIDATES at the commit that ran them (BENCHMARKS.md names it). Call 1:
#   1. FP4 as uint16 words (pack_fp4: four 64-wide tiles per word, 11 decode instructions per 8 elements; x
#      through LDSM) and NVFP4's folded rescale: every code / extreme scale checked per (mode, decode, fold)
#      kind, then MXFP4 / NVFP4 at M = 1..256 over the old default (16) and new wider / deeper configs (19-23);
#   2. Nsight Compute of the MXFP4 default.
# Call 2: more warps per scheduler (run 1's counters: 1.94 active, stall "wait" on top): split-K 4 / 8, fewer
#   stages, 8 warps, 32-row tiles (24-28) beside the defaults (16; 15 = split-K 4 st3), M = 16, 1, 32; counters.
# Call 3: FP4 in 512-groups (29-32) beside the default (16), M = 16, 1, 32; counters of 29.
# Call 4: 2 / 4 independent accumulators (33-36) beside 29 and 16, M = 16, 1, 32; counters of 34.
# Call 5: 128-row tiles / 8 warps / no eviction hints (37-40) beside 34, MXFP4 and NVFP4 at M = 16, 1, 32, with
#   each timing's device kernels listed (the split-K sum's share).
# Call 6: no split-K (41-44) beside 39 (split-K 2, its partials now summed elementwise), kernels listed.
# Call 7: staggered K order (45-47; 48 = 47 unstaggered) beside 39 and 41, kernels listed; counters of 45.
# Call 8: the shipped defaults over M = 1..256 (34 = FP4's, 512-groups; 1 / 5 = MXFP8's small / large M; 16 =
#   FP4's session-8 default in 256-groups), MXFP4, NVFP4, MXFP8.
. benchmarks/gpu_env.sh
if [ "${1:-1}" = 1 ]; then
  timeout 440 python3 benchmarks/bench_wo.py --ms 16,128,1,2,4,8,32,64,256 --anchors 16,128 \
    --fmts mxfp4_e2m1,nvfp4 --cands 16,19,20,21,22,23 --exact-extra "" --top 2 --out "$OUT" --budget 430 2>&1 \
    | grep -v Warn | tail -50
  ncu_one mxfp4_e2m1 16
  exit 0
fi
if [ "${1:-1}" = 2 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 \
    --cands 16,15,24,25,26,27,28 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 | grep -v Warn | tail -40
  ncu_one mxfp4_e2m1 25
  exit 0
fi
if [ "${1:-1}" = 3 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 \
    --cands 16,29,30,31,32 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 | grep -v Warn | tail -40
  ncu_one mxfp4_e2m1 29
  exit 0
fi
if [ "${1:-1}" = 4 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 \
    --cands 29,16,33,34,35,36 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 | grep -v Warn | tail -40
  ncu_one mxfp4_e2m1 34
  exit 0
fi
if [ "${1:-1}" = 5 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 34,37,38,39,40 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 | grep -v Warn | tail -40
  exit 0
fi
if [ "${1:-1}" = 6 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 39,41,42,43,44 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 | grep -v Warn | tail -40
  exit 0
fi
if [ "${1:-1}" = 7 ]; then
  timeout 300 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 39,45,46,47,48,41 --exact-extra "" --top 3 --out "$OUT" --budget 290 2>&1 | grep -v Warn | tail -40
  ncu_one mxfp4_e2m1 45
  exit 0
fi
if [ "${1:-1}" = 8 ]; then
  timeout 420 python3 benchmarks/bench_wo.py --ms 16,128,1,2,4,8,32,64,256 --anchors 16,128 --kernels \
    --fmts mxfp4_e2m1,nvfp4,mxfp8_e4m3 --cands 34,16,1,5 --exact-extra "" --top 2 --out "$OUT" --budget 410 2>&1 \
    | grep -v Warn | tail -45
  exit 0
fi
