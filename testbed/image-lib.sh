# shellcheck shell=bash
# What the image scripts share (image.sh, image-arm64.sh, reproducible.sh, sbom.sh): the
# musl target of an architecture, the environment of a reproducible build, and the pinned
# build tools kept in $CACHE/tools. Sourced after lib.sh.

CARGO_ZIGBUILD_VERSION=0.24.1   # crates.io
# PyPI's ziglang. Not 0.16: its `zig ar` is reported unable to create an archive, which
# cc-rs needs for every C library (a comment on aws/aws-lc-rs#993; not tried here).
ZIGLANG_VERSION=0.15.2
CARGO_CYCLONEDX_VERSION=0.5.9   # crates.io
BIN_NAME=cognito-unauth-controller

# musl_target ARCH: the Rust target of an OCI architecture, as the Dockerfile derives it
# from TARGETARCH.
musl_target() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    *) die "unsupported architecture '$1' (amd64 or arm64)" ;;
  esac
}

ensure_rust_target() {
  rustup target list --installed | grep -qx "$1" && return 0
  log "adding the Rust target $1"
  rustup target add "$1" || die "could not add the Rust target: rustup target add $1"
}

# source_date_epoch: the last commit's time: the image's created time.
source_date_epoch() { git -C "$ROOT" log -1 --format=%ct; }

# build_date_epoch: the binary's SOURCE_DATE_EPOCH (when set, that): the time of the last
# commit that changed the dependency set or the toolchain. Only the C compilers read it
# (cc-rs hands it to gcc or zig for __DATE__ and __TIME__), and cc-rs makes cargo rebuild
# aws-lc-sys, ring and all above them, nearly the whole binary, whenever it changes:
# HEAD's time would do that after every commit; this only when the C sources can change.
build_date_epoch() {
  echo "${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct -- Cargo.toml Cargo.lock rust-toolchain.toml)}"
}

# repro_env TARGET TARGET_DIR: export what makes the binary the same bytes wherever and
# whenever it is built (testbed/reproducible.sh proves it). Paths that end up in the
# binary (panic locations, C __FILE__ in aws-lc) are remapped: the source dir to /src,
# $CARGO_HOME to /cargo and the target dir to /target, as the Dockerfile's build stage
# sees them. The last matching prefix wins in both rustc and gcc/clang: the target dir,
# which may lie inside the source dir, comes last. The source dir is remapped for the
# workspace's crates only (testbed/rustc-remap.sh): the dependencies' flags do not name
# the checkout (their sources are under $CARGO_HOME, their outputs in the target dir), so a
# build from another checkout into the same target dir compiles only the workspace again.
repro_env() {
  local target=$1 target_dir=$2 cargo_home=${CARGO_HOME:-$HOME/.cargo}
  local upper; upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
  export SOURCE_DATE_EPOCH; SOURCE_DATE_EPOCH=$(build_date_epoch)
  export CARGO_INCREMENTAL=0
  export CARGO_TARGET_DIR="$target_dir"
  # Per target: build scripts and proc macros (host) keep their own flags.
  export "CARGO_TARGET_${upper}_RUSTFLAGS=--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target_dir=/target"
  export "CFLAGS_${target//-/_}=-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$target_dir=/target"
  export RUSTC_WORKSPACE_WRAPPER="$REMAP_WRAPPER" CUC_REMAP_SRC="$ROOT" CUC_REMAP_TARGET="$target_dir"
}
# One wrapper path for every build (a build from a copy of the checkout too): cargo keys
# the workspace's artifacts on it.
REMAP_WRAPPER="${REMAP_WRAPPER:-$ROOT/testbed/rustc-remap.sh}"
export REMAP_WRAPPER

