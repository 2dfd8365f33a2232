#!/usr/bin/env bash
# `make test`: everything, from a fresh machine. Installs what it needs (Python venv,
# Go-built cluster binaries), starts the test bed if none is running, and
# stops what it started on exit, also when a test fails or the run is interrupted.
#
# Where the time goes (issue 19): what is independent overlaps. The Go builds of the bed,
# its images and the tools run in the background while cargo builds and runs the checks
# that need no cluster; the integration tests run side by side, one process each, under
# testbed/runner.py (testbed/tests.toml says which tests must not overlap); the image
# builds run at low priority beside them. It ends with a table of each step's seconds
# and the ten slowest tests.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need cargo "Install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version."
check_prereqs
mkdir -p "$LOCAL/logs"
t_start=$(date +%s)

# ------------------------------------------------------------------ the step table
STEPS=()
current="" current_start=0
step_done() {
  [[ -n "$current" ]] || return 0
  STEPS+=("$(( $(date +%s) - current_start ))"$'\t'"$current")
  current=""
}
step() { step_done; current="$*"; current_start=$(date +%s); log "== $*"; }

# Background jobs: `bg NAME CMD...` starts one (its output in .local/logs/NAME.log);
# `await NAME` waits for it, adds its own seconds to the table, and fails with its log.
declare -A BG_PID=()
log_of() { printf '%s/logs/%s.log' "$LOCAL" "$(tr -cs 'A-Za-z0-9' '-' <<<"${1%%:*}" | sed 's/-*$//')"; }
bg() {
  local name=$1; shift
  local out; out=$(log_of "$name")
  ( s=$(date +%s); rc=0; "$@" > "$out" 2>&1 || rc=$?; echo "$(( $(date +%s) - s ))" > "$out.secs"; exit "$rc" ) &
  BG_PID[$name]=$!
  log "== started in the background: $name (log: ${out#"$ROOT"/})"
}
await() {
  local name=$1 out t0; out=$(log_of "$1"); t0=$(date +%s)
  if ! wait "${BG_PID[$name]}"; then
    tail -n 60 "$out" >&2
    die "$name failed (the end of its log above; whole log: ${out#"$ROOT"/})"
  fi
  unset "BG_PID[$name]"
  STEPS+=("$(cat "$out.secs")"$'\t'"$name (background; waited $(( $(date +%s) - t0 )) s for it)")
}

print_table() {
  step_done
  {
    echo
    echo "make test: seconds per step (background steps overlap the others)"
    printf '%s\n' "${STEPS[@]}" | awk -F'\t' '{printf "  %6d  %s\n", $1, $2}'
    printf '  %6d  total\n' "$(( $(date +%s) - t_start ))"
    if [[ -f "$ROOT/target/cuc-tests/results.json" ]]; then
      echo "the ten slowest tests (seconds):"
      python3 testbed/runner.py slowest 10
    fi
  } >&2
}

# tree_of PID: PID and all its descendants.
tree_of() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" 2>/dev/null); do tree_of "$child"; done
}
# kill_tree PID: PID and every descendant stopped, then sent TERM: none starts another
# process in between, and none is missed because its parent died first.
kill_tree() {
  local pids
  mapfile -t pids < <(tree_of "$1")
  kill -STOP "${pids[@]}" 2>/dev/null || true
  kill -TERM "${pids[@]}" 2>/dev/null || true
  kill -CONT "${pids[@]}" 2>/dev/null || true
}

