#!/usr/bin/env bash
# Stops every process of the local test bed and removes its state (not the build cache):
# the controllers first (nothing recreates pods), then the node (testbed/node.sh: pods
# through the kubelet, the kubelet, containerd, and everything they left on the
# machine), then the API server, the emulator and etcd.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/node.sh"
bed_lock
quiet=${1:-}
if [[ -d "$RUN" || -e "/run/netns/$NODE_NETNS" || -d "$NODE_STATE" ]]; then
  mkdir -p "$RUN"
  for n in controller kube-controller-manager kube-scheduler; do stop "$n"; done
  node_down
  for n in kube-apiserver proxy moto etcd; do stop "$n"; done
  # Anything else a test started under .local/run and recorded.
  for pidfile in "$RUN"/*.pid; do
    [[ -e "$pidfile" ]] && stop "$(basename "$pidfile" .pid)"
  done
  umount_all_under "$RUN"
  rm -rf --one-file-system "$RUN" "$LOCAL/env" "$LOCAL/kubeconfig"
fi
[[ "$quiet" == "--quiet" ]] || log "test bed stopped"
