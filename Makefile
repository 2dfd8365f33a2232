# The two commands that matter: `make run` and `make test`. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help run test up down node-check propagation admission-latency tenant-figures unit lint crds check-crds chart-check chart-docs bench fuzz image image-multiarch reproducible sbom alerts-test reliability testbed-binaries

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

run: ## Bring the local test bed up, install the CRD, apply an example, run the controller
	testbed/run.sh

test: ## fmt, clippy -D warnings, CRD freshness, unit tests, tests on the real control plane + emulator
	testbed/test.sh

up: ## Start the local control plane and Cognito emulator (writes .local/env)
	testbed/up.sh

down: ## Stop everything `make up` started, and remove all the node added to the machine
	testbed/down.sh

node-check: ## Check the running node: network rules, images, pods reach the emulator and the API server
	testbed/node-check.sh

propagation: ## Measure the kubelet's Secret propagation delay on the running node (docs/usage.md)
	testbed/propagation.sh

admission-latency: ## The injection webhook on the node (tests/node_webhook.rs); writes its admission latency into docs/benchmarks.md
	testbed/up.sh
	source .local/env && CUC_WRITE_DOCS=1 cargo test --locked --test node_webhook -- --nocapture

tenant-figures: ## One namespace against the shared controller (tests/binary.rs): memory under attack and fairness, written into docs/benchmarks.md
	testbed/up.sh
	source .local/env && CUC_WRITE_DOCS=1 cargo test --locked --test binary -- --nocapture --test-threads 1 a_hostile_tenant a_busy_namespace

lint: ## cargo fmt --check and clippy with -D warnings
	cargo fmt --all -- --check
	cargo clippy --all-targets --all-features --locked -- -D warnings

unit: ## Unit tests only (no cluster)
	cargo test --locked --lib --bins

crds: ## Regenerate crds/ from the Rust types, and the chart's copy of it
	cargo run --locked --quiet --features crdgen --bin crdgen > crds/cognitounauthcredentials.yaml
	cp crds/cognitounauthcredentials.yaml charts/cognito-unauth-controller/files/crds/

check-crds: ## Fail when crds/ is stale
	cargo run --locked --quiet --features crdgen --bin crdgen | diff -u crds/cognitounauthcredentials.yaml - \
	  || { echo "crds/ is stale: run 'make crds' and commit"; exit 1; }

chart-check: ## The chart, no cluster: lint, golden files, kubeconform, README and schema freshness, packaging (UPDATE_GOLDEN=1 rewrites the golden files)
	testbed/chart-check.sh

chart-docs: ## Regenerate the chart's README.md (helm-docs) and values.schema.json (its # @schema annotations) from values.yaml
	bash -c 'source testbed/lib.sh && ensure_chart_tools && chart_values_schema "$$PWD/charts/cognito-unauth-controller/values.schema.json" && cd charts/cognito-unauth-controller && "$$(helm_docs_bin_dir)/helm-docs" --sort-values-order file --log-level warning'

bench: ## The benchmark at BENCH_N resources (default 1000); writes docs/benchmarks.md
	testbed/bench.sh --markdown docs/benchmarks.md

reliability: ## Run the fault matrix and regenerate docs/reliability.md
	testbed/reliability.sh

fuzz: ## Run each cargo-fuzz target for FUZZ_SECONDS (default 60); needs nightly and cargo-fuzz
	cd fuzz && for t in secret_inspect cognito_credentials; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; done

image: ## Build the Dockerfile's final stage with buildah from a host-built static binary (checks the context, labels, SBOM)
	testbed/image.sh

image-multiarch: ## The amd64 image, the arm64 one cross-built with zig and run under qemu, and a manifest list of both
	testbed/image.sh
	testbed/image-arm64.sh

reproducible: ## Build the image's binary again from another path and target dir, and compare hashes (ARCH=amd64|arm64; REPRODUCIBLE_COLD=1: from scratch)
	testbed/reproducible.sh $${ARCH:-amd64}

sbom: ## CycloneDX SBOM of the crates in the image's binary, into .local/images/ (ARCH=amd64|arm64)
	testbed/sbom.sh $${ARCH:-amd64}

alerts-test: ## promtool test rules: the chart's PrometheusRule against charts/*/tests/prometheusrule_test.yaml
	testbed/alerts-test.sh

testbed-binaries: ## Build (once) the cluster and node binaries from the Go module proxy
	bash -c 'source testbed/lib.sh && check_prereqs && ensure_cluster_binaries && ensure_runtime_binaries'
