#!/usr/bin/env bash
# Data-parallel scaling of the GPT trainer over the GPUs of one host (issue 6), run on nvidia-h200-x2:
#   bash benchmarks/dp_scaling.sh [steps]     (writes run folders and dp_scaling.md to ${OUT:-runs/dp})
# Same global batch on 1 and 2 GPUs (strong scaling: same loss curve expected) and twice the batch on 2
# GPUs (weak scaling); tokens/s is the median over the steady steps, as the trainer reports it.
set -u
OUT="${OUT:-runs/dp}"
STEPS="${1:-200}"
PY="${PY:-python3}"
nvidia-smi -L
run() {  # name recipe mesh batch
  local extra=""
  [ "$3" != "1" ] && extra="--mesh data=$3"
  timeout 240 "$PY" -m experiments.gpt.train --config gpu --recipe "$2" --steps "$STEPS" --batch "$4" \
    --eval_every 100 --log_every 10 --ckpt_every -1 --noprogress --out_dir "$OUT/$1" $extra 2>&1 | grep -v Warn | tail -3
}
run bf16_dp1 bf16 1 32
run bf16_dp2 bf16 2 32
run mxfp8_dp1 mxfp8 1 32
run mxfp8_dp2 mxfp8 2 32
run mxfp8_dp2_b64 mxfp8 2 64
"$PY" - "$OUT" <<'PY'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(n):
    d = out / n
    if not (d / "summary.json").is_file():
        return None, None
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    return json.loads((d / "summary.json").read_text()), rows
lines = ["| run | GPUs | batch | tokens/s | × 1 GPU | final val loss | max |Δ train loss| vs 1 GPU |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for r in ("bf16", "mxfp8"):
    s1, r1 = load(f"{r}_dp1")
    for n, gpus, b in ((f"{r}_dp1", 1, 32), (f"{r}_dp2", 2, 32), (f"{r}_dp2_b64", 2, 64)):
        s, rows = load(n)
        if s is None:
            continue
        sp = s["tokens_per_s"] / s1["tokens_per_s"] if s1 else float("nan")
        d = max(abs(float(a["train_loss"]) - float(c["train_loss"])) for a, c in zip(rows, r1)) \
            if r1 and b == 32 else float("nan")
        lines.append(f"| {n} | {gpus} | {b} | {s['tokens_per_s']:,.0f} | {sp:.2f} | {s['final_val_loss']:.4f} | {d:.2e} |")
print("\n".join(lines))
(out / "dp_scaling.md").write_text("\n".join(lines) + "\n")
PY
