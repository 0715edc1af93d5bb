#!/usr/bin/env bash
# Session 17 device calls: 1) design (b) with one dequantized B tile shared by both warpgroups (coop=True);
# 2) design (a) with rolling block wgmmas (roll=True), and the Mosaic GPU weight-only kernel at M = 16, 24, 64.
# Neither was faster; their code was removed afterwards: check out commit 1e8896c to re-run calls 1 and 2.
# 3) the weight-only M sweep with x unpadded (the code of c617095), 4) with row tiles side by side (M > 32, 515b5d5),
# 5) the M sweep with row tiles only beyond ONE_TILE_ROWS = 48.
# OUT=$OUT bash benchmarks/gpu_session17.sh N
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
case "${1:-1}" in
  1) timeout 570 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set coop --check-wo none \
       --sizes 8192x8192x8192 --sizes-lite --budget 540 --out "$OUT" ;;
  2) timeout 250 python3 benchmarks/bench_matmul.py --sections env,sweep,sizes --sweep-set roll \
       --sizes 8192x8192x8192 --sizes-lite --budget 230 --out "$OUT"
     timeout 300 python3 benchmarks/bench_wo_mgpu.py --ms 16,24,64 --budget 280 --out "$OUT/wo" ;;
  3) timeout 560 python3 benchmarks/bench_wo_mgpu.py --ms 16,1,2,4,8,24,32,48,64,128,256 --top 1 --budget 520 \
       --out "$OUT" ;;
  4) timeout 580 python3 benchmarks/bench_wo_mgpu.py --ms 16,1,40,48,64,128,256 --cfgs 0 --row-tiles 16,64 \
       --budget 540 --out "$OUT" ;;
  5) timeout 590 python3 benchmarks/bench_wo_mgpu.py --ms 16,1,2,4,8,24,32,48,64,96,128,256 --cfgs 0 --budget 560 \
       --out "$OUT" ;;
esac
