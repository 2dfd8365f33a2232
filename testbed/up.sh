#!/usr/bin/env bash
# Starts the local test bed: etcd, kube-apiserver (Node+RBAC authorization,
# NodeRestriction, client-certificate admin), kube-controller-manager (garbage collector,
# namespace, service-account, root CA publisher, deployment, replicaset, endpointslice,
# node lifecycle and ClusterRole aggregation controllers), kube-scheduler, moto and the programmable Cognito proxy (which also
# answers STS GetCallerIdentity), and one node (testbed/node.sh: containerd, runc, CNI
# bridge, kubelet, kube-proxy in a network namespace of its own) holding the images of
# testbed/images.sh. The control plane listens on loopback and on this bed's host-side
# link address, which only the node reaches. Idempotent: a healthy running test bed is
# reused. Writes .local/kubeconfig and .local/env.
#
# Without the node (CUC_NODE=off, or a machine that cannot run it: not root, no usable
# cgroups; testbed/node.sh's node_select) the rest comes up, on loopback only, one line
# says why, and .local/env says CUC_NODE=off with CUC_NODE_REASON. A machine that can run
# the node and was not told CUC_NODE=off gets one or a failure, never a bed without it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/node.sh"
source "$ROOT/testbed/images.sh"

REGION="${AWS_REGION:-us-east-1}"

# The running bed's node mode and reason (.local/env); "on" for a bed from before them.
running_node=""
running_reason=""
healthy() {
  [[ -f "$LOCAL/env" ]] || return 1
  # shellcheck disable=SC1091
  { read -r running_node; read -r running_reason; } < <(source "$LOCAL/env" && printf '%s\n%s\n' "${CUC_NODE:-on}" "${CUC_NODE_REASON:-}")
  # Reused as it is, unless CUC_NODE asks for the other kind.
  [[ -z "${CUC_NODE:-}" || "$CUC_NODE" == "$running_node" ]] || return 1
  local n names=(etcd kube-apiserver kube-controller-manager kube-scheduler moto proxy)
  [[ "$running_node" == off ]] || names+=(containerd kubelet kube-proxy)
  for n in "${names[@]}"; do
    alive "$n" || return 1
  done
  # Every process is there: a busy machine (CI's two cores under eight tests) may answer
  # slowly, so the probes get 30 s before a running bed is called broken and replaced.
  local i
  for i in $(seq 10); do
    answers && return 0
    (( i < 10 )) && sleep 3
  done
  return 1
}
answers() {
  # shellcheck disable=SC1091
  ( source "$LOCAL/env" && curl -sf --max-time 5 "$AWS_ENDPOINT_URL_COGNITO_IDENTITY/_proxy/health" >/dev/null \
    && curl -sf --max-time 5 --cacert "$RUN/pki/ca.crt" --cert "$RUN/pki/admin.crt" --key "$RUN/pki/admin.key" \
         "$(cat "$RUN/apiserver.url")/readyz" >/dev/null )
}

bed_lock

if [[ "${1:-}" == "--check-only" ]]; then
  healthy
  exit $?
fi
if healthy; then
  log "test bed already running; reusing it (.local/env)${running_reason:+; the node is off: $running_reason}"
  exit 0
fi

t_up=$(date +%s%N)
check_prereqs
node_prereqs
[[ "$NODE_MODE" == on ]] || log "the node is off: $NODE_OFF_REASON; the rest of the test bed comes up, with no pods"
mkdir -p "$RUN"
"$ROOT/testbed/down.sh" --quiet || true
mkdir -p "$RUN/pki"

# The node's images build (the first time, or when their inputs changed) beside the Go
# builds and the control plane's start.
if [[ "$NODE_MODE" == on ]]; then
  ( ensure_node_images > "$RUN/images.list" ) 2> "$RUN/images.log" &
  images_job=$!
fi
ensure_venv &
venv_job=$!
ensure_cluster_binaries
[[ "$NODE_MODE" == off ]] || ensure_runtime_binaries
wait "$venv_job"

K8S_BIN="$(k8s_bin_dir)"
ETCD_BIN="$(etcd_bin_dir)"
t0=$(date +%s%N)
# With the node, the API server listens on the host's link address and the proxy on it
# too, besides loopback; without, both on loopback only. (The API server still advertises
# the link address: the kubernetes Service's endpoint may not be a loopback one.)
if [[ "$NODE_MODE" == on ]]; then
  node_network_up
  bind_ip=$HOST_IP
  also_listen=(--also-listen "$HOST_IP")
