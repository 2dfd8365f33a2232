#!/usr/bin/env bash
# `make run`: the controller against the local test bed, on defaults, and a pod using what
# it writes. Brings the test bed up (control plane, node, Cognito emulator; building what
# it needs the first time), installs the CRD, applies examples/demo.yaml (a
# CognitoUnauthCredential for the demo pool) and testbed/demo-reader.yaml (a pod that reads
# the Secret through credential_process and calls STS with it), runs the controller, and
# follows both: the controller's log and the pod's, which shows each rotation arriving.
# Ctrl-C stops the controller; `make down` stops the test bed.
#
# RUN_UNTIL_ROTATIONS=N (make test uses it): exit 0 once the pod has picked up N
# rotations with every call working, 1 on a failed call or after a timeout; the demo
# resources are deleted on the way out.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need cargo "Install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version."
"$ROOT/testbed/up.sh"
# shellcheck disable=SC1091
source "$LOCAL/env"
until_rotations=${RUN_UNTIL_ROTATIONS:-}
# Like Cognito, a fresh key pair per call; a 5-minute lifetime (Cognito: 1 hour; moto: 90 s)
# so that a rotation comes every ~200 s (two thirds of it) while the previous credentials
# stay valid longer than the kubelet takes to update a mounted Secret (docs/usage.md). Set
# here, not by make up: other tools (make bench) reset the proxy's rules.
proxy="$AWS_ENDPOINT_URL_COGNITO_IDENTITY/_proxy"
# shellcheck disable=SC2015  # die when either call fails
curl -sf -X DELETE "$proxy/rules?pool=$DEMO_IDENTITY_POOL_ID" >/dev/null \
  && curl -sf -X POST "$proxy/rules" \
    -d "{\"pool\":\"$DEMO_IDENTITY_POOL_ID\",\"unique_credentials\":true,\"lifetime_seconds\":$DEMO_LIFETIME_SECONDS}" >/dev/null \
  || die "could not set the demo pool's credential lifetime"
log "building the controller"
cargo build --locked --quiet --bin cognito-unauth-controller
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/cognitounauthcredentials.cognito.kubecred.io --timeout=60s >/dev/null
sed "s/DEMO_IDENTITY_POOL_ID/$DEMO_IDENTITY_POOL_ID/" examples/demo.yaml | kubectl apply --server-side -f - >/dev/null
sed "s|IN_CLUSTER_AWS_ENDPOINT_URL|$IN_CLUSTER_AWS_ENDPOINT_URL|" testbed/demo-reader.yaml \
  | kubectl apply --server-side -f - >/dev/null

controller=""
stop() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$controller" ]] && kill -0 "$controller" 2>/dev/null; then
    kill -TERM "$controller" 2>/dev/null
    timeout 30 tail --pid="$controller" -f /dev/null || kill -KILL "$controller"
  fi
  if [[ -n "$until_rotations" ]]; then
    kubectl -n default delete deployment/demo-reader cuc/demo --ignore-not-found --wait --timeout=60s >/dev/null || rc=1
  fi
  exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Checked (make test), it watches only the demo's namespace: other tests may be running
# their own controllers on theirs.
if [[ -n "$until_rotations" ]]; then export WATCH_NAMESPACES=default; fi
"${CARGO_TARGET_DIR:-target}/debug/cognito-unauth-controller" --log-level "${LOG_LEVEL:-info}" \
  > >(sed -u 's/^/[controller] /') 2>&1 &
controller=$!
kubectl wait --for=condition=Ready cuc/demo --timeout=120s >/dev/null || die "cuc/demo did not become Ready"
kubectl rollout status deployment/demo-reader --timeout=180s >/dev/null || die "the demo-reader pod did not start"
cat <<MSG

  The test bed is up: an API server, a node ($NODE_NAME) and the Cognito emulator, all on
  this machine. The controller runs here in the foreground (its lines start with [controller]);
  CognitoUnauthCredential 'demo' (pool $DEMO_IDENTITY_POOL_ID) is Ready, and the pod
  demo-reader (lines starting with [pod]) reads its Secret demo-aws-credentials as a volume
  through credential_process and calls STS with it every 30 s.
  The demo pool's credentials live ${DEMO_LIFETIME_SECONDS} s (Cognito's: 1 hour), so the controller
  rotates them every ~$(( DEMO_LIFETIME_SECONDS * 2 / 3 )) s; the kubelet then updates the pod's files
  within a minute or two, and the pod's next call uses the new credentials, no restart.

  In another shell:  source .local/env
    kubectl get cuc demo -o wide
    kubectl describe cuc demo
    kubectl get secret demo-aws-credentials -o jsonpath='{.metadata.annotations}'
  Ctrl-C stops the controller; 'make down' stops the test bed.

MSG

if [[ -z "$until_rotations" ]]; then
  kubectl logs -f deployment/demo-reader | sed -u 's/^/[pod] /'
  wait "$controller"
  exit
fi
# A rotation every two thirds of the lifetime, the kubelet's delay, and room to spare.
deadline=$(( (until_rotations + 1) * DEMO_LIFETIME_SECONDS ))
exec {logs}< <(timeout "$deadline" kubectl logs -f deployment/demo-reader)
logs_pid=$!
result=""
while IFS= read -r -u "$logs" line; do
  echo "[pod] $line"
  case "$line" in
    *FAILED*) result=failed; break ;;
    *"rotation $until_rotations picked up"*) result="done"; break ;;
  esac
done
kill "$logs_pid" 2>/dev/null || true
[[ "$result" == "done" ]] || die "make run: the pod did not pick up $until_rotations rotation(s) with every call working within ${deadline}s (${result:-timeout})"
log "make run: the pod picked up $until_rotations rotation(s); every call it made worked"
