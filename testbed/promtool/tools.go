//go:build tools

// Package tools pins the promtool CLI that the test bed builds.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
