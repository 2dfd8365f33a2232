#!/usr/bin/env bash
# Checks the running test bed's node (make test runs it after the Rust tests):
#   1. the network rules: no packet from the node or a pod can leave the machine (routes,
#      the node's forward guard, no masquerade of pod traffic, the host's guard), shown
#      from the rules and route lookups, and by a connection the host guard must drop
#      (to an address on this machine); no packet is ever sent off the machine;
#   2. the three images are in the node's containerd;
#   3. pods run, placed by the scheduler: the aws CLI in localhost/aws-client:dev calls
#      GetId on the emulator through $IN_CLUSTER_AWS_ENDPOINT_URL; a pod reaches the API
#      server through the kubernetes Service with its ServiceAccount token; the
#      controller image runs.
# Prints "N passed, 0 failed" and exits 0 when all hold.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/node.sh"
[[ -f "$LOCAL/env" ]] || die "no test bed is running: make up"
# shellcheck disable=SC1091
source "$LOCAL/env"
if [[ "${CUC_NODE:-on}" == off ]]; then
  log "node-check skipped: the test bed has no node ($CUC_NODE_REASON)"
  exit 0
fi
passed=0
failed=0
ok() { passed=$((passed + 1)); log "ok: $*"; }
fail() { failed=$((failed + 1)); log "FAILED: $*"; }
check() { # WHAT CMD...
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}

