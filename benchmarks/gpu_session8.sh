#!/usr/bin/env bash
# Session 8's H100 lease (issue 7), `bash benchmarks/gpu_session8.sh N` for call N = 1..5, logs to $OUT.
# Candidate indices are into kernels.wo_triton.CANDIDATES as it stood at each call: calls 1 and 2 ran at commits
# 8221a8c and 315f488 (15-18 were the n_acc variants, 19-24 split-K; both lists were replaced before call 3), so
# check those out to repeat them; calls 3-5 match the current list. Call 1:
#   1. weight-only at M = 16 (and 1, 32): the untimed candidates (12-18: W as the wgmma A operand, the folded
#      rescale, 2 / 4 independent accumulators) beside the best so far, exactness checked first on every code;
#   2. Nsight Compute on the two best kernels so far (MXFP4 asm, MXFP8): stall reasons and per-SASS samples;
#   3. the block-scaled GEMM's double-buffered design (b) (deq_slots=2): poisoned-output check, then timed at 8192^3.
. benchmarks/gpu_env.sh
if [ "${1:-1}" = 3 ]; then  # call 3: 2-D (swizzled) shared tiles: every format's exactness, then timed, counters
  timeout 260 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,mxfp8_e4m3,nvfp4 \
    --cands 0,1,2,12,13,14,15,16,17,18 --exact-extra mxint8,mxfp6_e2m3,mxfp6_e3m2,mxfp8_e5m2 --top 3 --out "$OUT" \
    --budget 250 2>&1 | grep -v Warn | tail -60
  ncu_one mxfp4_e2m1 14
  ncu_one mxfp8_e4m3 1
  exit 0
fi
if [ "${1:-1}" = 5 ]; then  # call 5: the shipped defaults (cands 1, 14, 16; 5 for large M) over M = 1..256
  timeout 420 python3 benchmarks/bench_wo.py --ms 16,128,1,2,4,8,32,64,256 --anchors 16,128 \
    --fmts mxfp8_e4m3,mxfp4_e2m1,nvfp4,mxfp6_e2m3,mxint8 --cands 1,14,16,5 --exact-extra "" --top 2 \
    --out "$OUT" --budget 410 2>&1 | grep -v Warn | tail -40
  exit 0
fi
if [ "${1:-1}" = 4 ]; then  # call 4: call 3's timing again (its bench stopped at the e5m2 fold check), counters
  timeout 230 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,mxfp8_e4m3,nvfp4 \
    --cands 1,2,12,13,14,15,16,17,18 --exact-extra mxfp8_e5m2 --top 3 --out "$OUT" --budget 220 2>&1 \
    | grep -v Warn | tail -60
  ncu_one mxfp4_e2m1 15
  exit 0
fi
if [ "${1:-1}" = 2 ]; then  # call 2: more programs per SM (split-K 2 / 4 / 8), then their counters
  timeout 200 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,mxfp8_e4m3 \
    --cands 14,2,1,19,20,21,22,23,24 --exact-extra "" --top 3 --out "$OUT" --budget 190 2>&1 | grep -v Warn | tail -45
  ncu_one mxfp4_e2m1 19
  ncu_one mxfp8_e4m3 21
  exit 0
fi
timeout 200 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,mxfp8_e4m3 \
  --cands 2,1,12,13,14,15,16,17,18 --exact-extra mxint8 --top 3 --out "$OUT" --budget 190 2>&1 | grep -v Warn | tail -45
ncu_one mxfp4_e2m1 2
ncu_one mxfp8_e4m3 1
timeout 190 python3 benchmarks/bench_matmul.py --sections env,check,sweep --sweep-set dq2 --budget 180 \
  --check-wo min --out "$OUT" 2>&1 | grep -v Warn | tail -25
