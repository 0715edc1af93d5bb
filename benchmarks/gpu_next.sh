#!/usr/bin/env bash
# The next H100 lease for issue 3, prepared on a machine without a GPU (session 6). Logs to $OUT.
#  1. Same process, default XLA flags: the operand path's block exponent as one reduction (shipped) against
#     session 5's amax-then-exponent kernels (diag_layouts knob "amax_first"): 2-layer device time and the
#     12-layer Dense-only step, each against bf16.
#  2. Every preset, Dense-only, default flags, donated state (the table).
#  3. mxfp8 with attention's q.k / p.v quantized too, default flags.
# benchmarks/aot_gpu.py predicted (deviceless H100 compile, roofline per kernel): 311 -> 255 launches and
# -263 us per 2-layer mxfp8 step; this run is the measurement.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT="${OUT:-/tmp/mxbench}"; mkdir -p "$OUT"
nvidia-smi -L
timeout 200 python3 -m benchmarks.diag_layouts --variants current,amax_first --time-layers 12 --iters 20 \
  --out "$OUT" 2>&1 | grep -v Warn
timeout 260 python3 -m benchmarks.bench_train_step --exclude_attn --warmup 3 --iters 20 \
  --out "$OUT/presets_noattn_default.json" 2>&1 | grep -v Warn | tee "$OUT/presets_noattn_default.log"
timeout 100 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8 --warmup 3 --iters 20 \
  --out "$OUT/full_default.json" 2>&1 | grep -v Warn | tee "$OUT/full_default.log"
