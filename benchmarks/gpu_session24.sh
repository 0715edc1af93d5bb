#!/usr/bin/env bash
# Session 24 device calls.
# 1) ceiling_gemm: design (a)'s K loop on shared-memory-resident tiles (no memory pipeline), four promotion
#    variants, beside lax.scaled_dot, the kernel default and cuBLAS FP8 at 8192^3 in the same process.
# 2) the same for design (b): a bf16 wgmma on resident bf16 tiles, and dequantize-then-bf16-wgmma.
# 3) the scale product on the tensor cores (smma: a bf16 wgmma per block, then one FFMA) beside mma / row / promote.
# 4) the met goals and the step at this session's code: weight-only at M = 16 (MXFP4, MXFP8; the public call
#    mx_weight_only_matmul(x, prepare_weight_mgpu(w)) beside bf16 x @ W^T), then the 12-layer step bf16 vs
#    mxfp8@pallas, one process each.
# COMMIT=<short hash> OUT=$OUT bash benchmarks/gpu_session24.sh N   (the device's .git is not this checkout's)
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
echo "code of commit ${COMMIT:-?}"
case "${1:-1}" in
  1) timeout 560 python3 -m benchmarks.ceiling_gemm --check --wgs3 --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/ceiling_gemm.log" ;;
  2) timeout 560 python3 -m benchmarks.ceiling_gemm --check --tks 128 --variants mma,promote,bf16mma,deq --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/ceiling_gemm.log" ;;
  3) timeout 560 python3 -m benchmarks.ceiling_gemm --check --tks 128 --variants mma,row,promote,smma --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/ceiling_gemm.log" ;;
  4) timeout 150 python3 benchmarks/bench_wo_mgpu.py --ms 16 --cfgs 0 --budget 130 --out "$OUT/mxfp4" 2>&1 \
       | grep -v Warn | grep -E "M=16|total|OK|BAD|err" | tail -14
     timeout 150 python3 benchmarks/bench_wo_mgpu.py --fmt mxfp8_e4m3 --ms 16 --cfgs 0 --budget 130 --out "$OUT/mxfp8" 2>&1 \
       | grep -v Warn | grep -E "M=16|total|OK|BAD|err" | tail -14
     timeout 270 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8@pallas --warmup 2 --iters 8 \
       --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" | tail -12 ;;
esac
