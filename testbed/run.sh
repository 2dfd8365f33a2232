#!/usr/bin/env bash
# `make run`: the controller against the local test bed, on defaults.
# Brings the test bed up (building what it needs the first time), installs the CRD,
# applies an example CognitoUnauthCredential for the demo pool, and runs the controller
# in the foreground. Ctrl-C stops the controller; `make down` stops the test bed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need cargo "Install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version."
"$ROOT/testbed/up.sh"
# shellcheck disable=SC1091
source "$LOCAL/env"
log "building the controller"
cargo build --locked --quiet --bin cognito-unauth-controller
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/cognitounauthcredentials.cognito.kubecred.io --timeout=60s >/dev/null
sed "s/DEMO_IDENTITY_POOL_ID/$DEMO_IDENTITY_POOL_ID/" examples/demo.yaml | kubectl apply --server-side -f - >/dev/null
cat <<MSG

Test bed up; CognitoUnauthCredential 'demo' applied for pool $DEMO_IDENTITY_POOL_ID.
In another shell:
  source .local/env
  kubectl wait --for=condition=Ready cuc/demo --timeout=60s
  kubectl get cuc -o wide
  kubectl get secret demo-aws-credentials -o jsonpath='{.data.AWS_CREDENTIAL_EXPIRATION}' | base64 -d; echo
moto's credentials live 90 s, so the controller rotates them about every minute.
Ctrl-C stops the controller; 'make down' stops the test bed.

MSG
exec "${CARGO_TARGET_DIR:-target}/debug/cognito-unauth-controller" --log-level "${LOG_LEVEL:-info}"
