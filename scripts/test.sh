#!/usr/bin/env bash
# Sets up (see setup.sh) and runs the test suite on CPU: everything but tests marked slow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export JAX_PLATFORMS=cpu
# Mosaic GPU interpret mode blocks one host thread per simulated warpgroup: give it enough threads.
export NPROC="${NPROC:-32}"
"$PY" -m pytest -q -m "not slow" -n 2 --dist loadfile "$@"
