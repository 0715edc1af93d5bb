#!/usr/bin/env bash
# Session 21 device calls: the GPT train step with the block-scaled kernel GEMMs (mxfp8, impl="pallas").
# 1) 12 layers, same process: bf16; mxfp8@pallas with the operands quantized in place (fast MX path) and moved to
#    the kernel layout as 1-byte elements; mxfp8@pallas-t, the old operand order (bf16 transposed first, then
#    quantized, by the same fast quantizer); mxfp8 on XLA (emulation).
# 2) where the time goes: per-kernel device time of the 2-layer step with attention quantized (bf16, mxfp8,
#    mxfp8@pallas), then the 12-layer step with attention kept in bf16.
# COMMIT=<short hash> OUT=$OUT bash benchmarks/gpu_session21.sh N   (the device's .git is not this checkout's)
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
echo "code of commit ${COMMIT:-?}"
case "${1:-1}" in
  1) timeout 580 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas,mxfp8@pallas-t,mxfp8 \
       --warmup 2 --iters 8 --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
  2) timeout 330 python3 -m benchmarks.diag_step_kernels --recipes bf16,mxfp8,mxfp8@pallas --attn --layers 2 \
       --top 25 --out "$OUT" 2>&1 | grep -v Warn | tail -120
     timeout 250 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas,mxfp8 --exclude_attn \
       --warmup 2 --iters 8 --out "$OUT/train_step_noattn.json" 2>&1 | grep -v Warn | tee "$OUT/train_step_noattn.log" ;;
esac
