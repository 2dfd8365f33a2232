#!/usr/bin/env bash
# The linux/arm64 image, cross-built on this (amd64) machine: the static binary for
# aarch64-unknown-linux-musl with the image profile, linked (and aws-lc's C compiled) by
# zig through cargo-zigbuild; run under qemu-user (--version, --help); then the
# Dockerfile's final stage with buildah --arch arm64, as image.sh does for amd64, tagged
# localhost/cognito-unauth-controller:dev-arm64, written to
# .local/images/cognito-unauth-controller-arm64.tar. When the amd64 image (image.sh) is
# there too, both go into one manifest list, written as an OCI archive
# (.local/images/cognito-unauth-controller-multiarch.oci.tar). Prints the times and sizes.
# `make test` runs it after image.sh; alone: `make image-multiarch`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/image-lib.sh"
cd "$ROOT"
start=$(date +%s)
ensure_debs buildah qemu-user-static binutils
"$ROOT/testbed/image-context.sh"
target=$(musl_target arm64)
ensure_rust_target "$target"
ensure_zig
log "cross-building the static binary (profile image, $target, zig $ZIGLANG_VERSION)"
build_binary "$target" zigbuild
bin=$BIN
# An aarch64 ELF, static: no program interpreter to look for in a scratch image.
readelf -h "$bin" | grep -q 'Machine:.*AArch64' || die "$bin is not an AArch64 binary"
! readelf -l "$bin" | grep -q INTERP || die "$bin is dynamically linked"
version_out=$(qemu-aarch64-static "$bin" --version) || die "the arm64 binary does not run under qemu"
help_out=$(qemu-aarch64-static "$bin" --help) || die "the arm64 binary's --help fails under qemu"
grep -q -- '--help' <<<"$help_out" || die "unexpected --help output under qemu: $help_out"
log "under qemu-aarch64: $version_out; --help: $(wc -l <<<"$help_out") lines"

sbom="$LOCAL/images/$BIN_NAME.arm64.cdx.json"
"$ROOT/testbed/sbom.sh" arm64 "$sbom"
tag="localhost/cognito-unauth-controller:dev-arm64"
archive="$LOCAL/images/cognito-unauth-controller-arm64.tar"
t0=$(date +%s)
assemble_image arm64 "$bin" "$sbom" "$LOCAL/image-context-arm64" "$tag"
rm -f "$archive"
buildah_local push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null
buildah_local rmi --prune >/dev/null 2>&1 || true
image_s=$(( $(date +%s) - t0 ))
cid=$(buildah_local from --arch arm64 "$tag")
trap 'buildah_local rm "$cid" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah_local mount "$cid")
check_image "$tag" arm64 "$mnt"
# The image's own binary, not the one in target/.
out=$(qemu-aarch64-static "$mnt/$BIN_NAME" --version) || die "the image's binary does not run under qemu"
# sed, not head: head exits at the first line, and buildah, still writing the line of
# the other tag, dies of SIGPIPE (exit 141 under pipefail).
size=$(buildah_local images --format '{{.Size}}' "$tag" | sed -n 1p)
bytes=$(du -sb "$mnt" | cut -f1)
(( bytes < 25 * 1024 * 1024 )) || die "image is $bytes bytes, over the 25 MB target"

amd64="localhost/cognito-unauth-controller:dev"
if buildah_local inspect --type image "$amd64" >/dev/null 2>&1; then
  list="localhost/cognito-unauth-controller:dev-multiarch"
  buildah_local manifest rm "$list" >/dev/null 2>&1 || true
  buildah_local manifest create "$list" >/dev/null
  buildah_local manifest add "$list" "$amd64" >/dev/null
  buildah_local manifest add "$list" "$tag" >/dev/null
  platforms=$(buildah_local manifest inspect "$list" \
    | python3 -c 'import json,sys; print(" ".join(sorted(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"])))')
  [[ "$platforms" == "linux/amd64 linux/arm64" ]] || die "manifest list holds '$platforms'"
  rm -f "$LOCAL/images/cognito-unauth-controller-multiarch.oci.tar"
  buildah_local manifest push --quiet --all "$list" \
    "oci-archive:$LOCAL/images/cognito-unauth-controller-multiarch.oci.tar:dev" >/dev/null
  log "manifest list $list: $platforms"
else
  log "no amd64 image ($amd64): run testbed/image.sh first for the manifest list"
fi
log "image $tag: $out under qemu; arm64, user 65532:65532, OCI labels and SBOM checked; size $size ($bytes bytes of files)"
summary="arm64 binary build ${BUILD_S}s ($FRESH); image ${image_s}s; total $(( $(date +%s) - start ))s; image $size ($bytes bytes of files); binary $(stat -c %s "$bin") bytes"
write_measured image-arm64 "$summary"
echo "$summary"
