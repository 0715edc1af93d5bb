#!/usr/bin/env bash
# Session 22 device calls: split-K (few-tile GEMMs), 64-wide tiles for a 64-wide side and the bf16 epilogue in
# the block-scaled kernel, on the 135M GPT step's GEMM shapes and on the step itself.
# 1) bench_step_gemms: each of the step's kernel GEMM shapes: XLA's bf16 GEMM, the kernel as session 21 ran it,
#    today's default (and forced split-K values on the weight-gradient shapes); GPU checks against f64 and of the
#    epilogue's bf16 rounding.
# 2) the 12-layer step, same process: bf16, mxfp8@pallas (today), mxfp8@pallas-s21 (session 21's kernel GEMMs),
#    mxfp8 on XLA (emulation).
# 3) 1 plus a tile-config sweep on the M = 8192 shapes.  4) per-kernel profile of the 2-layer step (attention in).
# 5) the step with the Pallas quantize kernel for large last-axis kernel operands against XLA's (-xq).
# 6) (at de09cb7 only: its -ip variant was removed with KERNEL_TRANSPOSE_FIRST, slower) the step with the other
#    large operands transposed first, then the Pallas kernel, against in place (-ip).
# COMMIT=<short hash> OUT=$OUT bash benchmarks/gpu_session22.sh N   (the device's .git is not this checkout's)
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
echo "code of commit ${COMMIT:-?}"
case "${1:-1}" in
  1) timeout 560 python3 -m benchmarks.bench_step_gemms --out "$OUT" 2>&1 | grep -v Warn | tail -60 ;;
  3) timeout 560 python3 -m benchmarks.bench_step_gemms --sweep --splits 1,2,4,8 --out "$OUT" 2>&1 | grep -v Warn | tail -80 ;;
  2) timeout 580 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas,mxfp8@pallas-s21,mxfp8 \
       --warmup 2 --iters 8 --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
  4) timeout 400 python3 -m benchmarks.diag_step_kernels --recipes bf16,mxfp8,mxfp8@pallas --attn --layers 2 \
       --top 30 --out "$OUT" 2>&1 | grep -v Warn | tail -150 ;;
  5) timeout 580 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas-xq,mxfp8@pallas,mxfp8 \
       --warmup 2 --iters 8 --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
  6) timeout 580 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas-ip,mxfp8@pallas,mxfp8 \
       --warmup 2 --iters 8 --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
esac
