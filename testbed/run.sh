#!/usr/bin/env bash
# `make run`: bring the local test bed up and show how to use it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
"$ROOT/testbed/up.sh"
# shellcheck disable=SC1091
source "$LOCAL/env"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd/cognitounauthcredentials.cognito.kubecred.io --timeout=60s >/dev/null
cat <<MSG

The local control plane and the Cognito emulator are up.
  source .local/env
  kubectl get ns
  aws --no-sign-request cognito-identity get-id --identity-pool-id "\$DEMO_IDENTITY_POOL_ID"
Stop everything with: make down
MSG
