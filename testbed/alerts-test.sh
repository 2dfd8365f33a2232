#!/usr/bin/env bash
# `promtool test rules` on the chart's PrometheusRule as the chart renders it (helm
# template with prometheusRule.enabled, and serviceMonitor.enabled for the alerts on the
# controller's own scrape job), with the unit tests in
# charts/cognito-unauth-controller/tests/prometheusrule_test.yaml, or with the test files
# given as arguments (tests/alerts.rs writes one from series recorded in a real run).
# promtool is built once from the Go module proxy (testbed/promtool pins it) into the
# cache, as helm is.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
need go "Install Go 1.26 or newer (https://go.dev/doc/install); promtool is built from the Go module proxy."
ensure_helm
ensure_venv   # PyYAML, to take the rule groups out of the PrometheusRule
ensure_promtool
promtool_dir=$(promtool_dir)
chart="$ROOT/charts/cognito-unauth-controller"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$(helm_bin_dir)/helm" template cuc "$chart" --namespace cuc-system --set prometheusRule.enabled=true \
  --set serviceMonitor.enabled=true --show-only templates/extras.yaml > "$work/rendered.yaml"
"$VENV/bin/python" - "$work/rendered.yaml" "$work/rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
assert len(docs) == 1, f"expected one PrometheusRule, got {len(docs)}"
yaml.safe_dump({"groups": docs[0]["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
(( $# )) || set -- "$chart/tests/prometheusrule_test.yaml"
"$promtool_dir/promtool" check rules "$work/rules.yaml"
for t in "$@"; do
  # Beside rules.yaml, which each test file names.
  cp "$t" "$work/$(basename "$t")"
  "$promtool_dir/promtool" test rules "$work/$(basename "$t")"
done
