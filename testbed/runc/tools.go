//go:build tools

// Package tools pins runc, which the test bed builds.
package tools

import (
	_ "github.com/opencontainers/runc"
)
