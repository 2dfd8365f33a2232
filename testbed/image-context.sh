#!/usr/bin/env bash
# Fails when the Dockerfile's build context (`COPY . .`) would carry what must stay home:
# the test bed's .local/ (admin kubeconfig, client keys, PKI), cargo's target dirs, .git.
# Not by reading .dockerignore: buildah copies the context, with .dockerignore applied as
# for any build, into a scratch image, and the check lists what arrived.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_debs buildah
dir=$(mktemp -d)
cid=""
cleanup() {
  [[ -z "$cid" ]] || buildah_local rm "$cid" >/dev/null 2>&1 || true
  buildah_local rmi -f localhost/cuc-context-check >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
printf 'FROM scratch\nCOPY . /context/\n' > "$dir/Containerfile"
# A canary in each excluded place proves the rule, not an accident of what exists today.
canaries=(.local/.context-canary target/.context-canary fuzz/target/.context-canary target-canary/.context-canary)
for c in "${canaries[@]}"; do mkdir -p "$(dirname "$c")"; echo canary > "$c"; done
trap 'rm -f "${canaries[@]}"; rmdir target-canary 2>/dev/null || true; cleanup' EXIT
buildah_local bud --quiet --isolation chroot --layers=false -f "$dir/Containerfile" -t localhost/cuc-context-check "$ROOT" >/dev/null
cid=$(buildah_local from localhost/cuc-context-check)
mnt=$(buildah_local mount "$cid")
(cd "$mnt/context" && find . -mindepth 1 | sed 's|^\./||' | sort) > "$dir/files"
bad=$(grep -E '^(\.git|\.local|target|target-[^/]*|fuzz/target)(/|$)|(^|/)\.local(/|$)' "$dir/files" || true)
[[ -z "$bad" ]] || die "the build context carries what .dockerignore should keep out:
$(head -20 <<<"$bad")"
# And it still carries what the build needs.
for need in Cargo.toml Cargo.lock rust-toolchain.toml src/main.rs tests/support/Cargo.toml; do
  grep -qx "$need" "$dir/files" || die "the build context lacks $need (.dockerignore excludes too much)"
done
log "build context: $(wc -l < "$dir/files") files, $(du -sh "$mnt/context" | cut -f1); no .git, .local or target"
