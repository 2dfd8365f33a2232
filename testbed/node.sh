# shellcheck shell=bash
# The test bed's node: containerd (2.x) and runc, the kubelet and kube-proxy, all inside a
# network namespace of their own (/run/netns/cuc-<id>), joined to the host by one veth
# pair; the pods' bridge (cni0) and every iptables rule the kubelet, kube-proxy and the
# CNI plugins make live in that namespace and vanish with it.
#
#   host namespace                           node namespace (cuc-<id>)
#   kube-apiserver, Cognito proxy            kubelet, containerd, kube-proxy
#     on $HOST_IP (and 127.0.0.1)            host0 $NODE_IP ---- cni0 $BRIDGE_IP ---- pods
#   cuc-<id> $HOST_IP/30 ------------------- host0                      ($POD_CIDR)
#
# No packet from a pod can leave the machine, by three independent rules:
#   - routes: pods have routes to this bed's /24 and the service range only, and the
#     node's namespace has no default route: anything else is "network unreachable";
#   - the node's nft table cuc_guard: its forward chain (policy drop) lets pod traffic
#     reach pods and $HOST_IP only; the CNI bridge has ipMasq off;
#   - the host's nft table cuc_<id>: nothing is forwarded to or from the veth, and from
#     it only the ports in its set "ports" (the API server's, the proxy's) on $HOST_IP
#     are reachable.
# The host's own ip_forward is never touched (only the node namespace's is on).
# containerd never reaches a registry: every registry host maps to a refused loopback
# port (certs.d/_default/hosts.toml), and the node has nothing to route a pull by.
# Every image is built locally (testbed/images.sh) and imported.
# Sourced by up.sh and down.sh after lib.sh.

NODE_STATE="/run/cuc-$BED_ID"     # short: containerd's and the shims' sockets, the kubelet's root
NODE_HOSTSTATE="$LOCAL/node-host-state"   # what the host had before up (read by down)

in_node() { nsenter --net="/run/netns/$NODE_NETNS" -- "$@"; }
# ctr on the node's containerd (it warns on stderr at every call that cgroup v1 is deprecated).
ctr_node() { "${cbin:-$(containerd_bin_dir)}/ctr" --address "$NODE_STATE/containerd.sock" -n k8s.io "$@"; }

# Every Debian package the node and its images need, in one apt-get run (the image
# builds run in the background, beside the Go builds: no second apt-get at once). None
# when the node is off.
node_prereqs() {
  node_select
  [[ "$NODE_MODE" == on ]] || return 0
  ensure_debs iptables nftables containernetworking-plugins buildah debootstrap \
    libseccomp-dev pkg-config gcc libc6-dev musl-tools
  need nsenter "Install util-linux: apt-get install -y util-linux"
  need ip "Install iproute2: apt-get install -y iproute2"
}

# ---------------------------------------------------------------- on or off
# node_select: whether this bed has a node. NODE_MODE=on, or off with NODE_OFF_REASON.
# CUC_NODE=off asks for none; CUC_NODE=on for one or a failure; unset, there is one when
# the machine can run it (root, usable cgroups). A machine that can run it never goes on
# without it: a node that fails to start fails make up.
node_select() {
  [[ -z "${NODE_MODE:-}" ]] || return 0
  NODE_OFF_REASON=""
  case "${CUC_NODE:-}" in
    off) NODE_MODE=off NODE_OFF_REASON="CUC_NODE=off was asked for"; return 0 ;;
    on|"") ;;
    *) die "CUC_NODE=$CUC_NODE: set it to off (no node), on (a node, or a failure), or leave it unset (a node when this machine can run one)" ;;
  esac
  local why=""
  if (( EUID != 0 )); then
    why="not root (the node's network namespace, mounts and cgroups need root)"
  else
    why=$(cgroups_unusable)
  fi
  if [[ -z "$why" ]]; then
    NODE_MODE=on
  elif [[ "${CUC_NODE:-}" == on ]]; then
    die "CUC_NODE=on, but this machine cannot run the node: $why"
  else
    # shellcheck disable=SC2034  # read by up.sh, which sources this file
    NODE_MODE=off NODE_OFF_REASON=$why
  fi
}

