#!/usr/bin/env bash
# The test bed's Python checks: ruff (lint, and format --check) on every Python file under
# testbed/, and the pytest tests: the Cognito proxy's (testbed/cognito/tests: moto and
# the proxy on loopback ports, no cluster) and the test runner's scheduling
# (testbed/test_runner.py). Installs what it needs into .local/venv first (the pins of
# testbed/cognito/requirements.txt and requirements-dev.txt), each file only when it
# changed. Runs every check, then exits non-zero if any failed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_python
ensure_dev_venv
cd "$ROOT"
# The tools' caches beside the venv, not in the work tree.
export RUFF_CACHE_DIR="$LOCAL/cache/ruff"

failed=()
check() {
  local name=$1; shift
  "$@" || failed+=("$name")
}
check "ruff check" "$VENV/bin/ruff" check testbed
check "ruff format --check" "$VENV/bin/ruff" format --check testbed
check pytest "$VENV/bin/pytest" -q -o cache_dir="$LOCAL/cache/pytest" testbed/cognito/tests testbed/test_runner.py

if (( ${#failed[@]} )); then
  die "failed: ${failed[*]}"
fi
log "Python checks passed (ruff check, ruff format --check, pytest)"
