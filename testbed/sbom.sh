#!/usr/bin/env bash
# sbom.sh [ARCH [OUT]]: a CycloneDX 1.5 SBOM (JSON) of the Rust crates linked into the
# image's binary for ARCH (amd64 or arm64; default amd64): the resolved dependency graph
# for that musl target, without build-only and dev dependencies. cargo-cyclonedx
# (crates.io, pinned, in the cache) writes it; OUT defaults to
# .local/images/cognito-unauth-controller.ARCH.cdx.json. image.sh and image-arm64.sh put it
# in the image as /sbom.cdx.json. Repeatable: SOURCE_DATE_EPOCH (the last commit) is its
# timestamp and the checkout's path is replaced by /src, as in the binary.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/image-lib.sh"
cd "$ROOT"
arch=${1:-amd64}
target=$(musl_target "$arch")
out=${2:-$LOCAL/images/$BIN_NAME.$arch.cdx.json}
cdx=$(ensure_cyclonedx)
name=".sbom-$$"
trap 'rm -f "$ROOT/$name.json" "$ROOT/tests/support/$name.json"' EXIT
SOURCE_DATE_EPOCH=$(source_date_epoch) "$cdx" cyclonedx --quiet --format json --spec-version 1.5 \
  --target "$target" --no-build-deps --override-filename "$name" --manifest-path "$ROOT/Cargo.toml"
mkdir -p "$(dirname "$out")"
sed "s|path+file://$ROOT|path+file:///src|g; s|file://$ROOT|file:///src|g" "$ROOT/$name.json" > "$out.partial"
mv "$out.partial" "$out"
log "SBOM ($arch): $out, $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$out") crates"