else
  node_network_off
  bind_ip=127.0.0.1
  also_listen=()
fi

# ------------------------------------------------------------------ PKI
pki="$RUN/pki"
gen_cert() { # NAME SUBJECT [SAN]
  local name=$1 subj=$2 san=${3:-}
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  local ext="$pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san";
    else echo "extendedKeyUsage=clientAuth"; fi
  } > "$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
}
openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -subj "/CN=testbed-ca" \
  -days 30 -sha256 -out "$pki/ca.crt" 2>/dev/null
gen_cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:$HOST_IP,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
gen_cert admin "/O=system:masters/CN=testbed-admin"
gen_cert scheduler "/CN=system:kube-scheduler"
gen_cert node "/O=system:nodes/CN=system:node:$NODE_NAME"
gen_cert kube-proxy "/CN=system:kube-proxy"
gen_cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
# The API server's identity towards the kubelet (logs, exec, port-forward).
gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
# The test bed's controller manager is infrastructure, not under test: it gets the admin
# group so its controllers need no per-controller accounts.
gen_cert kcm "/O=system:masters/CN=system:kube-controller-manager"
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# ---------------------------------------------------------------- etcd
etcd_port=$(free_port); etcd_peer=$(free_port)
start etcd "$ETCD_BIN/etcd" --data-dir "$RUN/etcd-data" \
  --listen-client-url "http://127.0.0.1:$etcd_port" --listen-peer-url "http://127.0.0.1:$etcd_peer"

# ---------------------------------------------------- moto + Cognito proxy
moto_port=$(free_port)
start moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_port"
rm -f "$RUN/proxy.port"
start proxy "$VENV/bin/python" "$ROOT/testbed/cognito/proxy.py" \
  --upstream "http://127.0.0.1:$moto_port" --listen 127.0.0.1:0 "${also_listen[@]}" --port-file "$RUN/proxy.port"

wait_until 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health" \
  || { tail -20 "$RUN/etcd.log" >&2; die "etcd did not start"; }

# ------------------------------------------------------------ kube-apiserver
api_port=$(free_port)
[[ "$NODE_MODE" == off ]] || node_allow_port "$api_port"
api_url="https://$bind_ip:$api_port"
echo "$api_url" > "$RUN/apiserver.url"
apiserver_args=(
  --etcd-servers "http://127.0.0.1:$etcd_port"
  --bind-address "$bind_ip" --advertise-address "$HOST_IP" --secure-port "$api_port"
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key"
  --client-ca-file "$pki/ca.crt"
  --authorization-mode "Node,RBAC"
  --enable-admission-plugins NodeRestriction
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
  --kubelet-client-key "$pki/apiserver-kubelet-client.key"
  --kubelet-certificate-authority "$pki/ca.crt"
  --kubelet-preferred-address-types InternalIP
  --service-account-issuer https://kubernetes.default.svc
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key"
  --service-cluster-ip-range "$SERVICE_CIDR"
  --audit-log-path "$RUN/audit.log" --audit-policy-file "$ROOT/testbed/audit-policy.yaml"
  --audit-log-maxsize 200 --audit-log-maxbackup 1
  --profiling=false
  --v=0
)
printf '%s\n' "$K8S_BIN/kube-apiserver" "${apiserver_args[@]}" > "$RUN/kube-apiserver.cmd"
start kube-apiserver "$K8S_BIN/kube-apiserver" "${apiserver_args[@]}"

write_kubeconfig "$LOCAL/kubeconfig" "$api_url" "$pki/ca.crt" testbed-admin "$pki/admin.crt" "$pki/admin.key"
write_kubeconfig "$RUN/kcm.kubeconfig" "$api_url" "$pki/ca.crt" kube-controller-manager "$pki/kcm.crt" "$pki/kcm.key"
write_kubeconfig "$RUN/scheduler.kubeconfig" "$api_url" "$pki/ca.crt" kube-scheduler "$pki/scheduler.crt" "$pki/scheduler.key"

