#!/usr/bin/env bash
# Session 17 device calls: 1) design (b) with one dequantized B tile shared by both warpgroups (coop=True);
# 2) design (a) with rolling block wgmmas (roll=True), and the Mosaic GPU weight-only kernel at M = 16, 24, 64.
# Neither was faster; their code was removed afterwards: check out commit 1e8896c to re-run calls 1 and 2.
# 3) the weight-only M sweep with x unpadded (the code of c617095), 4) with row tiles side by side (M > 32, 515b5d5),
# 5) the M sweep with row tiles only beyond ONE_TILE_ROWS = 48, 6) Nsight Compute of the two GEMM designs (4096^3),
# 7) the weight-only M = 1 call's kernels against M = 2 and x padded to 2 / 8 rows.
# OUT=$OUT bash benchmarks/gpu_session17.sh N
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
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
  6) for v in fp8 bf16; do
       tag="ncu_gemm_$v"
       timeout 200 "$NCU" --clock-control none --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --set full \
         --import-source no -f -o "$OUT/$tag" python3 benchmarks/ncu_gemm.py --variant "$v" > "$OUT/${tag}_run.log" 2>&1
       tail -3 "$OUT/${tag}_run.log"
       "$NCU" --import "$OUT/$tag.ncu-rep" --print-details all > "$OUT/$tag.txt" 2>&1
       "$NCU" --import "$OUT/$tag.ncu-rep" --page source --print-source sass --csv > "$OUT/${tag}_sass.csv" 2>&1
       grep -E "Duration|Issue Slots Busy|Eligible Warps|Issued Warp|No Eligible|Stall|Shared Memory|Bank Conflict|Pipe" \
         "$OUT/$tag.txt" | head -60
       rm -f "$OUT/$tag.ncu-rep"
     done ;;
  7) timeout 300 python3 benchmarks/check_wo_m1.py --out "$OUT" ;;
esac
