#!/usr/bin/env bash
# `make chart-check`: the chart's static checks; no cluster, nothing started.
#
#   - the chart's copy of the CRD (files/crds/) is crds/'s, byte for byte;
#   - `helm lint --strict` of every values combination in tests/cases/ (and the
#     Prometheus Operator objects), at the Kubernetes version the test bed runs;
#   - `helm template` of each case against its golden file in tests/golden/
#     (UPDATE_GOLDEN=1 rewrites them: review the diff, then commit);
#   - kubeconform -strict on each rendering, with schemas made here from the Kubernetes
#     OpenAPI document and from crds/ (so CognitoUnauthCredential objects are checked);
#     ServiceMonitor and PrometheusRule are skipped (their CRDs are not ours);
#   - the combinations the chart must refuse are refused, with a message that says why;
#   - NOTES.txt: -n on every kubectl command, a warning while the image is the placeholder;
#   - README.md is what helm-docs makes of values.yaml, and documents every value;
#   - values.schema.json is what helm-values-schema-json makes of values.yaml's `# @schema`
#     annotations (lib.sh's chart_values_schema);
#   - a packaged chart (helm package, untarred) renders the CRD, and carries no tests/;
#   - a chart copied without its CRD file fails to render (unless crds.install=false).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CHART=charts/cognito-unauth-controller
CASES=$CHART/tests/cases
GOLDEN=$CHART/tests/golden
KUBE_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' testbed/k8s/go.mod)
KUBE_VERSION=${KUBE_VERSION#v}
RELEASE=cuc
NAMESPACE=cognito-unauth-controller

need go "Install Go 1.26 or newer (https://go.dev/doc/install); helm, kubeconform, helm-docs and helm-values-schema-json are built from the Go module proxy."
need python3 "Install Python 3: apt-get install -y python3"
python3 -c 'import yaml' 2>/dev/null || ensure_debs python3-yaml
ensure_helm
ensure_chart_tools
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
helm() {
  HELM_CACHE_HOME="$tmp/helm/cache" HELM_CONFIG_HOME="$tmp/helm/config" HELM_DATA_HOME="$tmp/helm/data" \
    "$(helm_bin_dir)/helm" "$@"
}
failures=0
fail() { log "FAIL: $*"; failures=$((failures + 1)); }
ok() { log "ok: $*"; }

# --------------------------------------------------------------- the CRD copy
if cmp -s crds/cognitounauthcredentials.yaml "$CHART/files/crds/cognitounauthcredentials.yaml"; then
  ok "the chart's CRD is crds/'s"
else
  fail "$CHART/files/crds/cognitounauthcredentials.yaml differs from crds/: run 'make crds' and commit"
fi

# ------------------------------------------------------ kubeconform's schemas
# The OpenAPI document of the Kubernetes version the test bed builds (its Go module,
# fetched from the proxy like the test bed's own build).
swagger=$(cd testbed/k8s && go mod download -json k8s.io/kubernetes | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/api/openapi-spec/swagger.json
[[ -f "$swagger" ]] || die "no OpenAPI document at $swagger"
schemas="$tmp/schemas"
python3 testbed/k8s-json-schema.py "$swagger" "$schemas/v$KUBE_VERSION-standalone-strict" crds/cognitounauthcredentials.yaml
conform() {
  "$(kubeconform_bin_dir)/kubeconform" -strict -summary -kubernetes-version "$KUBE_VERSION" \
    -schema-location "$schemas" -skip ServiceMonitor,PrometheusRule "$1"
}

# --------------------------------------------- each case: lint, golden, kubeconform
mkdir -p "$GOLDEN"
for values in "$CASES"/*.yaml; do
  name=$(basename "$values" .yaml)
  if ! out=$(helm lint --strict --kube-version "$KUBE_VERSION" "$CHART" -f "$values" 2>&1); then
    fail "helm lint --strict ($name):"$'\n'"$out"
    continue
  fi
  rendered="$tmp/$name.yaml"
  if ! helm template "$RELEASE" "$CHART" -n "$NAMESPACE" --kube-version "$KUBE_VERSION" -f "$values" > "$rendered"; then
    fail "helm template ($name)"
    continue
  fi
  if [[ "${UPDATE_GOLDEN:-0}" == 1 ]]; then
    cp "$rendered" "$GOLDEN/$name.yaml"
    ok "$name: golden file written"
  elif ! diff -u "$GOLDEN/$name.yaml" "$rendered"; then
    fail "$name: the rendering differs from $GOLDEN/$name.yaml (above). If the change is meant: UPDATE_GOLDEN=1 make chart-check, and commit the golden file"
  fi
  if out=$(conform "$rendered" 2>&1); then
    ok "$name: lint, golden, kubeconform: ${out##*$'\n'}"
  else
    fail "kubeconform ($name):"$'\n'"$out"
  fi
done
for golden in "$GOLDEN"/*.yaml; do
  [[ -f "$CASES/$(basename "$golden")" ]] || fail "$golden has no values file in $CASES: remove it"
done

# The Prometheus Operator objects: linted and rendered (their kinds are skipped by
# kubeconform), and the Grafana dashboard's ConfigMap (checked).
monitoring=(--set serviceMonitor.enabled=true --set prometheusRule.enabled=true --set grafanaDashboard.enabled=true)
if out=$(helm lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${monitoring[@]}" 2>&1) \
  && helm template "$RELEASE" "$CHART" -n "$NAMESPACE" "${monitoring[@]}" > "$tmp/monitoring.yaml" \
  && out=$(conform "$tmp/monitoring.yaml" 2>&1); then
  ok "monitoring: lint, kubeconform: ${out##*$'\n'}"
else
  fail "monitoring:"$'\n'"$out"
fi

# ------------------------------------------------------ what the chart refuses
# refused WHAT MESSAGE ARGS...: `helm template ARGS` fails, and says MESSAGE.
refused() {
  local what=$1 message=$2 out; shift 2
  if out=$(helm template "$RELEASE" "$@" 2>&1); then
    fail "$what was rendered; it must be refused"
  elif [[ "$out" != *"$message"* ]]; then
    fail "$what was refused without saying '$message':"$'\n'"$out"
  else
    ok "$what is refused: ${out%%$'\n'*}"
  fi
}
refused "a PodDisruptionBudget with one replica" "would block every node drain" \
  "$CHART" --set podDisruptionBudget.enabled=true
refused "minAvailable 100% of two replicas" "would block every node drain" \
  "$CHART" --set podDisruptionBudget.enabled=true --set replicaCount=2 --set podDisruptionBudget.minAvailable=100%
refused "an unknown value" "additional properties" "$CHART" --set imageTag=1
refused "a malformed digest" "/image/digest" "$CHART" --set image.digest=latest
refused "excludeNamespaces beside watchNamespaces" "set one" \
  "$CHART" --set 'watchNamespaces={a}' --set 'excludeNamespaces={b}'

# ---------------------------------------------------------------- NOTES.txt
# helm template does not render NOTES.txt (helm install --dry-run needs a cluster): a
# copy of the chart renders it as a ConfigMap's data.
mkdir -p "$tmp/notes"
cp -r "$CHART" "$tmp/notes/chart"
{ printf '{{- define "cuc.notesCheck" -}}\n'; cat "$CHART/templates/NOTES.txt"; printf '\n{{- end -}}\n'; } \
  > "$tmp/notes/chart/templates/_notes.tpl"
rm "$tmp/notes/chart/templates/NOTES.txt"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n{{ include "cuc.notesCheck" . | indent 4 }}\n' \
  > "$tmp/notes/chart/templates/notes.yaml"
notes() {
  helm template "$RELEASE" "$tmp/notes/chart" -n "$NAMESPACE" --show-only templates/notes.yaml "$@" \
    | python3 -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["notes"])'
}
before=$failures
for args in "" "--set image.repository=registry.example.com/cuc --set watchNamespaces={team-a}"; do
  # shellcheck disable=SC2086
  text=$(notes $args)
  without_n=$(grep -E '^\s*kubectl ' <<<"$text" | grep -v -- ' -n ' || true)
  [[ -z "$without_n" ]] || fail "NOTES.txt ($args): kubectl without -n:"$'\n'"$without_n"
  if [[ -z "$args" ]]; then
    grep -q "WARNING: image.repository is still the chart's placeholder" <<<"$text" \
      || fail "NOTES.txt does not warn about the placeholder image"
  else
    ! grep -q "WARNING" <<<"$text" || fail "NOTES.txt warns with a real image ($args)"
    grep -q "kubectl -n team-a apply" <<<"$text" || fail "NOTES.txt: the example is not in the watched namespace"
  fi
done
(( failures > before )) || ok "NOTES.txt: -n on every kubectl command, the placeholder image warned about"

# -------------------------------------------------------------- the README
helm_docs() { (cd "$CHART" && "$(helm_docs_bin_dir)/helm-docs" --sort-values-order file --log-level warning "$@"); }
if helm_docs --dry-run | diff -u "$CHART/README.md" -; then
  ok "README.md is fresh"
else
  fail "$CHART/README.md is stale (diff above): run 'make chart-docs' and commit"
fi
undocumented=$(grep -E '^\| [^ ]+ \| [a-z]+ \| .* \| *\|$' "$CHART/README.md" | cut -d'|' -f2 || true)
if [[ -n "$undocumented" ]]; then
  fail "values without a '# --' comment in values.yaml:"$'\n'"$undocumented"
else
  ok "every value is documented"
fi

# -------------------------------------------------------------- the schema
if ! chart_values_schema "$tmp/values.schema.json" 2>"$tmp/values-schema.log"; then
  fail "helm-values-schema-json could not make a schema of $CHART/values.yaml:"$'\n'"$(cat "$tmp/values-schema.log")"
elif diff -u "$CHART/values.schema.json" "$tmp/values.schema.json"; then
  ok "values.schema.json is fresh"
else
  fail "$CHART/values.schema.json is stale (diff above): run 'make chart-docs' and commit"
fi

# ------------------------------------------------------------------ packaging
if helm package "$CHART" -d "$tmp/package" >/dev/null; then
  mkdir -p "$tmp/unpacked"
  tar --warning=no-timestamp -xzf "$tmp"/package/*.tgz -C "$tmp/unpacked"
  packaged="$tmp/unpacked/$(basename "$CHART")"
  if helm template "$RELEASE" "$packaged" | grep -q '^kind: CustomResourceDefinition$'; then
    ok "the packaged chart renders the CRD"
  else
    fail "the packaged chart renders no CRD"
  fi
  [[ ! -e "$packaged/tests" ]] || fail "the packaged chart carries tests/ (.helmignore)"
else
  fail "helm package"
fi
cp -r "$CHART" "$tmp/copy"
rm -rf "$tmp/copy/files/crds"
refused "a chart copy without its CRD file" "is missing from the chart" "$tmp/copy"
if helm template "$RELEASE" "$tmp/copy" --set crds.install=false >/dev/null; then
  ok "without its CRD file, crds.install=false still renders"
else
  fail "without its CRD file, crds.install=false does not render"
fi

if (( failures )); then
  die "the chart: $failures check(s) failed"
fi
log "the chart: every check passed"
