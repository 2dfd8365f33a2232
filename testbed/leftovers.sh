#!/usr/bin/env bash
# What the machine looks like, as far as a test bed can change it, so that the state
# after `make down` can be compared with the state before `make up`:
#
#   testbed/leftovers.sh snapshot FILE   # before make up
#   testbed/leftovers.sh compare FILE    # after make down: fails on any difference
#
# Network namespaces, links and addresses, routes, iptables (nft and legacy, v4 and v6)
# and the whole nft ruleset, forwarding sysctls, mounts, cgroups (and the controllers a
# cgroup v2 root enables for its children), the global paths a kubelet, containerd or
# the CNI plugins use by default, and (compare only) processes of this bed. Lines that
# name another work tree's bed are left out, so a bed running next to this one is no
# leftover of ours.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

state() {
  echo "## netns"; { ip netns list 2>/dev/null || true; } | awk '{print $1}' | sort
  echo "## links"; ip -o link show | awk '{print $2, $3}' | sort
  echo "## addresses"; ip -o addr show | awk '{print $2, $3, $4}' | sort
  echo "## routes"; ip -4 route show table all | sort
  ip -6 route show table all | sed -E 's/ expires [0-9]+sec//' | sort
  local save
  for save in iptables-nft-save ip6tables-nft-save iptables-legacy-save ip6tables-legacy-save; do
    echo "## $save"   # (empty when not installed, as when it has no tables)
    command -v "$save" >/dev/null 2>&1 || continue
    { "$save" 2>/dev/null || true; } | sed -E -e '/^#/d' -e 's/\[[0-9]+:[0-9]+\]//'
  done
  echo "## nft"
  if command -v nft >/dev/null 2>&1; then
    nft list ruleset 2>/dev/null | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'
  fi
  echo "## sysctl"
  local k
  for k in net/ipv4/ip_forward net/ipv6/conf/all/forwarding net/ipv4/conf/all/route_localnet \
    net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables; do
    [[ -e "/proc/sys/$k" ]] && echo "$k=$(cat "/proc/sys/$k")"
  done
  echo "## mounts"; mounts | sort
  echo "## cgroups"
  local h
  for h in $(mounts | awk '$2 == "cgroup" || $2 == "cgroup2" {print $1}'); do
    find "$h" -mindepth 1 -maxdepth 3 -type d 2>/dev/null
  done | { grep -v '/process_api' || true; } | sort   # not the sandbox's own per-command cgroups
  # The controllers cgroup v2 hands down (the node enables some at the root on a v2 host).
  for h in $(mounts | awk '$2 == "cgroup2" {print $1}'); do
    echo "$h/cgroup.subtree_control: $(cat "$h/cgroup.subtree_control" 2>/dev/null)"
  done
  echo "## paths"
  local p
  for p in /run/netns /var/run/netns /run/containerd /var/lib/containerd /opt/containerd /etc/containerd \
    /run/nri /var/run/nri /etc/nri /opt/nri /etc/cdi /var/run/cdi /var/lib/kubelet /var/log/pods /var/log/containers \
    /usr/libexec/kubernetes /etc/kubernetes /var/lib/cni /etc/cni /opt/cni /run/flannel /run/cuc-*; do
    if [[ -e "$p" ]]; then find "$p" -maxdepth 3 -printf '%p %M\n' 2>/dev/null; fi
  done | sort
}

# Leaves out what belongs to another work tree's test bed (its id, its .local, the whole
# of its nft table) and, while another bed's node runs, the global paths every node
# shares, whoever made them (the first `ip netns add` makes /run/netns and its bind
# mount, the kubelet and the CNI plugins the others; the last bed's make down removes them).
filtered_state() {
  local others=0 ns
  for ns in /run/netns/cuc-*; do
    if [[ -e "$ns" && "$ns" != "/run/netns/$NODE_NETNS" ]]; then others=1; fi
  done
  state | awk -v id="$BED_ID" -v mine="$ROOT/.local/" -v others="$others" '
    in_table { if ($0 == "}") in_table = 0; next }
    {
      other = 0; s = $0
      while (match(s, /cuc[-_][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]/)) {
        if (substr(s, RSTART + 4, 6) != id) other = 1
        s = substr(s, RSTART + RLENGTH)
      }
      if (index($0, "/.local/") && !index($0, mine)) other = 1
      if (other && /^table .*\{$/) in_table = 1
      if (others && $1 ~ "^(/run/netns|/var/run/netns|/var/lib/cni|/var/log/containers|/var/lib/kubelet)(/|$)") other = 1
      if (!other) print
    }'
}

our_processes() {
  local p args
  for p in /proc/[0-9]*; do
    [[ "${p#/proc/}" == "$$" ]] && continue
    args=$( { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null) || continue
    case "$args" in
      *testbed/leftovers.sh*) ;;   # this script and its subshells
      *"$ROOT/.local/"*|*"/run/cuc-$BED_ID"*|*"/run/netns/cuc-$BED_ID"*) echo "${p#/proc/} $args" ;;
    esac
  done
}

case "${1:-}" in
  snapshot)
    [[ -n "${2:-}" ]] || die "usage: $0 snapshot FILE"
    filtered_state > "$2"
    ;;
  compare)
    [[ -f "${2:-}" ]] || die "usage: $0 compare FILE (written by '$0 snapshot FILE' before make up)"
    now=$(mktemp)
    filtered_state > "$now"
    procs=$(our_processes)
    if ! diff -u "$2" "$now" > "$now.diff" || [[ -n "$procs" ]]; then
      log "the machine differs from before 'make up' (- before, + after make down):"
      cat "$now.diff" >&2
      [[ -z "$procs" ]] || { log "processes of this bed still running:"; echo "$procs" >&2; }
      rm -f "$now" "$now.diff"
      exit 1
    fi
    rm -f "$now" "$now.diff"
    log "no leftovers: netns, links, routes, iptables, nft, sysctls, mounts, cgroups, paths and processes as before 'make up'"
    ;;
  *) die "usage: $0 snapshot FILE | compare FILE" ;;
esac
