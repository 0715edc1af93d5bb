#!/usr/bin/env bash
# Session 20 device calls.
# 1) weight-only at many rows: the Mosaic GPU kernel vs W decoded to bf16 once + XLA's bf16 GEMM vs bf16, for a
#    prepare_weight_only(w) weight (the crossover that sets wo_mgpu.KERNEL_ROWS), MXFP4 and MXFP8. Run 1 (2 weight
#    copies: XLA merged the GEMMs) and run 2 (the decode in jnp: 175-580 us) at 0754dbe / a75303a; since then the
#    decode is a Mosaic GPU kernel (kernels/wo_mgpu_decode.py) and every format's decode is checked first.
# 2) the rows call 1 left out (MXFP8 at 512 and 2048 rows) and NVFP4 / MXFP6 E2M3 at 256 and 2048 rows.
# 3) mx_jax.flax.weight_only_model on a 4 x Dense(8192) bf16 MLP against the bf16 model (M = 1, 16, 64, 1024).
# 4) the GPT train step (bench_train_step): bf16, mxfp8 (XLA emulation) and mxfp8@pallas (the block-scaled kernel).
# COMMIT=<short hash> OUT=$OUT bash benchmarks/gpu_session20.sh N   (the device's .git is not this checkout's)
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
echo "code of commit ${COMMIT:-?}"
case "${1:-1}" in
  1) timeout 560 python3 benchmarks/bench_wo_large_m.py --fmts mxfp4_e2m1,mxfp8_e4m3 --ms 128,192,256,512,2048 \
       --check-fmts all --budget 540 --out "$OUT" ;;
  2) timeout 300 python3 benchmarks/bench_wo_large_m.py --fmts mxfp8_e4m3 --ms 512,2048 --budget 280 --out "$OUT/fp8"
     timeout 260 python3 benchmarks/bench_wo_large_m.py --fmts nvfp4,mxfp6_e2m3 --ms 256,2048 --budget 240 \
       --out "$OUT/nv_fp6" ;;
  3) timeout 500 python3 benchmarks/bench_flax_weight_only.py --out "$OUT" ;;
  4) timeout 480 python3 -m benchmarks.bench_train_step --recipes bf16,mxfp8,mxfp8@pallas --warmup 2 --iters 8 \
       --out "$OUT/train_step.json" 2>&1 | grep -v Warn | tee "$OUT/train_step.log" ;;
esac
