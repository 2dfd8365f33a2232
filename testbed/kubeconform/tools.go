//go:build tools

// Package tools pins kubeconform, which validates the chart's rendered manifests
// against the Kubernetes OpenAPI schemas (testbed/chart-check.sh).
package tools

import _ "github.com/yannh/kubeconform/cmd/kubeconform"
