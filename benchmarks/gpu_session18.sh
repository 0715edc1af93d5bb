#!/usr/bin/env bash
# Session 18 device calls: 1) design (a)/(b) with four compute warpgroups, 2 x 2 over the CTA tile (wg_dim="MN"),
# against the two default configs at 8192^3 (check on odd shapes first).
# OUT=$OUT bash benchmarks/gpu_session18.sh N
cd "$(dirname "$0")/.."
. benchmarks/gpu_env.sh
case "${1:-1}" in
  1) timeout 570 python3 benchmarks/bench_matmul.py --sections env,check,sweep,sizes --sweep-set wg4 --check-wo none \
       --sizes 8192x8192x8192 --sizes-lite --budget 540 --out "$OUT" ;;
esac