# 1 (v1 controllers under a tmpfs at /sys/fs/cgroup: this project's machines, tested) or
# 2 (the unified hierarchy at /sys/fs/cgroup: written from the docs, not yet run here).
cgroup_version() {
  case "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" in
    tmpfs) echo 1 ;;
    cgroup2fs) echo 2 ;;
    *) echo none ;;
  esac
}

# The controllers the kubelet uses on cgroup v2 (getSupportedUnifiedControllers in
# pkg/kubelet/cm/cgroup_v2_manager_linux.go) that this kernel has.
cgroup2_controllers() {
  local have c
  have=" $(cat /sys/fs/cgroup/cgroup.controllers) "
  for c in cpu cpuset memory pids hugetlb; do
    [[ "$have" == *" $c "* ]] && printf '%s ' "$c"
  done
  true
}

# Why the node cannot use this machine's cgroups; nothing when it can. Reads only.
cgroups_unusable() {
  local c
  case "$(cgroup_version)" in
    1)
      # What the kubelet requires on v1 (validateSystemRequirements in
      # pkg/kubelet/cm/container_manager_linux.go), where it can write.
      for c in cpu cpuacct cpuset memory; do
        [[ -f "/sys/fs/cgroup/$c/cgroup.procs" ]] || { echo "cgroup v1 without the $c controller at /sys/fs/cgroup/$c"; return; }
        [[ -w "/sys/fs/cgroup/$c" ]] || { echo "/sys/fs/cgroup/$c is read-only (a container without privileges?)"; return; }
      done
      ;;
    2)
      local want enabled missing=""
      want=$(cgroup2_controllers 2>/dev/null) || { echo "cannot read /sys/fs/cgroup/cgroup.controllers"; return; }
      for c in cpu memory pids; do
        [[ " $want " == *" $c "* ]] || { echo "the cgroup v2 hierarchy has no $c controller"; return; }
      done
      [[ -w /sys/fs/cgroup ]] || { echo "/sys/fs/cgroup is read-only (a container without privileges?)"; return; }
      enabled=" $(cat /sys/fs/cgroup/cgroup.subtree_control) "
      for c in $want; do [[ "$enabled" == *" $c "* ]] || missing+=" $c"; done
      # Only the real root may hold processes and enable controllers for its children: a
      # container's root (it has a cgroup.type) with processes in it cannot, unless they
      # are moved out first, which is this machine's business and not the bed's.
      if [[ -n "$missing" && -e /sys/fs/cgroup/cgroup.type && -n "$(cat /sys/fs/cgroup/cgroup.procs)" ]]; then
        echo "cgroup v2: /sys/fs/cgroup is a container's cgroup with processes in it, so the controllers the kubelet needs ($missing ) cannot be enabled for the node's cgroups"
      fi
      ;;
    *) echo "no cgroup file system at /sys/fs/cgroup" ;;
  esac
}

# The v1 hierarchies (and the unified one) mounted under /sys/fs/cgroup; on cgroup v2,
# /sys/fs/cgroup itself.
cgroup_hierarchies() {
  mounts | awk '($2 == "cgroup" || $2 == "cgroup2") && $1 ~ /^\/sys\/fs\/cgroup(\/|$)/ {print $1}'
}

# ---------------------------------------------------------------- network
# host_claims CIDR: the host's addresses inside CIDR, its routes to CIDR or to a part of
# it (any table), and its iptables or nft rules naming an address of it (a cluster this
# machine belongs to, programming its Services here); one line each. Routes that merely
# contain CIDR (a LAN, a VPN's 10/8, the default route) are no claim: the bed's more
# specific routes win for its own addresses only.
host_claims() {
  local cidr=$1 prefix=${1%.0/24}
  { ip -o -4 addr show | awk '{print "address", $4, "on", $2}'
    ip -4 route show table all | sed 's/^/route /'
  } | python3 -c '
import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1])
types = {"unicast", "local", "broadcast", "multicast", "unreachable", "blackhole", "prohibit", "throw", "nat", "anycast"}
for line in sys.stdin:
    f = line.split()
    if f[0] == "address":
        hit = ipaddress.ip_interface(f[1]).ip in net
    else:
        dst = f[2] if f[1] in types else f[1]
        if dst == "default":
            continue
        try:
            hit = ipaddress.ip_network(dst, strict=False).subnet_of(net)
        except ValueError:
            continue
    if hit:
        print(line.strip())
