#!/usr/bin/env bash
# Every test, the `slow` ones included: scripts/test.sh (same setup and environment) with its "not slow" filter
# replaced by an empty one (pytest keeps the last -m). BUILD.md, "Test suite time".
# Usage: bash scripts/test_all.sh [pytest args]    (e.g. -m slow: only the tests CI leaves out)
set -euo pipefail
exec bash "$(dirname "$0")/test.sh" -m "" "$@"
