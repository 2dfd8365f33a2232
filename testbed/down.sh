#!/usr/bin/env bash
# Stops every process of the local test bed and removes its state (not the build cache).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
quiet=${1:-}
[[ -d "$RUN" ]] || exit 0
for n in controller kube-controller-manager kube-apiserver proxy moto etcd; do stop "$n"; done
# Anything else a test started under .local/run and recorded.
for pidfile in "$RUN"/*.pid; do
  [[ -e "$pidfile" ]] && stop "$(basename "$pidfile" .pid)"
done
rm -rf "$RUN" "$LOCAL/env" "$LOCAL/kubeconfig"
[[ "$quiet" == "--quiet" ]] || log "test bed stopped"
