#!/usr/bin/env bash
# Prepared in session 6. Call 1 ran in session 8 (as benchmarks/gpu_session8.sh, with the Nsight Compute profiles;
# BENCHMARKS.md "Session 8"); call 2 (issue 3's presets, re-measured with the shipped block max) is still to run.
# Logs to $OUT. Two calls of about 8 minutes each:
#   bash benchmarks/gpu_next.sh 1   # issue 7: design (b) with double-buffered dequantized tiles (deq_slots=2),
#                                   #   checked on the GPU (poisoned outputs) and timed beside the current best
#                                   #   of both designs and lax.scaled_dot at 8192^3; weight-only "wt" and "fold"
#                                   #   candidates (12-14), the fold checked on every code before it is timed
#   bash benchmarks/gpu_next.sh 2   # issue 3: every preset, Dense-only, default flags, with the shipped
#                                   #   reduce_window block max (session 6 re-measured only bf16 and mxfp8: 1.259x)
# Offline (benchmarks/aot_sass.py --variant bf16 --set a_regs=False --set deq_slots=2 --set tile_m=64): ptxas
# keeps these wgmmas asynchronous (one "wait until <= 2 groups" per K step); with A in registers (a_regs=True)
# it serializes them for lack of registers, so the deq_slots=2 candidates take A through shared memory.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT="${OUT:-/tmp/mxbench}"; mkdir -p "$OUT"
nvidia-smi -L
if [ "${1:-1}" = 1 ]; then
  timeout 330 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set dq2 \
    --sizes 8192x8192x8192 --sizes-lite --budget 320 --out "$OUT" 2>&1 | grep -v Warn | tail -40
  timeout 200 python3 benchmarks/bench_wo.py --ms 1,16,32 --anchors 16 --fmts mxfp8_e4m3,mxfp4_e2m1,nvfp4 \
    --cands 1,2,12,13,14 --exact-extra mxint8,mxfp6_e2m3 --out "$OUT" --budget 190 2>&1 | grep -v Warn | tail -40
else
  timeout 560 python3 -m benchmarks.bench_train_step --exclude_attn --warmup 3 --iters 20 \
    --recipes bf16,mxfp8,mxfp8_e5m2grad,mxfp6,mxfp4_weights,fp8_current,fp8_delayed,nvfp4 \
    --out "$OUT/presets_noattn_default.json" 2>&1 | grep -v Warn | tee "$OUT/presets_noattn_default.log"
fi