# ------------------------------------------------------------------ 1. network rules
no_default_route() {
  [[ -z "$(in_node ip -4 route show default)" && -z "$(in_node ip -6 route show default)" ]]
}
# A route lookup (netlink, no packet sent) for addresses off this bed: the machine's own
# gateway, its DNS server and a documentation address must all be unreachable.
unroutable_from_node() {
  local a gw dns
  gw=$(ip -4 route show default | awk '{print $3; exit}')
  dns=$(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf)
  for a in ${gw:-} ${dns:-} 198.51.100.7 10.0.0.1 172.16.0.1 192.168.0.1; do
    if in_node ip -4 route get "$a" >/dev/null 2>&1; then log "the node can route to $a"; return 1; fi
  done
  ! in_node ip -6 route get 2001:db8::1 >/dev/null 2>&1
}
forward_guard() {
  local rules
  rules=$(in_node nft list chain inet cuc_guard forward) || return 1
  grep -q "policy drop;" <<<"$rules" \
    && [[ $(grep -c ' accept' <<<"$rules") == 2 ]] \
    && grep -q "ip saddr $POD_CIDR ip daddr { $POD_CIDR, $HOST_IP } accept" <<<"$rules" \
    && grep -q "ip saddr $HOST_IP ip daddr $POD_CIDR accept" <<<"$rules"
}
no_masquerade_of_pods() {
  grep -q '"ipMasq": false' "$NODE_DIR/cni/net.d/10-testbed.conflist" || return 1
  local nat
  nat=$(in_node iptables-save -t nat) || return 1
  # The one MASQUERADE rule is kube-proxy's, for packets it marked 0x4000 ...
  local masq
  masq=$(grep -E -- '-j (MASQUERADE|SNAT)' <<<"$nat" || true)
  [[ $(grep -c . <<<"$masq") == 1 && "$masq" == "-A KUBE-POSTROUTING "* ]] || { log "masquerade rules: $masq"; return 1; }
  # ... and it marks service traffic only when it does not come from a pod.
  local marks
  marks=$(grep -- '-j KUBE-MARK-MASQ' <<<"$nat" | grep -E -- '-A KUBE-SVC-' || true)
  [[ -z "$marks" ]] || ! grep -qv -- "! -s $POD_CIDR" <<<"$marks" || { log "pod traffic marked: $marks"; return 1; }
  # And the host has no rule at all for this bed's addresses or Services but its own guard table.
  ! { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -qE "($BED_NET|$SERVICE_NET)\."
}
host_guard() {
  local t
  t=$(nft list table inet "$NFT_TABLE") || return 1
  grep -q "iifname \"$HOST_VETH\" drop" <<<"$t" && grep -q "oifname \"$HOST_VETH\" drop" <<<"$t" \
    && [[ "$(cat /proc/sys/net/ipv4/ip_forward)" == "$(awk '$1 == "ip_forward" {print $2}' "$NODE_HOSTSTATE")" ]]
}
# A listener on the host's link address, on a port not in the guard's set: the host
# reaches it, the node must not (the packet stays on this machine either way).
guarded_port_dropped() {
  local port pid rc=0
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$HOST_IP',0)); print(s.getsockname()[1]); s.close()")
  python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$HOST_IP', $port)); s.listen(8); s.settimeout(15)
try:
    while True: s.accept()[0].close()
except OSError: pass" &
  pid=$!
  wait_until 5 "the listener" bash -c "exec 3<>/dev/tcp/$HOST_IP/$port" || rc=1
  if in_node timeout 3 bash -c "exec 3<>/dev/tcp/$HOST_IP/$port" 2>/dev/null; then
    log "the node reached $HOST_IP:$port"; rc=1
  fi
  # The allowed ports do answer from the node.
  in_node curl -sf --max-time 5 "$IN_CLUSTER_AWS_ENDPOINT_URL/_proxy/health" >/dev/null || { log "the node cannot reach the proxy"; rc=1; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return "$rc"
}
check "the node's namespace has no default route (v4, v6)" no_default_route
check "addresses off this bed are unroutable from the node (route lookups only)" unroutable_from_node
check "the node's forward chain drops all but pod<->pod and pod<->$HOST_IP" forward_guard
check "no masquerade of pod traffic (CNI ipMasq off, kube-proxy marks only non-pod sources)" no_masquerade_of_pods
check "the host forwards nothing to or from $HOST_VETH; ip_forward untouched" host_guard
# The host's own packets to the bed's addresses (the API server calling a webhook's
# Service, a test scraping a pod) go through the veth, and a guard drops any that would
# take another interface.
host_reaches_bed_by_veth_only() {
  local a t
  for a in "$SERVICE_NET.10" "$BED_NET.5"; do
    ip -4 route get "$a" | grep -q " dev $HOST_VETH " || { log "the host routes $a elsewhere: $(ip -4 route get "$a")"; return 1; }
  done
  t=$(nft list chain inet "$NFT_TABLE" output) || return 1
  grep -q "oifname != { \"lo\", \"$HOST_VETH\" } drop" <<<"$t" || { log "no output guard: $t"; return 1; }
}
check "the host reaches pods and Services only through $HOST_VETH (routes, and an output guard)" host_reaches_bed_by_veth_only
check "the host guard drops the node's packets to a port not allowed" guarded_port_dropped

# ------------------------------------------------------------------ 2. images
images=$(ctr_node images ls -q 2>/dev/null)
for img in "$PAUSE_IMAGE" localhost/aws-client:dev localhost/go-sts:dev localhost/cognito-unauth-controller:dev; do
  check "image $img is on the node" grep -qx "$img" <<<"$images"
done

# ------------------------------------------------------------------ 3. pods
ns="node-smoke-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
pod() { # NAME IMAGE, the rest of the container (command, env) on stdin, indented 4
  kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: main
    image: $2
    imagePullPolicy: Never
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
$(cat)
YAML
}
# succeeded NAME: waits (2 minutes at most) for the pod to succeed; its log on stdout.
succeeded() {
  if kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$1" --timeout=120s >/dev/null; then
    kubectl -n "$ns" logs "$1"
  else
    kubectl -n "$ns" get pod "$1" -o wide >&2 || true
    kubectl -n "$ns" logs "$1" >&2 || true
    kubectl -n "$ns" get events --field-selector "involvedObject.name=$1" >&2 || true
    return 1
  fi
}

# Pods get no default route: the aws CLI reaches the proxy on the host's link address.
pod get-id localhost/aws-client:dev <<YAML
    command: [sh, -c]
    args:
    - |
      if grep -q '^eth0[[:space:]]00000000' /proc/net/route; then echo "a default route"; exit 3; fi
      exec aws --endpoint-url "\$ENDPOINT" --no-sign-request --region us-east-1 \\
        cognito-identity get-id --identity-pool-id "\$POOL"
    env:
    - {name: ENDPOINT, value: "$IN_CLUSTER_AWS_ENDPOINT_URL"}
    - {name: POOL, value: "$DEMO_IDENTITY_POOL_ID"}
YAML
# In-cluster config as every client library does it: the kubernetes Service's address
# from the environment, the ServiceAccount's token and CA.
pod in-cluster localhost/aws-client:dev <<'YAML'
    command: [python3, -c]
    args:
    - |
      import json, os, ssl, urllib.request
      sa = "/var/run/secrets/kubernetes.io/serviceaccount"
      url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
          os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
      body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
      req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(), headers={
          "Authorization": "Bearer " + open(sa + "/token").read(), "Content-Type": "application/json"})
      ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
      review = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
      print(url, review["status"]["userInfo"]["username"])
YAML
pod controller-image localhost/cognito-unauth-controller:dev <<'YAML'
    args: [--version]
YAML

if out=$(succeeded get-id) && grep -q '"IdentityId": "us-east-1:' <<<"$out"; then
  ok "aws CLI in a pod: GetId on the emulator via $IN_CLUSTER_AWS_ENDPOINT_URL (no default route in the pod)"
else
  fail "aws CLI in a pod: GetId via $IN_CLUSTER_AWS_ENDPOINT_URL: $out"
fi
if out=$(succeeded in-cluster) && grep -q "^https://$KUBERNETES_SERVICE_IP:443/.* system:serviceaccount:$ns:default$" <<<"$out"; then
  ok "a pod reaches the API server through the kubernetes Service with its ServiceAccount token"
else
  fail "in-cluster API call: $out"
fi
if out=$(succeeded controller-image) && grep -q '^cognito-unauth-controller ' <<<"$out"; then
  ok "the controller image runs on the node: $out"
else
  fail "the controller image: $out"
fi
scheduled=$(kubectl -n "$ns" get pods -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)
check "the scheduler placed every pod on $NODE_NAME" test "$scheduled" == "$NODE_NAME"

echo "$passed passed, $failed failed"
(( failed == 0 ))
