#!/usr/bin/env bash
# Finds a Python >= 3.12, makes .venv and installs mx_jax with its test and experiment extras.
# Usage: source scripts/setup.sh   (sets $PY to the venv's python)
set -euo pipefail
_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
find_python() {
  local c
  for c in "${MX_JAX_PYTHON:-}" python3.12 python3.13 python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && _ok "$c" && { command -v "$c"; return 0; }
  done
  if command -v pyenv >/dev/null 2>&1; then
    local root; root=$(pyenv root)
    for c in "$root"/versions/3.1[2-9]*/bin/python3; do
      [ -x "$c" ] && _ok "$c" && { echo "$c"; return 0; }
    done
  fi
  return 1
}
if [ ! -x .venv/bin/python ] || ! _ok .venv/bin/python; then
  BASE_PY=$(find_python) || {
    echo "mx_jax needs Python >= 3.12 (jax 0.11.2 requires it) and none was found." >&2
    echo "Install one, e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv'," >&2
    echo "or point MX_JAX_PYTHON at its interpreter." >&2
    exit 1
  }
  echo "Using $BASE_PY ($("$BASE_PY" --version))"
  rm -rf .venv
  "$BASE_PY" -m venv .venv
fi
PY=.venv/bin/python
if ! "$PY" -c 'import mx_jax, pytest, hypothesis, flax, optax, orbax.checkpoint, tokenizers, safetensors, matplotlib' >/dev/null 2>&1; then
  # --no-compile: no .pyc for every installed module up front (a third of the install's time); imports compile
  # the ones they use. The venv's own pip (>= 23.1 with Python 3.12) installs the editable package as it is.
  "$PY" -m pip install -q --no-compile -e ".[test,experiments]"
fi
export PY
