#!/usr/bin/env bash
# Builds the Dockerfile's final stage with buildah (no container engine, no registry):
# the static binary is built on the host and handed to buildah as the named build
# context "build", standing in for the Dockerfile's cargo stage. Tags it
# localhost/cognito-unauth-controller:dev (what the node runs) and :<version>, writes it
# to .local/images/cognito-unauth-controller.tar (a docker archive the node imports),
# runs the image's binary with --version and prints the image size.
# Before that it checks the build context (.dockerignore keeps .local and target out);
# after, the image's OCI labels and its SBOM (/sbom.cdx.json, also written beside the
# archive). The image is rebuilt only when one of its inputs changed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/image-lib.sh"
cd "$ROOT"
ensure_debs buildah
"$ROOT/testbed/image-context.sh"
# musl, not static glibc: glibc's getaddrinfo needs NSS libraries that a scratch image
# does not have, so DNS (the Cognito endpoint's name) would fail there.
target=$(musl_target amd64)
ensure_rust_target "$target"
ensure_debs musl-tools   # aws-lc builds C code
log "building the static binary (profile image, $target)"
build_binary "$target" build
bin=$BIN
mkdir -p "$LOCAL/images"
sbom="$LOCAL/images/$BIN_NAME.amd64.cdx.json"
"$ROOT/testbed/sbom.sh" amd64 "$sbom"
version=$(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)
tag="localhost/cognito-unauth-controller:dev"
archive="$LOCAL/images/cognito-unauth-controller.tar"
key=$( { sha256sum "$bin" "$sbom" /etc/ssl/certs/ca-certificates.crt Dockerfile | cut -d' ' -f1
  echo "$tag $version"; image_build_args; } | sha256sum | cut -c1-16)
if [[ -f "$archive" && "$(cat "$archive.key" 2>/dev/null)" == "$key" ]] \
  && buildah_local inspect --type image "$tag" >/dev/null 2>&1; then
  log "image $tag is up to date ($key)"
else
  log "buildah bud --target final (named context 'build' = host build)"
  assemble_image amd64 "$bin" "$sbom" "$LOCAL/image-context" "$tag" "localhost/cognito-unauth-controller:$version"
  rm -f "$archive"
  buildah_local push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null
  echo "$key" > "$archive.key"
  # Earlier builds of the tag are dangling now: drop them (vfs keeps whole copies).
  buildah_local rmi --prune >/dev/null 2>&1 || true
fi
# Run the image's own binary: mount the image and execute what is in it.
cid=$(buildah_local from "$tag")
trap 'buildah_local rm "$cid" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah_local mount "$cid")
out=$(buildah_local run --isolation chroot "$cid" -- /cognito-unauth-controller --version)
check_image "$tag" amd64 "$mnt"
# sed, not head: head exits at the first line, and buildah, still writing the line of
# the other tag, dies of SIGPIPE (exit 141 under pipefail).
size=$(buildah_local images --format '{{.Size}}' "$tag" | sed -n 1p)
bytes=$(du -sb "$mnt" | cut -f1)
log "image $tag: $out; user 65532:65532; OCI labels and SBOM checked; size $size ($bytes bytes of files)"
(( bytes < 25 * 1024 * 1024 )) || die "image is $bytes bytes, over the 25 MB target"
write_measured image-amd64 "cargo build of the binary ${BUILD_S}s ($FRESH); image $size, $bytes bytes of files; binary $(stat -c %s "$bin") bytes"
echo "$out"
