#!/usr/bin/env bash
# `make test`: everything, from a fresh machine. Installs what it needs (Python venv,
# Go-built cluster binaries), starts the test bed if none is running, and stops what
# it started on exit, also when a test fails or the run is interrupted.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need cargo "Install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version."
check_prereqs

step() { log "== $*"; }
t_start=$(date +%s)

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --all-features --locked -- -D warnings
step "crds/ is generated from the Rust types"
cargo run --locked --quiet --features crdgen --bin crdgen | diff -u crds/cognitounauthcredentials.yaml - \
  || die "crds/ is stale: run 'make crds' and commit the result"
step "the chart: lint, kubeconform, golden files, README freshness, packaging"
testbed/chart-check.sh
step "the chart's alerts: promtool on the hand-written cases (tests/controller/alerts.rs adds the series recorded from a run)"
testbed/alerts-test.sh
step "unit tests"
cargo test --locked --lib --bins

started_here=0
before="$LOCAL/machine-before-up.txt"
cleanup() {
  local rc=$?
  if (( started_here )); then
    testbed/down.sh || rc=1
    step "make down left the machine as it was before make up"
    testbed/leftovers.sh compare "$before" || rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ! testbed/up.sh --check-only 2>/dev/null; then
  started_here=1
  # Whatever an earlier run left must not count against this one, nor what installing
  # the node's Debian packages adds.
  testbed/down.sh --quiet
  bash -c 'source testbed/lib.sh && source testbed/node.sh && node_prereqs'
  # A fresh clone has no .local yet: the snapshot lives there.
  mkdir -p "$LOCAL"
  testbed/leftovers.sh snapshot "$before"
fi
step "test bed up"
testbed/up.sh
# shellcheck disable=SC1091
source "$LOCAL/env"
step "the node: network rules, images, pods placed by the scheduler reach the emulator and the API server"
testbed/node-check.sh
step "tests against the real control plane and the Cognito emulator"
# The tests mostly wait on the API server and the emulator: run more than the 2 cores.
cargo test --locked --test '*' -- --test-threads 8
step "make run, checked: the controller on defaults, the demo resource, and a pod on the node that picks up a rotation (in the background, beside the image build)"
RUN_UNTIL_ROTATIONS=1 testbed/run.sh > "$LOCAL/make-run-check.log" 2>&1 &
run_check=$!
step "container image: the Dockerfile's final stage with buildah, and its binary runs"
testbed/image.sh
step "the arm64 image: cross-built with zig, its binary run under qemu, one manifest list with amd64"
testbed/image-arm64.sh
step "the image's binary is reproducible: built again cold from another path, same sha256"
testbed/reproducible.sh amd64
if wait "$run_check"; then
  grep -E '^\[pod\]|make run:' "$LOCAL/make-run-check.log"
else
  cat "$LOCAL/make-run-check.log" >&2
  die "make run did not show a pod picking up a rotation (whole log above)"
fi
step "benchmark, small N (make bench runs N=1000): it prints which targets it judged at this scale (writes per resource, steady state, rotation cost, CPU against the CLI loop); the full-scale ones are judged by make bench"
BENCH_N=20 testbed/bench.sh --steady-seconds 10 --baseline-n 3 --rotation-n 5 --scale-to 40 --unrelated-secrets 20 --unrelated-kib 10 --check
log "make test passed in $(( $(date +%s) - t_start ))s"