readyz() { curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$api_url/readyz"; }
wait_until 60 kube-apiserver readyz || { tail -30 "$RUN/kube-apiserver.log" >&2; die "kube-apiserver did not become ready"; }
api_ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

# ---------------------------------------------------- kube-controller-manager
kcm_port=$(free_port)
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$RUN/kcm.kubeconfig" \
  --authentication-kubeconfig "$RUN/kcm.kubeconfig" --authorization-kubeconfig "$RUN/kcm.kubeconfig" \
  --controllers garbagecollector,namespace,serviceaccount,root-ca-cert-publisher,deployment,replicaset,endpointslice,nodelifecycle,clusterrole-aggregation \
  --root-ca-file "$pki/ca.crt" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --leader-elect=false --v=0
kcm_healthz() { curl -sfk --max-time 2 "https://127.0.0.1:$kcm_port/healthz"; }
sched_port=$(free_port)
start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$RUN/scheduler.kubeconfig" \
  --authentication-kubeconfig "$RUN/scheduler.kubeconfig" --authorization-kubeconfig "$RUN/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --v=0
sched_healthz() { curl -sfk --max-time 2 "https://127.0.0.1:$sched_port/healthz"; }
wait_until 60 kube-controller-manager kcm_healthz || { tail -30 "$RUN/kube-controller-manager.log" >&2; die "kube-controller-manager did not start"; }
wait_until 60 kube-scheduler sched_healthz || { tail -30 "$RUN/kube-scheduler.log" >&2; die "kube-scheduler did not start"; }

# ------------------------------------------------------------- demo pool
wait_until 30 "Cognito proxy" test -s "$RUN/proxy.port"
proxy_port=$(cat "$RUN/proxy.port")
[[ "$NODE_MODE" == off ]] || node_allow_port "$proxy_port"
proxy_url="http://127.0.0.1:$proxy_port"
wait_until 30 moto curl -sf "http://127.0.0.1:$moto_port/moto-api/"
wait_until 30 "Cognito proxy" curl -sf "$proxy_url/_proxy/health"
demo_pool=$(curl -sf -X POST "$proxy_url/_proxy/pools" -d "{\"name\":\"demo\",\"region\":\"$REGION\",\"guest\":true}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["IdentityPoolId"])') || die "could not create the demo identity pool"

# ---------------------------------------------------------------------- node
if [[ "$NODE_MODE" == on ]]; then
  if ! wait "$images_job"; then
    tail -40 "$RUN/images.log" >&2
    die "building the node's images failed (whole log: $RUN/images.log)"
  fi
  mapfile -t image_archives < "$RUN/images.list"
  t_node=$(date +%s%N)
  node_up "$pki" "$api_url" "${image_archives[@]}"
  node_wait_ready
  node_ms=$(( ($(date +%s%N) - t_node) / 1000000 ))
  node_env="export CUC_NODE=\"on\"
export NODE_NAME=\"$NODE_NAME\"
# The proxy as pods on the node reach it (Cognito Identity and STS, like the one above).
export IN_CLUSTER_AWS_ENDPOINT_URL=\"http://$HOST_IP:$proxy_port\""
  node_said="node Ready ${node_ms} ms after its start"
else
  # The test runner skips what needs a node and says why.
  node_env="export CUC_NODE=\"off\"
export CUC_NODE_REASON=\"${NODE_OFF_REASON//[\"\$\`\\]/}\""
  node_said="no node"
fi

cat > "$LOCAL/env" <<ENV
# Written by testbed/up.sh: source it to talk to the local test bed.
export KUBECONFIG="$LOCAL/kubeconfig"
export AWS_ENDPOINT_URL_COGNITO_IDENTITY="$proxy_url"
export AWS_ENDPOINT_URL_STS="$proxy_url"
export COGNITO_EMULATOR_URL="http://127.0.0.1:$moto_port"
export AWS_REGION="$REGION"
export AWS_DEFAULT_REGION="$REGION"
export DEMO_IDENTITY_POOL_ID="$demo_pool"
$node_env
export TESTBED_BIN="$K8S_BIN"
export TESTBED_VENV="$VENV"
export PATH="$K8S_BIN:$VENV/bin:\$PATH"
ENV
total_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$api_ready_ms $total_ms" > "$RUN/startup-ms"
log "API server ready in ${api_ready_ms} ms; ${node_said}; whole test bed in ${total_ms} ms"
log "make up took $(( ($(date +%s%N) - t_up) / 1000000000 ))s in all (builds included)"
log "source .local/env   # KUBECONFIG, AWS_ENDPOINT_URL_COGNITO_IDENTITY, DEMO_IDENTITY_POOL_ID=$demo_pool"
