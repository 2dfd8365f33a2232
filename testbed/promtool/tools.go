//go:build tools

// Package tools pins the promtool CLI that the test bed builds. build.tags has
// remove_all_sd: `promtool test rules` needs none of Prometheus's service-discovery
// plugins, and without them the cloud providers' SDKs are not compiled on a new machine.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
