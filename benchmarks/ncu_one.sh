# Sourced through benchmarks/gpu_env.sh by the gpu_session*.sh scripts: ncu_one FMT CAND writes an Nsight
# Compute report of one weight-only kernel call (benchmarks/ncu_wo.py) to $OUT as text and per-SASS CSV, and
# prints its headline counters.
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
ncu_one() {  # fmt cand: Nsight Compute report of one weight-only kernel, as text
  local tag="ncu_${1}_c$2"
  timeout 100 "$NCU" --clock-control none --kernel-name regex:wo_triton --launch-skip 1 --launch-count 1 \
    --set full --import-source no -f -o "$OUT/$tag" python3 benchmarks/ncu_wo.py --fmt "$1" --cand "$2" \
    > "$OUT/${tag}_run.log" 2>&1; tail -3 "$OUT/${tag}_run.log"
  "$NCU" --import "$OUT/$tag.ncu-rep" --print-details all > "$OUT/$tag.txt" 2>&1
  "$NCU" --import "$OUT/$tag.ncu-rep" --page source --print-source sass --csv > "$OUT/${tag}_sass.csv" 2>&1
  grep -E "Duration|DRAM Throughput|Issue Slots Busy|Active Warps Per|Eligible Warps|Stall (Wait|Long|Short|Math|Barrier)|Achieved Occupancy" \
    "$OUT/$tag.txt" | head -16
  rm -f "$OUT/$tag.ncu-rep"
}
