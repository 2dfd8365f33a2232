#!/usr/bin/env bash
# Builds the Dockerfile's final stage with buildah (no container engine, no registry):
# the static binary is built on the host and handed to buildah as the named build
# context "build", standing in for the Dockerfile's cargo stage. Tags it
# localhost/cognito-unauth-controller:dev (what the node runs) and :<version>, writes it
# to .local/images/cognito-unauth-controller.tar (a docker archive the node imports),
# runs the image's binary with --version and prints the image size.
# Before that it checks the build context: .dockerignore keeps .local and target out.
# The image is rebuilt only when the binary, the Dockerfile or the CA bundle changed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_debs buildah
"$ROOT/testbed/image-context.sh"
# musl, not static glibc: glibc's getaddrinfo needs NSS libraries that a scratch image
# does not have, so DNS (the Cognito endpoint's name) would fail there.
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  log "adding the Rust target $target"
  rustup target add "$target" || die "could not add the Rust target: rustup target add $target"
fi
ensure_debs musl-tools   # aws-lc builds C code
log "building the static binary (profile image, $target)"
cargo build --locked --quiet --profile image --target "$target" --bin cognito-unauth-controller
bin="${CARGO_TARGET_DIR:-$ROOT/target}/$target/image/cognito-unauth-controller"
ctx="$LOCAL/image-context"
rm -rf "$ctx"
mkdir -p "$ctx/out/etc/ssl/certs" "$LOCAL/images"
cp "$bin" "$ctx/out/"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/out/etc/ssl/certs/"
version=$(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)
tag="localhost/cognito-unauth-controller:dev"
archive="$LOCAL/images/cognito-unauth-controller.tar"
key=$( { sha256sum "$ctx/out/cognito-unauth-controller" "$ctx/out/etc/ssl/certs/ca-certificates.crt" Dockerfile \
  | cut -d' ' -f1; echo "$tag $version"; } | sha256sum | cut -c1-16)
if [[ -f "$archive" && "$(cat "$archive.key" 2>/dev/null)" == "$key" ]] \
  && buildah_local inspect --type image "$tag" >/dev/null 2>&1; then
  log "image $tag is up to date ($key)"
else
  log "buildah bud --target final (named context 'build' = host build)"
  buildah_local bud --isolation chroot --layers=false --target final \
    --build-context "build=$ctx" -t "$tag" -t "localhost/cognito-unauth-controller:$version" \
    -f Dockerfile "$ROOT" >/dev/null
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
[[ -x "$mnt/cognito-unauth-controller" && -f "$mnt/etc/ssl/certs/ca-certificates.crt" ]] || die "image lacks its files"
[[ ! -e "$mnt/bin/sh" ]] || die "the image has a shell"
user=$(buildah_local inspect --format '{{.OCIv1.Config.User}}' "$tag")
[[ "$user" == "65532:65532" ]] || die "image user is '$user', expected 65532:65532"
size=$(buildah_local images --format '{{.Size}}' "$tag")
bytes=$(du -sb "$mnt" | cut -f1)
log "image $tag: $out; user $user; size $size ($bytes bytes of files)"
(( bytes < 25 * 1024 * 1024 )) || die "image is $bytes bytes, over the 25 MB target"
echo "$out"
