# Sourced by the gpu_session*.sh scripts: the environment of a GPU-machine call (logs to $OUT) and ncu_one.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT="${OUT:-/tmp/mxbench}"; mkdir -p "$OUT"
nvidia-smi -L
. benchmarks/ncu_one.sh