' "$cidr"
  { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; nft list ruleset 2>/dev/null; } \
    | grep -E "(^|[^0-9.])${prefix//./\\.}\.[0-9]" | sed 's/^/rule /' || true
}

# refuse_claimed CIDR WHAT: die, saying what holds it, when the host has a claim on CIDR.
refuse_claimed() {
  local claims
  claims=$(host_claims "$1")
  [[ -z "$claims" ]] && return 0
  die "$2 $1 is in use on this machine (another test bed, or a cluster's Service range?):
$claims
'make down' in the work tree that owns it, or set CUC_BED_INDEX to another number in 2..251 (it moves this bed's /24 and its service range)"
}

node_network_up() {
  node_remember_host
  refuse_claimed "$BED_NET.0/24" "this bed's range"
  refuse_claimed "$SERVICE_CIDR" "this bed's service range"
  [[ ! -e "/run/netns/$NODE_NETNS" ]] || die "network namespace $NODE_NETNS exists: run 'make down' here first"
  ip netns add "$NODE_NETNS"
  ip link add "$HOST_VETH" type veth peer name host0 netns "$NODE_NETNS"
  sysctl -qw "net/ipv6/conf/$HOST_VETH/disable_ipv6=1"
  ip addr add "$HOST_IP/30" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_VETH"
  # Service addresses from the host (the API server calling a webhook's Service) go to the
  # node, where kube-proxy's rules take them to a pod, as on a control-plane node; never
  # out of the machine's own interface (the default route).
  ip route add "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_VETH"
  in_node ip link set lo up
  in_node sysctl -qw net.ipv6.conf.host0.disable_ipv6=1
  in_node ip addr add "$NODE_IP/30" dev host0
  in_node ip link set host0 up
  # Processes on the node's own network (host-network pods: a webhook with
  # webhook.hostNetwork) reach Services as pods do: connect() needs a route before
  # kube-proxy's OUTPUT rules rewrite the address to an endpoint. On the link only (no
  # gateway): an address without a Service finds no one there and fails.
  in_node ip route add "$SERVICE_CIDR" dev host0
  # The bridge exists before the first pod, with the address the CNI config names as
  # gateway (the bridge plugin reuses both).
  in_node ip link add cni0 type bridge
  in_node ip addr add "$BRIDGE_IP/25" dev cni0
  in_node ip link set cni0 up
  in_node sysctl -qw net.ipv4.ip_forward=1
  # Deliberately no default route in the node's namespace.
  in_node nft -f - <<NFT
table inet cuc_guard {
  chain forward {
    type filter hook forward priority -10; policy drop;
    ip saddr $POD_CIDR ip daddr { $POD_CIDR, $HOST_IP } accept
    ip saddr $HOST_IP ip daddr $POD_CIDR accept
  }
}
NFT
  nft -f - <<NFT
table inet $NFT_TABLE {
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "$HOST_VETH" drop
    oifname "$HOST_VETH" drop
  }
  set ports {
    type inet_service
  }
  # The bed's addresses (node, pods, services) are reached through the veth or not at all:
  # whatever happens to the routes, no packet for them leaves by another interface.
  chain output {
    type filter hook output priority -10; policy accept;
    ip daddr { $BED_NET.0/24, $SERVICE_CIDR } oifname != { "lo", "$HOST_VETH" } drop
  }
  chain input {
    type filter hook input priority -10; policy accept;
    iifname "$HOST_VETH" ct state established,related accept
    iifname "$HOST_VETH" ip daddr $HOST_IP tcp dport @ports accept
    iifname "$HOST_VETH" drop
    ip daddr $HOST_IP iifname != { "lo", "$HOST_VETH" } drop
  }
}
NFT
}

