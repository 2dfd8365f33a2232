#!/usr/bin/env bash
# `make bench` (N=1000 by default, BENCH_N to change; writes docs/benchmarks.md) and its
# small variant in `make test` (BENCH_N=20, no docs, targets checked).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
n=${BENCH_N:-1000}
started_here=0
# shellcheck disable=SC2034  # read by the EXIT trap below
testbed/up.sh --check-only 2>/dev/null || started_here=1
trap '(( started_here )) && testbed/down.sh' EXIT
testbed/up.sh
target=x86_64-unknown-linux-musl
if rustup target list --installed | grep -qx "$target" && command -v musl-gcc >/dev/null 2>&1; then
  log "building the shipped binary (profile image, $target)"
  # As image.sh builds it (repro_env's flags): the image's binary itself, not a rebuild
  # of every crate with other flags.
  # shellcheck source=image-lib.sh disable=SC1091
  source "$ROOT/testbed/image-lib.sh"
  ( build_binary "$target" build )
  bin="${CARGO_TARGET_DIR:-$ROOT/target}/$target/image/cognito-unauth-controller"
else
  log "musl target or musl-gcc missing (testbed/image.sh installs them): benchmarking the release build"
  cargo build --locked --quiet --release --bin cognito-unauth-controller
  bin="${CARGO_TARGET_DIR:-target}/release/cognito-unauth-controller"
fi
"$VENV/bin/python" testbed/bench.py --n "$n" --binary "$bin" "$@"
