#!/usr/bin/env bash
# Session 18 device calls. 1, 2 (commit 293a30c; wg_dim="MN" was removed again, no faster): design (a)/(b) with
# four compute warpgroups, 2 x 2 over the CTA tile, against the two default configs at 8192^3. Call 1 hung: Pallas'
# register split asked setmaxnreg for more than the 640-thread CTA holds (fixed in 293a30c); call 2 ran the check
# in its own process first. 3) NVFP4 in the Mosaic GPU weight-only kernel: exactness, M sweep beside the Triton
# kernel and bf16; MXFP4 at M = 16 again (same code path). 4) MXFP8 (e4m3, e5m2) in the same kernel.
# 5) the GEMM with CTA pairs sharing B by TMA multicast (GemmConfig(cluster=2)): check, then 8192^3.
# 6) cluster=2 against the default again, alternating, and 8192^3 beside scaled_dot. No faster: removed again,
# call 5 ran at a9da384, call 6 at a30ad65.
# 7) MXINT8 in the Mosaic GPU weight-only kernel.
# OUT=$OUT bash benchmarks/gpu_session18.sh N
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
case "${1:-1}" in
  1) timeout 570 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set wg4 --check-wo none \
       --sizes 8192x8192x8192 --sizes-lite --budget 540 --out "$OUT" ;;
  2) timeout 150 python3 benchmarks/bench_matmul.py --sections env,check --sweep-set wg4 --check-wo none \
       --out "$OUT/check" \
     && timeout 400 python3 benchmarks/bench_matmul.py --sections sweep,sizes --sweep-set wg4 \
       --sizes 8192x8192x8192 --sizes-lite --budget 380 --out "$OUT" ;;
  3) timeout 360 python3 benchmarks/bench_wo_mgpu.py --fmt nvfp4 --ms 16,1,8,32,64,128 --cfgs 0 --top 1 \
       --budget 340 --out "$OUT/nv"
     timeout 200 python3 benchmarks/bench_wo_mgpu.py --ms 16 --cfgs 0 --budget 180 --out "$OUT/mx" ;;
  4) timeout 330 python3 benchmarks/bench_wo_mgpu.py --fmt mxfp8_e4m3 --ms 16,1,8,32,64,128 --cfgs 0,1,3 --top 1 \
       --budget 310 --out "$OUT/e4m3"
     timeout 200 python3 benchmarks/bench_wo_mgpu.py --fmt mxfp8_e5m2 --ms 16 --cfgs 0 --budget 180 --out "$OUT/e5m2" ;;
  5) timeout 150 python3 benchmarks/bench_matmul.py --sections env,check --sweep-set cluster --check-wo none \
       --out "$OUT/check" \
     && timeout 400 python3 benchmarks/bench_matmul.py --sections sweep,sizes --sweep-set cluster \
       --sizes 8192x8192x8192,4096x4096x4096 --sizes-lite --budget 380 --out "$OUT" ;;
  6) timeout 300 python3 benchmarks/bench_matmul.py --sections env,sweep,sizes --sweep-set cluster2 \
       --sizes 8192x8192x8192 --sizes-lite --budget 280 --out "$OUT" ;;
  7) timeout 330 python3 benchmarks/bench_wo_mgpu.py --fmt mxint8 --ms 16,1,8,32,64,128 --cfgs 0 --top 1 \
       --budget 310 --out "$OUT" ;;
esac
