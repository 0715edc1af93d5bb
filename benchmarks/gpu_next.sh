#!/usr/bin/env bash
# The next H100 lease (prepared in session 6). Logs to $OUT. About 9 minutes.
#  1. Issue 3: every preset, Dense-only, default flags, donated state, with the shipped reduce_window block max
#     (session 6 re-measured only bf16 and mxfp8 after the change: 1.259x); nvfp4 last (slowest compile).
#  2. Issue 7: the weight-only "wt" + per-element-scaling candidates (12, 13: W as the wgmma A operand; offline
#     SASS: MXFP8 622 loop instructions per step against 706) beside the current best (1, 2), M = 16.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT="${OUT:-/tmp/mxbench}"; mkdir -p "$OUT"
nvidia-smi -L
timeout 330 python3 -m benchmarks.bench_train_step --exclude_attn --warmup 3 --iters 20 \
  --recipes bf16,mxfp8_e5m2grad,mxfp6,mxfp4_weights,fp8_current,fp8_delayed,nvfp4 \
  --out "$OUT/presets_noattn_default.json" 2>&1 | grep -v Warn | tee "$OUT/presets_noattn_default.log"
timeout 150 python3 benchmarks/bench_wo.py --ms 1,16,32 --anchors 16 --fmts mxfp8_e4m3,mxfp4_e2m1,nvfp4 \
  --cands 1,2,12,13 --exact-extra "" --out "$OUT" --budget 140 2>&1 | grep -v Warn | tail -30
