#!/usr/bin/env bash
# `make reliability`: runs the fault matrix on the test bed and writes docs/reliability.md
# from the rows the passing tests recorded.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
# Where the tests write their rows: CARGO_TARGET_TMPDIR, under cargo's target dir.
rows="${CARGO_TARGET_DIR:-$ROOT/target}/tmp/fault-matrix"
rm -rf "$rows"
started_here=0
# shellcheck disable=SC2034  # read by the EXIT trap below
testbed/up.sh --check-only 2>/dev/null || started_here=1
trap '(( started_here )) && testbed/down.sh' EXIT
testbed/up.sh
# shellcheck disable=SC1091
source "$LOCAL/env"
cargo test --locked --test controller -- --test-threads 8 \
  fault repairs_a_deleted never_takes deleting_the_resource a_forgotten_identity overdue_renewals
cargo test --locked --test workloads -- --test-threads 4 verify restart_targets
cargo test --locked --test loops -- --test-threads 8
cargo test --locked --test runtime -- --test-threads 8 one_leader leader_failover a_leader_that_cannot_renew
cargo test --locked --test apiserver_restart
# Restarts the node under every pod: ignored by make test, run here alone.
cargo test --locked --test node_faults -- --ignored
python3 - "$rows" > docs/reliability.md <<'PY'
import json, os, sys, platform, datetime
rows = [json.load(open(os.path.join(sys.argv[1], f))) for f in sorted(os.listdir(sys.argv[1]))]
print("# Reliability: the fault matrix\n")
print("Each row is a test against the real API server and the Cognito emulator behind the")
print("proxy (tests/controller/faults.rs, tests/controller/basic.rs, tests/controller/main.rs, tests/loops.rs,")
print("tests/workloads.rs, tests/runtime.rs, tests/apiserver_restart.rs, tests/node_faults.rs); a row is")
print("written only when its")
print("test passes. Rerun and regenerate this page with `make reliability`.\n")
print("In every Cognito fault the test also watches every version of the Secret while the")
print("fault lasts and asserts that each one is present and intact (never empty, partial or")
print("replaced by worse credentials).\n")
print("| fault | asserted | measured | result |")
print("| --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['fault']} | {r['asserted']} | {r['measured']} | {r['result']} |")
print()
print(f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores.\n")
print("Covered elsewhere: SIGTERM releasing the Lease (tests/runtime.rs); every error")
print("class's reason with the Secret kept (tests/controller/main.rs); admission refusals")
print("(tests/admission.rs); the chart's RBAC being minimal (tests/chart.rs); property")
print("tests of the pure steps (src/reconcile/properties.rs) and fuzzing of untrusted input (`make fuzz`).")
PY
# shellcheck disable=SC2012  # the rows are <test id>.json: plain names
log "wrote docs/reliability.md from $(ls "$rows" | wc -l) rows"
