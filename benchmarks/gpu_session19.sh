#!/usr/bin/env bash
# Session 19 device calls.
# 1) design (a) with the block scale products made by a bf16 wgmma (GemmConfig(scale_mma=True)): check, then
#    the 8192^3 sweep against the default and scaled_dot. Slower (397 against 419 TFLOP/s): removed again; the
#    code and the sweep set 'smma' are at commit 1bc7eae (check it out to re-run call 1).
# 2) MXFP6 (E2M3, E3M2) in the Mosaic GPU weight-only kernel: exactness, M sweep beside the Triton kernel and bf16.
# OUT=$OUT bash benchmarks/gpu_session19.sh N
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
case "${1:-1}" in
  1) timeout 170 python3 benchmarks/bench_matmul.py --sections env,check --sweep-set smma --check-wo none \
       --out "$OUT/check"
     timeout 400 python3 benchmarks/bench_matmul.py --sections sweep,sizes --sweep-set smma \
       --sizes 8192x8192x8192 --sizes-lite --budget 380 --out "$OUT" ;;
  2) timeout 330 python3 benchmarks/bench_wo_mgpu.py --fmt mxfp6_e2m3 --ms 16,1,8,32,64,128 --cfgs 0,1,3 --top 1 \
       --budget 310 --out "$OUT/e2m3"
     timeout 200 python3 benchmarks/bench_wo_mgpu.py --fmt mxfp6_e3m2 --ms 16 --cfgs 0 --budget 180 --out "$OUT/e3m2" ;;
esac
