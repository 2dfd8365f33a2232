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
#
# A test bed without a node (CUC_NODE=off in .local/env: testbed/up.sh) has no pod: the
# run follows the Secret instead, as the controller rewrites it, and calls STS (the aws CLI
# here, through the proxy) with what it holds, through credential_process as the pod
# does; RUN_UNTIL_ROTATIONS counts the rotations seen there.
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
# CUC_CONTROLLER_BIN: make test's check runs the binary its test build made (a build of
# the binary alone unifies the dependencies' features differently, and compiled dozens of
# crates again: 8 minutes on a 2-core machine).
bin=${CUC_CONTROLLER_BIN:-}
if [[ -z "$bin" ]]; then
  cargo build --locked --quiet --bin cognito-unauth-controller
  bin="${CARGO_TARGET_DIR:-target}/debug/cognito-unauth-controller"
fi
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/cognitounauthcredentials.cognito.kubecred.io --timeout=60s >/dev/null
sed "s/DEMO_IDENTITY_POOL_ID/$DEMO_IDENTITY_POOL_ID/" examples/demo.yaml | kubectl apply --server-side -f - >/dev/null
node=${CUC_NODE:-on}
if [[ "$node" == on ]]; then
  sed "s|IN_CLUSTER_AWS_ENDPOINT_URL|$IN_CLUSTER_AWS_ENDPOINT_URL|" testbed/demo-reader.yaml \
    | kubectl apply --server-side -f - >/dev/null
fi

controller=""
work=""
stop() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -z "$work" ]] || rm -rf "$work"
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
"$bin" --log-level "${LOG_LEVEL:-info}" \
  > >(sed -u 's/^/[controller] /') 2>&1 &
controller=$!
kubectl wait --for=condition=Ready cuc/demo --timeout=120s >/dev/null || die "cuc/demo did not become Ready"
log "cuc/demo is Ready: $(kubectl get cuc demo -o jsonpath='Secret {.status.secretName}, credentials valid until {.status.expiration}')"

# A rotation every two thirds of the lifetime, the kubelet's delay, and room to spare.
deadline=$(( (${until_rotations:-0} + 1) * DEMO_LIFETIME_SECONDS ))
in_another_shell="  In another shell:  source .local/env
    kubectl get cuc demo -o wide
    kubectl describe cuc demo
    kubectl get secret demo-aws-credentials -o jsonpath='{.metadata.annotations}'
  Ctrl-C stops the controller; 'make down' stops the test bed."

# No node, so no pod: follows the Secret, as the controller rewrites it, and calls STS
# with each version of it, through credential_process as the pod does. Checked, it returns
# after RUN_UNTIL_ROTATIONS rotations that worked (or fails); else it runs until Ctrl-C.
follow_secret() {
  # The Secret's credential-process.json gives both the Expiration and the call's
  # credentials, from one version of the Secret. Credential material goes to a file only
  # this user reads, never to the output.
  work=$(mktemp -d)
  printf '[default]\nregion = %s\ncredential_process = cat %s\n' "$AWS_REGION" "$work/credential-process.json" > "$work/config"
  local seen="" rotations=0 result="" exp arn t_end=$(( $(date +%s) + deadline ))
  while :; do
    kubectl get secret demo-aws-credentials -o jsonpath='{.data.credential-process\.json}' | base64 -d > "$work/new.json" \
      && exp=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Expiration"])' "$work/new.json" 2>/dev/null) \
      || exp=""
    if [[ -n "$exp" && "$exp" != "$seen" ]]; then
      mv "$work/new.json" "$work/credential-process.json"
      if [[ -z "$seen" ]]; then
        echo "[secret] $(date -u +%H:%M:%S) credentials in the Secret, valid until $exp"
      else
        rotations=$((rotations + 1))
        echo "[secret] $(date -u +%H:%M:%S) rotation $rotations: the controller wrote new credentials, valid until $exp"
      fi
      seen=$exp
      if arn=$(env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
          AWS_CONFIG_FILE="$work/config" AWS_SHARED_CREDENTIALS_FILE=/dev/null \
          aws sts get-caller-identity --query Arn --output text 2>&1); then
        echo "[secret] $(date -u +%H:%M:%S)   aws sts get-caller-identity: $arn"
      else
        echo "[secret] $(date -u +%H:%M:%S)   aws sts get-caller-identity FAILED: $arn"
        result=failed
      fi
    fi
    if [[ -n "$until_rotations" ]]; then
      [[ "$result" != failed ]] || break
      (( rotations < until_rotations )) || { result="done"; break; }
      (( $(date +%s) <= t_end )) || break
    fi
    kill -0 "$controller" 2>/dev/null || die "the controller exited (its lines above)"
    sleep 5
  done
  [[ "$result" == "done" ]] || die "make run: the Secret did not get $until_rotations rotation(s) that worked within ${deadline}s (${result:-timeout})"
  log "make run: the Secret got $until_rotations rotation(s) (no node, so no pod: ${CUC_NODE_REASON}); every call with its credentials worked"
}

if [[ "$node" == off ]]; then
  cat <<MSG

  The test bed is up without a node ($CUC_NODE_REASON), so there is no pod: an API server
  and the Cognito emulator, on this machine. The controller runs here in the foreground (its
  lines start with [controller]); CognitoUnauthCredential 'demo' (pool $DEMO_IDENTITY_POOL_ID)
  is Ready. In place of the pod, the lines starting with [secret] follow its Secret
  demo-aws-credentials, and at each new version call STS with it through credential_process,
  as the pod would.
  The demo pool's credentials live ${DEMO_LIFETIME_SECONDS} s (Cognito's: 1 hour), so the controller
  rotates them every ~$(( DEMO_LIFETIME_SECONDS * 2 / 3 )) s.

$in_another_shell

MSG
  follow_secret
  exit 0
fi

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

$in_another_shell

MSG

if [[ -z "$until_rotations" ]]; then
  kubectl logs -f deployment/demo-reader | sed -u 's/^/[pod] /'
  wait "$controller"
  exit
fi
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
