#!/usr/bin/env bash
# Every test, the `slow` ones included (the CI suite, scripts/test.sh, runs "not slow"; BUILD.md, "Test suite time").
# Usage: bash scripts/test_all.sh [pytest args]            (sets up .venv like scripts/test.sh; -n 2 by default)
#        MX_JAX_PY=python3 bash scripts/test_all.sh -n 16  (a Python that already has the packages, no setup:
#                                                           how the GPU host runs it, which has no network)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${MX_JAX_PY:-}" ]; then PY="$MX_JAX_PY"; else source scripts/setup.sh; fi
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS---xla_backend_optimization_level=0}"  # as scripts/test.sh
export NPROC="${NPROC:-32}"
"$PY" -m pytest -q -n 2 --dist loadfile "$@"