# build_binary TARGET CARGO_COMMAND: the image profile's binary for TARGET (cargo build, or
# zigbuild to cross-link), with repro_env. Sets BIN (its path), BUILD_S (seconds) and
# FRESH ("compiled", or "up to date" when cargo had nothing to do).
# shellcheck disable=SC2034  # BIN, BUILD_S and FRESH are read by the caller
build_binary() {
  local target=$1 command=$2 before t0
  repro_env "$target" "${CARGO_TARGET_DIR:-$ROOT/target}"
  BIN="$CARGO_TARGET_DIR/$target/image/$BIN_NAME"
  before=$(stat -c %Y "$BIN" 2>/dev/null || echo none)
  t0=$(date +%s)
  cargo "$command" --locked --quiet --profile image --target "$target" --bin "$BIN_NAME"
  BUILD_S=$(( $(date +%s) - t0 ))
  FRESH=compiled
  [[ "$(stat -c %Y "$BIN")" != "$before" ]] || FRESH="up to date"
}

# ensure_zig: cargo-zigbuild (crates.io) and zig (PyPI's ziglang, in a venv), pinned, in
# the cache; puts both on PATH. The cross linker and C compiler for arm64.
ensure_zig() {
  local zb zv="$CACHE/tools/ziglang-$ZIGLANG_VERSION"
  zb=$(cargo_tool cargo-zigbuild "$CARGO_ZIGBUILD_VERSION" 19)
  [[ -f "$zv/.complete" ]] || cache_lock "$zv"
  if [[ ! -f "$zv/.complete" ]]; then
    log "installing zig (PyPI ziglang==$ZIGLANG_VERSION) into $zv (first time only)"
    rm -rf "$zv"
    python3 -m venv "$zv" || die "Python's venv module is missing: apt-get install -y python3-venv"
    "$zv/bin/pip" install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION" \
      || die "could not install zig: pip install ziglang==$ZIGLANG_VERSION"
    touch "$zv/.complete"
  fi
  [[ -z "${FD_LOCK:-}" ]] || cache_unlock
  # cargo-zigbuild finds zig as `python3 -m ziglang` with the venv's python3 first on PATH.
  export PATH="$zb:$zv/bin:$PATH"
}

