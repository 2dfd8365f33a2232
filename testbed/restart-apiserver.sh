#!/usr/bin/env bash
# Restarts the test bed's kube-apiserver in place (same port, same flags): for the fault
# matrix. Stops it (SIGTERM), waits DOWN_SECONDS (default 3), starts it, waits for /readyz.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bed_lock
[[ -f "$RUN/kube-apiserver.cmd" ]] || die "no running test bed (testbed/up.sh first)"
mapfile -t cmd < "$RUN/kube-apiserver.cmd"
stop kube-apiserver
sleep "${DOWN_SECONDS:-3}"
start kube-apiserver "${cmd[@]}"
api_url=$(cat "$RUN/apiserver.url")
readyz() { curl -sf --max-time 2 --cacert "$RUN/pki/ca.crt" --cert "$RUN/pki/admin.crt" --key "$RUN/pki/admin.key" "$api_url/readyz"; }
wait_until 60 kube-apiserver readyz || { tail -20 "$RUN/kube-apiserver.log" >&2; die "kube-apiserver did not come back"; }
log "kube-apiserver restarted"
