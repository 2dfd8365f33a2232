#!/usr/bin/env bash
# reproducible.sh [ARCH]: is the image's binary (ARCH amd64 by default, or arm64) the same
# bytes when built again from another checkout path? Build A is the usual one (this
# checkout, its target dir: what image.sh / image-arm64.sh ship); build B copies the same
# files (tracked and untracked, not ignored) to $CACHE/reproducible/ARCH and builds them
# there. Both with repro_env (testbed/image-lib.sh): SOURCE_DATE_EPOCH, CARGO_INCREMENTAL=0
# and the paths remapped. Compares sha256 and fails on any difference. `make test` runs it
# for amd64 after image.sh; alone: `make reproducible`.
#
# By default B builds into A's target dir: the dependencies' flags do not name the
# checkout, so cargo reuses what A compiled of them and compiles the workspace's crates
# again, from the other path, at another time (issue 19: CI pays one extra release build,
# the arm64 one, not a second cold build of every crate here). A leaked checkout path or
# build time, or a nondeterministic order in our code or its link, makes the bytes differ.
# REPRODUCIBLE_COLD=1 builds B from scratch in a target dir of its own: every crate
# compiled twice, independently (a dependency's nondeterminism shows there too).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/testbed/image-lib.sh"
cd "$ROOT"
arch=${1:-amd64}
target=$(musl_target "$arch")
ensure_rust_target "$target"
if [[ "$arch" == amd64 ]]; then
  ensure_debs musl-tools
  build=(cargo build)
else
  ensure_zig
  build=(cargo zigbuild)
fi
start=$(date +%s)
# Once, from this checkout: build B's copy has no .git.
export SOURCE_DATE_EPOCH; SOURCE_DATE_EPOCH=$(build_date_epoch)

# build_in SRC TARGET_DIR: the image's binary from SRC into TARGET_DIR; prints its path.
build_in() {
  # shellcheck disable=SC2030  # on purpose: repro_env remaps this checkout, in this subshell only
  ( cd "$1" && ROOT="$1" && repro_env "$target" "$2" \
      && "${build[@]}" --locked --quiet --profile image --target "$target" --bin "$BIN_NAME" ) >&2
  echo "$2/$target/image/$BIN_NAME"
}

# shellcheck disable=SC2031  # build_in's ROOT is its own (see there)
log "build A: $ROOT (target dir ${CARGO_TARGET_DIR:-$ROOT/target})"
t0=$(date +%s)
# shellcheck disable=SC2031  # as above
a=$(build_in "$ROOT" "${CARGO_TARGET_DIR:-$ROOT/target}")
a_s=$(( $(date +%s) - t0 ))

work="$CACHE/reproducible/$arch"
mkdir -p "$work"
# One build B at a time on this machine (two clones' make test side by side).
exec {lock}>"$work.lock"
flock "$lock"
# A's binary aside: B may write to the same path.
cp "$a" "$work/a.bin"
a="$work/a.bin"
# shellcheck disable=SC2031  # as above
b_target="${CARGO_TARGET_DIR:-$ROOT/target}"
b_kind="the workspace's crates again, the dependencies A compiled"
if [[ "${REPRODUCIBLE_COLD:-0}" == 1 ]]; then
  rm -rf "$work/target"
  b_target="$work/target"
  b_kind="cold: everything, in its own target dir"
fi
# The copy is made afresh (files this checkout no longer has must not linger).
rm -rf "$work/checkout"
mkdir -p "$work/checkout"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp -a --parents -t "$work/checkout"
# In A's target dir cargo would find the workspace's crates fresh (their sources in A's
# checkout did not change) and B would be A's own binary: drop them, so B compiles them
# from the copy. And check that it did.
if [[ "$b_target" != "$work/target" ]]; then
  (cd "$work/checkout" && CARGO_TARGET_DIR="$b_target" cargo clean --quiet -p "$BIN_NAME" \
    --profile image --target "$target") \
    || die "could not drop the workspace's image artifacts from $b_target"
fi
rm -f "$b_target/$target/image/$BIN_NAME"
log "build B: a copy in $work/checkout ($b_kind)"
t0=$(date +%s)
b=$(build_in "$work/checkout" "$b_target")
b_s=$(( $(date +%s) - t0 ))
[[ -f "$b" ]] || die "build B made no binary at $b"

ha=$(sha256sum "$a" | cut -d' ' -f1)
hb=$(sha256sum "$b" | cut -d' ' -f1)
echo "A $ha  ($a_s s)"
echo "B $hb  ($b_s s, $b_kind)"
if [[ "$ha" != "$hb" ]]; then
  cmp -l "$a" "$b" | wc -l | xargs printf 'bytes that differ: %s\n' >&2
  diff <(strings -n 12 "$a") <(strings -n 12 "$b") | head -20 >&2 || true
  die "not reproducible: the $arch binary differs between the two builds"
fi
summary="reproducible ($arch): both builds give sha256 $ha ($(stat -c %s "$a") bytes); build A ${a_s}s, build B ${b_s}s ($b_kind), total $(( $(date +%s) - start ))s"
write_measured "reproducible-$arch" "$summary"
echo "$summary"
