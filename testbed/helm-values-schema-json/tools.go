//go:build tools

// Package tools pins helm-values-schema-json, which generates the chart's
// values.schema.json from the `# @schema` annotations in values.yaml
// (testbed/chart-check.sh checks it is fresh).
package tools

import _ "github.com/losisin/helm-values-schema-json/v2"
