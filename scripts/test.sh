#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the test suite on CPU: everything but tests marked slow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export JAX_PLATFORMS=cpu
# XLA:CPU's LLVM backend at -O0: the suite is compile-bound (small programs, many of them) and -O0 halves XLA:CPU's
# compile time (the suite: 899 s -> 644 s of pytest on 2 cores, session 13). Set XLA_FLAGS (even to "") to compile as XLA does
# by default; the suite passes both ways (BUILD.md, "Test suite time").
export XLA_FLAGS="${XLA_FLAGS---xla_backend_optimization_level=0}"
# One persistent compilation cache per run, shared by the two workers and the sharding tests' subprocesses: the same
# programs compile in several tests (about a minute of the suite's wall time on 2 cores). Fresh each run, removed at exit.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d -t mx_jax_jit_cache.XXXXXX)
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
  export JAX_COMPILATION_CACHE_DIR
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}"
# Mosaic GPU interpret mode blocks one host thread per simulated warpgroup: give it enough threads.
export NPROC="${NPROC:-32}"
"$PY" -m pytest -q -m "not slow" -n 2 --dist loadfile "$@"
