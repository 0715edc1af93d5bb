#!/usr/bin/env bash
# Session 12's H100 lease (issue 7), `bash benchmarks/gpu_session12.sh N`, logs to $OUT (benchmarks/results/session12).
# Calls 1-3 ran at commit 9d30ca4: kernels/gemm_triton.py, benchmarks/bench_gemm_triton.py, WOConfig(pmul) and
# wo_triton.CANDIDATES 85-90 were removed after they measured no gain (BENCHMARKS.md, session 12); check that
# commit out to run them again. Call 4 runs at any later commit.
# Call 1: the Pallas-Triton block-scaled GEMM (kernels/gemm_triton.py): exactness on the GPU, the tile sweep at
#   8192^3 beside lax.scaled_dot / bf16 jnp.dot / the Mosaic GPU design (a), then the sizes with the best config.
. benchmarks/gpu_env.sh
if [ "${1:-1}" = 1 ]; then
  timeout 560 python3 benchmarks/bench_gemm_triton.py --sections check,sweep,sizes --check-cfgs 0,8 \
    --budget 540 --out "$OUT" 2>&1 | grep -v Warn | tail -80
  exit 0
fi
# Call 2: why is the Triton GEMM at 0.40x? Pallas-Triton's plain bf16 GEMM at the same tiles, the kernel with its
#   scale multiply left out, the per-32-block-dot form (scale="block"), and Triton's IR of 0 and 12.
if [ "${1:-1}" = 2 ]; then
  timeout 300 python3 benchmarks/bench_gemm_triton.py --sections diag,sweep --cfgs 0,5,2,12,13,14,15 \
    --budget 290 --out "$OUT" 2>&1 | grep -v Warn | tail -40
  D=/tmp/gemm_dump; rm -rf $D
  XLA_FLAGS="--xla_dump_to=$D --xla_dump_emitter_re=.*" timeout 120 python3 benchmarks/bench_gemm_triton.py \
    --sections dump --cfgs 0,12 2>&1 | grep -v Warn | tail -3
  ls $D | head -30; ls $D | wc -l
  for f in $(ls -S $D/*triton-to-llvm* 2>/dev/null | head -4); do
    echo "== $f"; for op in ttg.convert_layout ttng.warp_group_dot tt.dot ttg.local_alloc ttg.local_store \
      ttg.local_load ttg.async_copy_global_to_local ttng.fence_async_shared tt.load; do
      echo "$op $(grep -c "$op" $f)"; done
  done
  tar czf "$OUT/gemm_dump.tgz" -C $D $(cd $D && ls | grep -E "triton-to-llvm|ttgir|\.ptx$" | head -20) 2>/dev/null
  ls -la "$OUT"
  exit 0
fi
# Call 3: the weight-only kernel with its scale multiply packed inside the asm decode (WOConfig(pmul=True)):
#   85-88 beside their twins 49, 64, 75, 74 (MXFP4, NVFP4 at M = 16, 1, 32); MXFP8 asm+fold 90 vs + pmul 89
#   beside the default 1.
if [ "${1:-1}" = 3 ]; then
  timeout 330 python3 benchmarks/bench_wo.py --ms 16,1,32 --anchors 16 --fmts mxfp4_e2m1,nvfp4 --kernels \
    --cands 85,49,86,64,87,75,88,74 --exact-extra "" --top 8 --out "$OUT" --budget 320 2>&1 \
    | grep -v Warn | tail -60
  mkdir -p "$OUT/fp8"
  timeout 120 python3 benchmarks/bench_wo.py --ms 16,1 --anchors 16 --fmts mxfp8_e4m3 --cands 1,90,89 --kernels \
    --exact-extra "" --top 3 --out "$OUT/fp8" --budget 110 2>&1 | grep -v Warn | tail -14
  exit 0
fi
# Call 4: the floor under the weight-only kernel: XLA reductions over the same weight bytes (MXFP4 prepared,
#   bf16) beside the MXFP4 default at M = 16 and the bf16 GEMM, twice interleaved (benchmarks/read_floor_wo.py).
if [ "${1:-1}" = 4 ]; then
  timeout 200 python3 benchmarks/read_floor_wo.py --out "$OUT" 2>&1 | grep -v Warn | tail -30
  timeout 150 python3 benchmarks/read_floor_wo.py --fmt mxfp8_e4m3 --out "$OUT/fp8" 2>&1 | grep -v Warn | tail -30
  exit 0
fi
