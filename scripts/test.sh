#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the test suite on CPU: everything but tests marked slow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export JAX_PLATFORMS=cpu
# XLA:CPU's LLVM backend at -O0: the suite is compile-bound (many small programs), and -O0 cut its pytest time from
# 899 s to 644 s on 2 cores (session 13). Set XLA_FLAGS (even to "") to compile as XLA does by default; the suite
# passes both ways (BUILD.md, "Test suite time").
export XLA_FLAGS="${XLA_FLAGS---xla_backend_optimization_level=0}"
# Mosaic GPU interpret mode blocks one host thread per simulated warpgroup: give it enough threads.
export NPROC="${NPROC:-32}"
"$PY" -m pytest -q -m "not slow" -n 2 --dist loadfile "$@"