started_here=0
before="$LOCAL/machine-before-up.txt"
cleanup() {
  local rc=$?
  # Background jobs still running (a step failed before awaiting them): stop them and
  # everything they started (a cargo build of the arm64 image went on after a failed run,
  # holding the target dir's lock against the next one).
  local pid
  for pid in "${BG_PID[@]}"; do kill_tree "$pid"; done
  wait 2>/dev/null || true
  if (( started_here )); then
    testbed/down.sh || rc=1
    log "== make down left the machine as it was before make up"
    testbed/leftovers.sh compare "$before" || rc=1
  fi
  print_table
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------ the bed's inputs, in the background
if ! testbed/up.sh --check-only 2>/dev/null; then
  started_here=1
  step "the machine before the bed (Debian packages the node needs, then a snapshot)"
  # Whatever an earlier run left must not count against this one, nor what installing
  # the node's Debian packages adds.
  testbed/down.sh --quiet
  bash -c 'source testbed/lib.sh && source testbed/node.sh && node_prereqs'
  testbed/leftovers.sh snapshot "$before"
fi
# Debian packages before anything runs in the background: two apt-gets at once fail on
# dpkg's lock.
ensure_debs shellcheck python3-yaml
# Go builds (cluster, node, helm, chart tools, promtool), the Python venv and the node's
# images: all cached per machine in $CACHE, so a second clone finds them.
prepare_bed() {
  source testbed/node.sh
  source testbed/images.sh
  ensure_venv
  ensure_helm
  ensure_chart_tools
  ensure_cluster_binaries
  ensure_promtool
  node_select
  if [[ "$NODE_MODE" == on ]]; then
    ensure_runtime_binaries
    ensure_node_images > /dev/null
  fi
}
bg "bed inputs: Go builds, venv, images" prepare_bed

# -------------------------------------------------------- checks that need no cluster
step "cargo fmt --check"
cargo fmt --all -- --check
step "shellcheck on every script under testbed/"
testbed/shellcheck.sh
# Clippy lints the workspace's crates while they are built for the tests: cargo runs
# clippy-driver in rustc's place for workspace members (as `cargo clippy` itself does,
# there in check mode), so the dependencies are compiled once, not once checked for
# clippy and once built (on a cold machine that was 13 of CI's minutes).
CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
[[ -x "$CLIPPY_DRIVER" ]] || die "clippy-driver not found: rustup component add clippy (rust-toolchain.toml lists it)"
step "build every test binary, linted on the way (clippy -D warnings on the workspace's crates, all targets, all features)"
RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
  python3 testbed/runner.py build --locked --workspace --all-features
step "unit tests (with crds/ generated from the Rust types, and every chart case's containers parsed by the binary)"
python3 testbed/runner.py unit

await "bed inputs: Go builds, venv, images"
step "python: ruff and the Cognito proxy's pytest suite"
testbed/python-check.sh
step "the chart: lint, kubeconform, golden files, README freshness, packaging"
testbed/chart-check.sh
step "the chart's alerts: promtool on the hand-written cases (tests/controller/alerts.rs adds the series recorded from a run)"
testbed/alerts-test.sh

# ------------------------------------------------------------------------ the bed
step "test bed up"
testbed/up.sh
# shellcheck disable=SC1091
source "$LOCAL/env"
no_node=()
if [[ "${CUC_NODE:-on}" == off ]]; then
  log "== the node is off: ${CUC_NODE_REASON:-no reason given}; its checks and tests are not run"
  no_node=(--no-node)
else
  step "the node: network rules, images, pods placed by the scheduler reach the emulator and the API server"
  testbed/node-check.sh
fi

# The image builds are CPU work; the tests mostly wait on the API server and the node.
# At the lowest priority they take only what the tests leave.
images() {
  nice -n 19 testbed/image.sh
  nice -n 19 testbed/image-arm64.sh
  nice -n 19 testbed/reproducible.sh amd64
}
images_job="container images: amd64 (buildah), arm64 (zig, qemu), the amd64 binary reproducible"
if (( EUID == 0 )); then
  bg "$images_job" images
else
  log "== not root: the container images (buildah) are not built"
fi
# cargo-deny, built from crates.io once per machine (cached, like the Go tools): on a new
# machine its build takes a few CPU minutes, so it runs beside the tests, at low priority.
CARGO_DENY_VERSION=0.20.2
deny_job="cargo-deny $CARGO_DENY_VERSION (built once per machine)"
bg "$deny_job" cargo_tool cargo-deny "$CARGO_DENY_VERSION" 19
step "tests against the real control plane, the node and the Cognito emulator, and make run checked (side by side)"
python3 testbed/runner.py integration "${no_node[@]}"

# `make run` checked (the controller on defaults, the demo resource, a pod on the node
# that picks up a rotation) ran beside the tests (testbed/tests.toml, [[extra]]).
grep -E '^\[(pod|secret)\]|make run:' "$LOCAL/make-run-check.log"
await "$deny_job"
step "supply chain: cargo deny check licenses bans sources (deny.toml; advisories: see docs/security.md)"
# --locked, not --frozen: cargo metadata (which cargo-deny runs) needs every platform's
# crates (anstyle-wincon, windows-sys...), and a cold machine's build downloaded only this
# one's. Nothing else is fetched for these three checks.
"$(cargo_tool cargo-deny "$CARGO_DENY_VERSION")/cargo-deny" --locked check licenses bans sources
# The benchmark measures CPU: not beside a build.
(( EUID != 0 )) || await "$images_job"
step "benchmark, small N (make bench runs N=1000): it prints which targets it judged at this scale (writes per resource, steady state, rotation cost, CPU against the CLI loop); the full-scale ones are judged by make bench"
BENCH_N=20 testbed/bench.sh --steady-seconds 10 --baseline-n 3 --rotation-n 5 --scale-to 40 --unrelated-secrets 20 --unrelated-kib 10 --check
step_done
if [[ "${CUC_NODE:-on}" == off ]]; then
  n=$(python3 testbed/runner.py count-node)
  log "$n node tests not run: ${CUC_NODE_REASON:-the node is off}"
fi
log "make test passed in $(( $(date +%s) - t_start ))s"