# No node: the bed's /24 and service range still never take the machine's default route
# (the API server calls an admission webhook's Service by its ClusterIP): as root, both
# are unreachable routes until make down. Without root (or iproute2) none can be set;
# nothing that would send there runs without the node.
node_network_off() {
  (( EUID == 0 )) && command -v ip >/dev/null 2>&1 || return 0
  refuse_claimed "$BED_NET.0/24" "this bed's range"
  refuse_claimed "$SERVICE_CIDR" "this bed's service range"
  ip route add unreachable "$BED_NET.0/24"
  ip route add unreachable "$SERVICE_CIDR"
}

# node_allow_port PORT: let the node and its pods reach PORT on $HOST_IP.
node_allow_port() { nft add element inet "$NFT_TABLE" ports "{ $1 }"; }

# ---------------------------------------------------------------- configuration
node_write_config() { # PKI CA_PATH API_URL
  local pki=$1 api_url=$2 cbin rbin
  cbin=$(containerd_bin_dir); rbin=$(runc_bin_dir)
  mkdir -p "$NODE_DIR"/{containerd,cni/net.d,cni/ipam,certs.d/_default,pod-logs,volume-plugins} \
    "$NODE_STATE"/{containerd,s,kubelet}
  cat > "$NODE_DIR/containerd.toml" <<TOML
# The test bed's node runtime (containerd $("$cbin/containerd" --version | awk '{print $3}')). Paths are this bed's own.
version = 4
root = '$NODE_DIR/containerd'
state = '$NODE_STATE/containerd'
imports = []
# Plugins that would use machine-global paths (/opt/containerd, /var/run/nri, /etc/nri)
# or that the node has no use for.
disabled_plugins = [
  'io.containerd.nri.v1.nri',
  'io.containerd.internal.v1.opt',
  'io.containerd.image-verifier.v1.bindir',
  'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.mount-handler.v1.erofs',
]

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '$NODE_STATE/containerd.sock'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '$NODE_STATE/containerd.sock.ttrpc'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$NODE_DIR/certs.d'

  [plugins.'io.containerd.cri.v1.runtime']
    # This machine's root lacks CAP_SYS_RESOURCE: pod sandboxes (-998) and Guaranteed pods
    # (-997) cannot lower their oom_score_adj below containerd's own.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = ['$NODE_DIR/cdi']
    enable_criu = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$rbin/runc'
        Root = '$NODE_STATE/runc'
        SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '$NODE_DIR/cni/net.d'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '$NODE_STATE/s'

  [plugins.'io.containerd.transfer.v1.local']
    config_path = '$NODE_DIR/certs.d'
TOML
  cat > "$NODE_DIR/certs.d/_default/hosts.toml" <<'TOML'
# Every registry (docker.io, registry.k8s.io, public.ecr.aws, registry.invalid, ...) is
# this loopback port of the node's namespace, where nothing listens: a pull is refused at
# once and never leaves the node. Images are built locally and imported.
server = 'http://127.0.0.1:9'
TOML
  cat > "$NODE_DIR/cni/net.d/10-testbed.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "cuc-$BED_ID",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$BED_NET.0/24"}, {"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # No DNS server on the node: a lookup fails at once, inside the pod.
  printf '# The test bed has no cluster DNS; nothing listens here.\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n' \
    > "$NODE_DIR/resolv.conf"
  cat > "$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
$(kubelet_cgroup_lines)
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
containerRuntimeEndpoint: unix://$NODE_STATE/containerd.sock
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
clusterDomain: cluster.local
resolvConf: $NODE_DIR/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
volumePluginDir: $NODE_DIR/volume-plugins
# A shared disk: image GC and eviction must never fire because another tree filled it.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", imagefs.inodesFree: "0%"}
localStorageCapacityIsolation: false
# syncFrequency, the Secret and ConfigMap refresh and every other timing: the defaults,
# which is what users live with.
YAML
  local name user cert
  for name in kubelet kube-proxy; do
    user=system:node:$NODE_NAME; cert=node
    [[ "$name" == kube-proxy ]] && { user=system:kube-proxy; cert=kube-proxy; }
    write_kubeconfig "$NODE_DIR/$name.kubeconfig" "$api_url" "$pki/ca.crt" "$user" "$pki/$cert.crt" "$pki/$cert.key"
  done
  cat > "$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# No Service range to give: kube-proxy programs the ClusterIPs the API server allocates
# from its --service-cluster-ip-range ($SERVICE_CIDR).
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
# Traffic from pods is never marked for masquerade; only the node's own.
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {localhostNodePorts: false}
nodePortAddresses: ["$NODE_IP/32"]
# Leave the machine-wide conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# ---------------------------------------------------------------- cgroups
# The kubelet's cgroup settings before cgroupDriver (cgroupfs on both versions).
kubelet_cgroup_lines() {
  if [[ "$(cgroup_version)" == 1 ]]; then
    echo "# This machine: cgroup v1 (kubelet >= 1.35 refuses it unless told), swap on, cgroupfs."
    echo "failCgroupV1: false"
  else
    # https://kubernetes.io/docs/concepts/architecture/cgroups/ : the kubelet and
    # containerd (1.4+) use v2 by themselves on a unified hierarchy. The docs recommend
    # the systemd driver where systemd is the init system
    # (https://kubernetes.io/docs/setup/production-environment/container-runtimes/#cgroup-drivers);
    # the bed keeps cgroupfs, which needs no systemd, and its own tree $CGROUP_ROOT.
    echo "# This machine: cgroup v2 (written from the docs, not yet run on a v2 host), swap on, cgroupfs."
  fi
}

# cgroup v2 (written from the docs, not yet run here): the kubelet accepts its cgroupRoot
# only when every controller it uses that the kernel has is enabled in it, i.e. in the
# parent's cgroup.subtree_control (cgroupV2impl.Validate in
# pkg/kubelet/cm/cgroup_v2_manager_linux.go; the kernel's rules:
# https://docs.kernel.org/admin-guide/cgroup-v2.html#enabling-and-disabling). Under the
# root, which may hold processes and still enable controllers (ours is a direct child of
# it), then in ours for the kubelet's kubepods (runc's libcontainer, fs2.CreateCgroupPath,
# does the same along every path it makes). What the root had before is in
# $NODE_HOSTSTATE (node_remember_host); make down puts it back.
node_cgroup2_up() {
  local want
  want=$(cgroup2_controllers)
  want="+${want% }"; want=${want// / +}
  echo "$want" > /sys/fs/cgroup/cgroup.subtree_control \
    || die "could not enable the controllers the kubelet uses ($want) in /sys/fs/cgroup/cgroup.subtree_control"
  mkdir -p "/sys/fs/cgroup$CGROUP_ROOT"
  echo "$want" > "/sys/fs/cgroup$CGROUP_ROOT/cgroup.subtree_control" \
    || die "could not enable $want in /sys/fs/cgroup$CGROUP_ROOT/cgroup.subtree_control"
  [[ ! -d /run/systemd/system ]] \
    || log "cgroup v2 under systemd: the node uses the cgroupfs driver in its own $CGROUP_ROOT, beside systemd's tree (untested)"
}

node_cgroups_up() {
  if [[ "$(cgroup_version)" == 2 ]]; then node_cgroup2_up; return; fi
  local h
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h$CGROUP_ROOT"
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" > "$h$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# ---------------------------------------------------------------- processes
# Each also used alone by testbed/restart-node.sh (the fault matrix).
node_start_containerd() {
  local cbin
  cbin=$(containerd_bin_dir)
  # containerd finds its shim next to itself on PATH.
  start containerd env PATH="$cbin:$PATH" nsenter --net="/run/netns/$NODE_NETNS" -- \
    "$cbin/containerd" --config "$NODE_DIR/containerd.toml" --log-level warn
  wait_until 60 containerd ctr_node version || { tail -30 "$RUN/containerd.log" >&2; die "containerd did not start"; }
}
node_start_kubelet() {
  start kubelet nsenter --net="/run/netns/$NODE_NETNS" -- "$(k8s_bin_dir)/kubelet" \
    --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --root-dir "$NODE_STATE/kubelet" --cert-dir "$NODE_STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
}
node_up() { # PKI API_URL IMAGE_ARCHIVE...
  local pki=$1 api_url=$2; shift 2
  local cbin kbin
  cbin=$(containerd_bin_dir); kbin=$(k8s_bin_dir)
  echo "$kbin" > "$RUN/k8s-bin"
  echo "$cbin" > "$RUN/containerd-bin"
  node_write_config "$pki" "$api_url"
  node_cgroups_up
  node_start_containerd
  local archive
  for archive in "$@"; do
    ctr_node images import --local "$archive" >/dev/null 2>"$RUN/ctr-import.log" \
      || { cat "$RUN/ctr-import.log" >&2; die "ctr images import $archive failed"; }
  done
  node_start_kubelet
  start kube-proxy nsenter --net="/run/netns/$NODE_NETNS" -- "$kbin/kube-proxy" \
    --config "$NODE_DIR/kube-proxy.yaml" --v=1
}

# Waits until the node is Ready and kube-proxy has programmed the kubernetes Service.
node_registered() { "$(k8s_bin_dir)/kubectl" --kubeconfig "$LOCAL/kubeconfig" get node "$NODE_NAME"; }
service_programmed() { in_node iptables -t nat -S KUBE-SERVICES | grep -q -- "-d $KUBERNETES_SERVICE_IP/32"; }
node_wait_ready() {
  local kbin; kbin=$(k8s_bin_dir)
  wait_until 90 "the node to register" node_registered \
    || { tail -30 "$RUN/kubelet.log" >&2; die "the kubelet did not register the node"; }
  "$kbin/kubectl" --kubeconfig "$LOCAL/kubeconfig" wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null \
    || { tail -30 "$RUN/kubelet.log" >&2; die "the node did not become Ready"; }
  wait_until 60 "kube-proxy to program the kubernetes Service" service_programmed \
    || { tail -30 "$RUN/kube-proxy.log" >&2; die "kube-proxy did not program the kubernetes Service"; }
}

# What the node may change on the host outside this bed's own paths, recorded before
# anything starts so that down can put it back: /run/netns (made and bind-mounted by the
# first `ip netns add`), the kubelet's legacy log links and its device-plugin socket
# (both at fixed paths, whatever its root dir), libcni's cache.
node_remember_host() {
  local d
  echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)" > "$NODE_HOSTSTATE"
  for d in /run/netns /var/log/containers /var/lib/cni /var/lib/kubelet; do
    if [[ -d "$d" ]]; then echo "$d $(stat -c %a "$d")" >> "$NODE_HOSTSTATE"; else echo "$d absent" >> "$NODE_HOSTSTATE"; fi
  done
  if [[ "$(cgroup_version)" == 2 ]]; then
    echo "cgroup2_subtree_control $(cat /sys/fs/cgroup/cgroup.subtree_control)" >> "$NODE_HOSTSTATE"
  fi
}

# ---------------------------------------------------------------- teardown
# Stops pods, then the kubelet, then containerd, and removes everything the node added:
# shims, mounts, the namespaces, the host's nft table and route, cgroups, log symlinks.
# Safe to run when nothing or only part of it is up.
node_down() {
  # The binaries this bed was started with (the cache key may have changed since).
  local kbin cbin
  kbin=$(cat "$RUN/k8s-bin" 2>/dev/null || k8s_bin_dir)
  cbin=$(cat "$RUN/containerd-bin" 2>/dev/null || containerd_bin_dir)
  # 1. Pods, through the kubelet, while it and the API server still run (the callers
  #    stop the controllers first, so nothing recreates them).
  if alive kubelet && alive kube-apiserver; then
    "$kbin/kubectl" --kubeconfig "$LOCAL/kubeconfig" delete pods --all-namespaces --all \
      --grace-period=1 --wait=true --timeout=60s >/dev/null 2>&1 \
      || log "pods did not all stop within 60s; killing what is left through containerd"
  fi
  stop kube-proxy
  stop kubelet
  # 2. Whatever still runs, through containerd: kill the tasks, delete containers, so the
  #    shims exit.
  if alive containerd; then
    local t
    for t in $(ctr_node tasks ls -q 2>/dev/null); do ctr_node tasks delete --force "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_node containers ls -q 2>/dev/null); do ctr_node containers delete "$t" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # 3. Shims and container processes that outlived it: only ours (their socket is ours).
  local pid
  for pid in $(node_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  # 4. Mounts under our dirs (netns files, shm, overlay rootfs, volumes, the kubelet's
  #    self bind mount), deepest first.
  local dir
  for dir in "$NODE_STATE" "$NODE_DIR"; do umount_all_under "$dir"; done
  # 5. Network: the node namespace takes its bridge, veths, routes, iptables and nft
  #    rules with it; the host keeps nothing of ours.
  ip netns delete "$NODE_NETNS" 2>/dev/null || true
  ip link delete "$HOST_VETH" 2>/dev/null || true
  ip route delete unreachable "$BED_NET.0/24" 2>/dev/null || true     # node_network_off's
  ip route delete unreachable "$SERVICE_CIDR" 2>/dev/null || true
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  # 6. Cgroups: ours, deepest first (the kubelet's kubepods/... under our root).
  local h
  for h in $(cgroup_hierarchies); do
    [[ -d "$h$CGROUP_ROOT" ]] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # 7. What the kubelet and the CNI plugins leave on the host outside our paths.
  node_restore_host
  rm -rf --one-file-system "$NODE_STATE"
}

# The processes of this bed's node that are not in a pid file: shims (started with our
# socket) and anything still in our cgroups.
node_pids() {
  local p h
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -q -- "$NODE_STATE/" && echo "${p#/proc/}"
  done
  for h in $(cgroup_hierarchies); do
    [[ -d "$h$CGROUP_ROOT" ]] && find "$h$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  true
}

umount_all_under() {
  local dir=$1 m
  [[ -d "$dir" ]] || return 0
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
}

node_restore_host() {
  [[ -f "$NODE_HOSTSTATE" ]] || return 0
  local d state f
  # The kubelet's legacy log symlinks point into our pod log dir.
  if [[ -d /var/log/containers ]]; then
    for f in /var/log/containers/*.log; do
      [[ -L "$f" && "$(readlink "$f")" == "$NODE_DIR/"* ]] && rm -f "$f"
    done
  fi
  # libcni's result cache: entries named after our network.
  rm -rf /var/lib/cni/results/"cuc-$BED_ID"-* 2>/dev/null || true
  # The kubelet's device-plugin socket (no device plugins run here).
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  while read -r d state; do
    if [[ "$d" == cgroup2_subtree_control ]]; then
      node_restore_cgroup2 "$state"
    elif [[ "$d" != /* ]]; then
      continue
    elif [[ "$state" == absent ]]; then
      [[ -d "$d" ]] || continue
      if [[ -z "$(find "$d" -mindepth 1 -not -type d -print -quit)" ]] && mountpoint -q "$d"; then
        umount "$d" 2>/dev/null || true
      fi
      find "$d" -depth -type d -empty -delete 2>/dev/null || true
    elif [[ -d "$d" ]]; then
      chmod "$state" "$d"
    fi
  done < "$NODE_HOSTSTATE"
  rm -f "$NODE_HOSTSTATE"
}

# node_restore_cgroup2 "CONTROLLERS": disables in the root's cgroup.subtree_control what
# was enabled since make up (by node_cgroup2_up, the kubelet, runc), our cgroups gone.
node_restore_cgroup2() {
  local before=" $1 " c now
  read -r -a now < /sys/fs/cgroup/cgroup.subtree_control || true
  for c in "${now[@]}"; do
    [[ "$before" == *" $c "* ]] && continue
    echo "-$c" 2>/dev/null > /sys/fs/cgroup/cgroup.subtree_control \
      || log "could not disable the $c controller in /sys/fs/cgroup/cgroup.subtree_control again (a cgroup of another uses it now)"
  done
}
