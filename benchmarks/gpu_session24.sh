#!/usr/bin/env bash
# Session 24 device calls.
# 1) ceiling_gemm: design (a)'s K loop on shared-memory-resident tiles (no memory pipeline), four promotion
#    variants, beside lax.scaled_dot, the kernel default and cuBLAS FP8 at 8192^3 in the same process.
# 2) the same for design (b): a bf16 wgmma on resident bf16 tiles, and dequantize-then-bf16-wgmma.
# 3) the scale product on the tensor cores (smma: a bf16 wgmma per block, then one FFMA) beside mma / row / promote.
# COMMIT=<short hash> OUT=$OUT bash benchmarks/gpu_session24.sh N   (the device's .git is not this checkout's)
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
echo "code of commit ${COMMIT:-?}"
case "${1:-1}" in
  1) timeout 560 python3 -m benchmarks.ceiling_gemm --check --wgs3 --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/ceiling_gemm.log" ;;
  2) timeout 560 python3 -m benchmarks.ceiling_gemm --check --tks 128 --variants mma,promote,bf16mma,deq --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/ceiling_gemm.log" ;;
  3) timeout 560 python3 -m benchmarks.ceiling_gemm --check --tks 128 --variants mma,row,promote,smma --out "$OUT" 2>&1 | grep -v Warn | tee "$OUT/ceiling_gemm.log" ;;
esac
