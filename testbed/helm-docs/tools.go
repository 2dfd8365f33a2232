//go:build tools

// Package tools pins helm-docs, which generates the chart's README from values.yaml
// (testbed/chart-check.sh checks it is fresh).
package tools

import _ "github.com/norwoodj/helm-docs/cmd/helm-docs"
