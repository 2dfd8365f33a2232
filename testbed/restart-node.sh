#!/usr/bin/env bash
# Restarts a part of the test bed's node in place, for the fault matrix:
#   testbed/restart-node.sh kubelet|containerd
# Stops it (SIGTERM to its process group, as `make down` does: the pods' containers and
# their shims are not in it and keep running), waits DOWN_SECONDS (default 5), starts it
# with the same configuration, and waits until the node is Ready again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/node.sh"
bed_lock
[[ -f "$LOCAL/env" ]] || die "no test bed is running: make up"
! grep -q '^export CUC_NODE="off"' "$LOCAL/env" || die "the test bed has no node: $(grep -o 'CUC_NODE_REASON=.*' "$LOCAL/env")"
part=${1:?kubelet or containerd}
alive "$part" || die "$part is not running"
stop "$part"
sleep "${DOWN_SECONDS:-5}"
case $part in
  kubelet) node_start_kubelet ;;
  containerd) node_start_containerd ;;
  *) die "unknown part: $part" ;;
esac
# The node object stays Ready through a short outage: wait for the kubelet itself.
kubelet_healthy() { in_node curl -sf --max-time 2 http://127.0.0.1:10248/healthz >/dev/null; }
wait_until 60 "the kubelet's healthz" kubelet_healthy || { tail -30 "$RUN/kubelet.log" >&2; die "the kubelet is not healthy"; }
node_wait_ready
log "$part restarted"