# ensure_cyclonedx: cargo-cyclonedx (crates.io), pinned, in the cache; prints its path.
ensure_cyclonedx() {
  local bin
  bin=$(cargo_tool cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION" 19)
  echo "$bin/cargo-cyclonedx"
}

# image_labels: the build ARGs of the Dockerfile's final stage (its OCI labels).
image_build_args() {
  local version source
  version=$(awk -F'"' '/^version/ {print $2; exit}' "$ROOT/Cargo.toml")
  # No public home yet: the origin remote when there is one (set CUC_IMAGE_SOURCE to override).
  source=${CUC_IMAGE_SOURCE:-$(git -C "$ROOT" remote get-url origin 2>/dev/null || echo unknown)}
  printf '%s\n' --build-arg "VERSION=$version" --build-arg "REVISION=$(git -C "$ROOT" rev-parse HEAD)" \
    --build-arg "SOURCE=$source" --build-arg "SOURCE_DATE_EPOCH=$(build_date_epoch)"
}

# assemble_image ARCH BIN SBOM CTX TAG...: the Dockerfile's final stage for ARCH, with the
# host-built BIN and SBOM in the named context "build" (laid out in CTX) in place of the
# cargo stage. FROM scratch has no RUN step, so no emulation is needed for arm64.
assemble_image() {
  local arch=$1 bin=$2 sbom=$3 ctx=$4; shift 4
  rm -rf "$ctx"
  mkdir -p "$ctx/out/etc/ssl/certs"
  cp "$bin" "$ctx/out/$BIN_NAME"
  cp "$sbom" "$ctx/out/sbom.cdx.json"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/out/etc/ssl/certs/"
  local tags=() t args=()
  for t in "$@"; do tags+=(-t "$t"); done
  mapfile -t args < <(image_build_args)
  # --timestamp: the image's created time and file times are the commit's, not now.
  buildah_local bud --quiet --isolation chroot --layers=false --target final --arch "$arch" --os linux \
    --timestamp "$(source_date_epoch)" "${args[@]}" --build-context "build=$ctx" "${tags[@]}" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
}

# check_image TAG ARCH MNT: what the image must be, read from its config and its files
# (mounted at MNT): architecture, non-root user, OCI labels, the SBOM, no shell.
check_image() {
  local tag=$1 arch=$2 mnt=$3 got want label
  got=$(buildah_local inspect --format '{{.OCIv1.Architecture}}' "$tag")
  [[ "$got" == "$arch" ]] || die "image $tag is for '$got', expected $arch"
  got=$(buildah_local inspect --format '{{.OCIv1.Created.Unix}}' "$tag")
  [[ "$got" == "$(source_date_epoch)" ]] || die "image $tag was created at $got, not at the last commit's time"
  got=$(buildah_local inspect --format '{{.OCIv1.Config.User}}' "$tag")
  [[ "$got" == "65532:65532" ]] || die "image user is '$got', expected 65532:65532"
  [[ -x "$mnt/$BIN_NAME" && -f "$mnt/etc/ssl/certs/ca-certificates.crt" ]] || die "image lacks its files"
  [[ ! -e "$mnt/bin/sh" ]] || die "the image has a shell"
  local version; version=$(awk -F'"' '/^version/ {print $2; exit}' "$ROOT/Cargo.toml")
  declare -A expect=(
    [org.opencontainers.image.title]=$BIN_NAME
    [org.opencontainers.image.licenses]=Apache-2.0
    [org.opencontainers.image.version]=$version
    [org.opencontainers.image.revision]=$(git -C "$ROOT" rev-parse HEAD)
    [io.kubecred.sbom]=/sbom.cdx.json
  )
  for label in "${!expect[@]}" org.opencontainers.image.source org.opencontainers.image.description; do
    got=$(buildah_local inspect --format "{{index .OCIv1.Config.Labels \"$label\"}}" "$tag")
    want=${expect[$label]:-}
    [[ -n "$got" && "$got" != "<no value>" ]] || die "image $tag lacks the label $label"
    [[ -z "$want" || "$got" == "$want" ]] || die "image label $label is '$got', expected '$want'"
  done
  python3 - "$mnt/sbom.cdx.json" <<'PY' || die "the image's /sbom.cdx.json is not the SBOM of this build"
import json, sys
bom = json.load(open(sys.argv[1]))
names = {c["name"] for c in bom.get("components", [])}
assert bom.get("bomFormat") == "CycloneDX", bom.get("bomFormat")
assert {"kube-client", "aws-sdk-cognitoidentity", "aws-lc-sys", "tokio"} <= names, sorted(names)[:20]
PY
}

# write_measured NAME TEXT: with CUC_WRITE_DOCS=1, put TEXT (what the calling script just
# measured) between the markers <!-- measured:NAME --> and <!-- /measured:NAME --> of
# docs/dev/image.md, with the date and the machine's core count. Nothing else writes them.
write_measured() {
  [[ "${CUC_WRITE_DOCS:-}" == 1 ]] || return 0
  local name=$1 text=$2 doc="$ROOT/docs/dev/image.md"
  grep -q "<!-- measured:$name -->" "$doc" || die "$doc has no <!-- measured:$name --> marker"
  NAME=$name TEXT="$text ($(date -u +%Y-%m-%d), $(nproc) cores, $(git -C "$ROOT" rev-parse --short HEAD))" \
    python3 - "$doc" <<'PY'
import os, re, sys
path, name, text = sys.argv[1], os.environ["NAME"], os.environ["TEXT"]
doc = open(path).read()
pat = re.compile(r"(<!-- measured:%s -->\n).*?(<!-- /measured:%s -->)" % (re.escape(name), re.escape(name)), re.S)
open(path, "w").write(pat.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc, count=1))
PY
  log "wrote the measurement '$name' into $doc"
}
