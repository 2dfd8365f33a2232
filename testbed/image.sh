#!/usr/bin/env bash
# Builds the Dockerfile's final stage with buildah (no container engine, no registry):
# the static binary is built on the host and handed to buildah as the named build
# context "build", standing in for the Dockerfile's cargo stage. Then runs the image's
# binary with --version and prints the image size.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
if ! command -v buildah >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "buildah is missing: install it from your distribution"
  log "installing buildah from Debian's packages"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah) >/dev/null \
    || die "could not install buildah: run apt-get update && apt-get install -y buildah"
fi
# musl, not static glibc: glibc's getaddrinfo needs NSS libraries that a scratch image
# does not have, so DNS (the Cognito endpoint's name) would fail there.
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  log "adding the Rust target $target"
  rustup target add "$target" || die "could not add the Rust target: rustup target add $target"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  log "installing musl-tools from Debian's packages (aws-lc builds C code)"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools) >/dev/null \
    || die "could not install musl-tools: apt-get update && apt-get install -y musl-tools"
fi
log "building the static binary (profile image, $target)"
cargo build --locked --quiet --profile image --target "$target" --bin cognito-unauth-controller
ctx="$LOCAL/image-context"
rm -rf "$ctx"
mkdir -p "$ctx/out/etc/ssl/certs"
cp "target/$target/image/cognito-unauth-controller" "$ctx/out/"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/out/etc/ssl/certs/"
storage=(--storage-driver vfs --root "$LOCAL/buildah/root" --runroot "$LOCAL/buildah/run")
tag="localhost/cognito-unauth-controller:$(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)"
log "buildah bud --target final (named context 'build' = host build)"
buildah "${storage[@]}" bud --isolation chroot --layers=false --target final \
  --build-context "build=$ctx" -t "$tag" -f Dockerfile "$ROOT" >/dev/null
# Run the image's own binary: mount the image and execute what is in it.
cid=$(buildah "${storage[@]}" from "$tag")
trap 'buildah "${storage[@]}" rm "$cid" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah "${storage[@]}" mount "$cid")
version=$(buildah "${storage[@]}" run --isolation chroot "$cid" -- /cognito-unauth-controller --version)
[[ -x "$mnt/cognito-unauth-controller" && -f "$mnt/etc/ssl/certs/ca-certificates.crt" ]] || die "image lacks its files"
[[ ! -e "$mnt/bin/sh" ]] || die "the image has a shell"
user=$(buildah "${storage[@]}" inspect --format '{{.OCIv1.Config.User}}' "$tag")
[[ "$user" == "65532:65532" ]] || die "image user is '$user', expected 65532:65532"
size=$(buildah "${storage[@]}" images --format '{{.Size}}' "$tag")
bytes=$(du -sb "$mnt" | cut -f1)
log "image $tag: $version; user $user; size $size ($bytes bytes of files)"
(( bytes < 25 * 1024 * 1024 )) || die "image is $bytes bytes, over the 25 MB target"
echo "$version"
