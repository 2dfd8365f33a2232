# shellcheck shell=bash
# The node's images, built here (no registry is ever asked) into docker archives that
# the node's containerd imports at every `make up`:
#   registry.k8s.io/pause:3.10.2      build/pause/linux/pause.c of our k8s.io/kubernetes
#                                     pin, static, under the exact name containerd's
#                                     config gives its sandbox image
#   localhost/aws-client:dev          a minimal Debian rootfs (debootstrap minbase + python3)
#                                     with a venv holding the aws CLI and boto3 at the
#                                     pins of testbed/cognito/requirements.txt: sh, cat,
#                                     aws, python3 -c 'import boto3'
#   localhost/go-sts:dev              FROM scratch: no shell, no cat, only /go-sts, a static
#                                     Go binary (testbed/go-sts: aws-sdk-go-v2's default
#                                     config, GetCallerIdentity in a loop), user 65532; it
#                                     cannot run credential_process (the SDK runs it by sh -c)
#   localhost/cognito-unauth-controller:dev   testbed/image.sh (the Dockerfile's final stage)
# All but the last depend on nothing in the work tree but their recipe and pins (and
# testbed/go-sts): they are cached per machine in $CACHE/images, keyed by a hash of their
# inputs (recipe included), and rebuilt only when that changes. Sourced by up.sh after lib.sh.

IMAGE_CACHE="$CACHE/images"

k8s_module_dir() { (cd "$ROOT/testbed/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes); }

# image_key NAME INPUT...: a hash of the recipe (this file's function NAME) and the inputs.
image_key() {
  local fn=$1; shift
  { declare -f "$fn"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16
}

# Removes whatever is mounted under DIR (debootstrap mounts /proc and /sys in its target).
umount_under() {
  local dir=$1 m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done < <(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
}

build_pause() { # OUT
  local out=$1 src work cid
  src="$(k8s_module_dir)/build/pause/linux/pause.c"
  work=$(mktemp -d "$LOCAL/pause.XXXXXX")
  gcc -Os -Wall -Werror -static -DVERSION=v3.10.2 -o "$work/pause" "$src"
  strip "$work/pause"
  cid=$(buildah_local from scratch)
  buildah_local copy "$cid" "$work/pause" /pause >/dev/null
  buildah_local config --entrypoint '["/pause"]' --user 65535:65535 "$cid"
  buildah_local commit --quiet --rm "$cid" "$PAUSE_IMAGE" >/dev/null
  buildah_local push --quiet "$PAUSE_IMAGE" "docker-archive:$out:$PAUSE_IMAGE" >/dev/null
  buildah_local rmi "$PAUSE_IMAGE" >/dev/null
  rm -rf "$work"
}

build_aws_client() { # OUT
  local out=$1 work rootfs cid pins mirror=${CUC_DEBIAN_MIRROR:-http://deb.debian.org/debian} chroot
  chroot=$(command -v chroot)
  local stale
  for stale in "$LOCAL"/aws-client.*; do
    [[ -d "$stale" ]] || continue
    umount_under "$stale"
    rm -rf --one-file-system "$stale"
  done
  work=$(mktemp -d "$LOCAL/aws-client.XXXXXX")
  rootfs="$work/rootfs"
  # shellcheck disable=SC2064
  trap "umount_under '$work'" RETURN
  log "aws-client image: debootstrap minbase bookworm + python3 (a few minutes, once per machine)"
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  umount_under "$rootfs"
  rm -rf "${rootfs:?}"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  # A venv of the image's own python3, filled by the host's pip (in a throwaway venv):
  # awscli and boto3 are pure Python (PyYAML's wheel is cp311 manylinux, as the image's
  # Python 3.11 needs).
  env PATH=/usr/bin:/bin "$chroot" "$rootfs" /usr/bin/python3 -m venv --without-pip /opt/aws
  pins=$(grep -E '^(awscli|boto3)==' "$ROOT/testbed/cognito/requirements.txt")
  python3 -m venv "$work/pip"
  # shellcheck disable=SC2086
  "$work/pip/bin/pip" install --quiet --disable-pip-version-check --no-compile \
    --python-version 3.11 --only-binary=:all: \
    --target "$rootfs/opt/aws/lib/python3.11/site-packages" $pins
  rm -rf "$rootfs/opt/aws/lib/python3.11/site-packages/bin"
  cat > "$rootfs/opt/aws/bin/aws" <<'PY'
#!/opt/aws/bin/python3
import sys

from awscli.clidriver import main

if __name__ == "__main__":
    sys.exit(main())
PY
  chmod 0755 "$rootfs/opt/aws/bin/aws"
  # Bytecode now: the image's root filesystem is read-only in the recipes.
  env -u PYTHONDONTWRITEBYTECODE PATH=/usr/bin:/bin "$chroot" "$rootfs" /opt/aws/bin/python3 -m compileall -q -j 2 /opt/aws/lib >/dev/null
  env PATH=/opt/aws/bin:/usr/bin:/bin "$chroot" "$rootfs" /bin/sh -c \
    'aws --version && python3 -c "import boto3; print(\"boto3\", boto3.__version__)"' \
    | sed 's/^/[aws-client] /' >&2
  rm -rf "${rootfs:?}"/dev/* "${rootfs:?}"/proc/* "${rootfs:?}"/sys/* "${rootfs:?}"/run/* "${rootfs:?}"/tmp/*
  cid=$(buildah_local from scratch)
  tar -C "$rootfs" -cf "$work/rootfs.tar" .
  buildah_local add "$cid" "$work/rootfs.tar" / >/dev/null
  buildah_local config --env PATH=/opt/aws/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env HOME=/tmp --cmd '["/bin/sh"]' --workingdir /tmp "$cid"
  buildah_local commit --quiet --rm "$cid" localhost/aws-client:dev >/dev/null
  buildah_local push --quiet localhost/aws-client:dev "docker-archive:$out:localhost/aws-client:dev" >/dev/null
  buildah_local rmi localhost/aws-client:dev >/dev/null
  umount_under "$work"
  rm -rf --one-file-system "$work"
}

build_go_sts() { # OUT
  local out=$1 work cid image=localhost/go-sts:dev
  work=$(mktemp -d "$LOCAL/go-sts.XXXXXX")
  (cd "$ROOT/testbed/go-sts" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -buildvcs=false -trimpath -ldflags='-s -w' -o "$work/go-sts" .)
  cid=$(buildah_local from scratch)
  buildah_local copy --chmod 0755 "$cid" "$work/go-sts" /go-sts >/dev/null
  buildah_local config --entrypoint '["/go-sts"]' --user 65532:65532 "$cid"
  buildah_local commit --quiet --rm "$cid" "$image" >/dev/null
  buildah_local push --quiet "$image" "docker-archive:$out:$image" >/dev/null
  buildah_local rmi "$image" >/dev/null
  rm -rf "$work"
}

# ensure_image NAME BUILDER INPUT...: $IMAGE_CACHE/NAME-<key>.tar, built once per key.
ensure_image() {
  local name=$1 fn=$2; shift 2
  local key out
  key=$(image_key "$fn" "$@")
  out="$IMAGE_CACHE/$name-$key.tar"
  if [[ ! -f "$out" ]]; then
    cache_lock "$out"
  fi
  if [[ ! -f "$out" ]]; then
    mkdir -p "$IMAGE_CACHE"
    local start; start=$(date +%s)
    rm -f "$out.partial"
    "$fn" "$out.partial" >&2
    mv "$out.partial" "$out"
    log "image $name built in $(( $(date +%s) - start ))s: $(du -h "$out" | cut -f1)"
    local old
    for old in "$IMAGE_CACHE/$name"-*.tar; do
      [[ "$old" == "$out" ]] || [[ -n "$(find "$old" -mtime -1 2>/dev/null)" ]] || rm -f "$old"
    done
  fi
  [[ -z "${FD_LOCK:-}" ]] || cache_unlock
  touch "$out"
  echo "$out"
}

# The archives of the four images, one a line, building what is missing.
ensure_node_images() {
  ensure_debs buildah debootstrap gcc libc6-dev
  ensure_image pause build_pause "$(sha256sum "$(k8s_module_dir)/build/pause/linux/pause.c")" \
    "$PAUSE_IMAGE" "$(gcc --version | sed -n 1p)"
  ensure_image aws-client build_aws_client "$(grep -E '^(awscli|boto3)==' "$ROOT/testbed/cognito/requirements.txt")" \
    "$(python3 -c 'import sys; print(sys.version_info[:2])')"
  ensure_image go-sts build_go_sts "$(cd "$ROOT/testbed/go-sts" && sha256sum main.go go.mod go.sum)" \
    "$(go version)"
  "$ROOT/testbed/image.sh" >&2
  echo "$LOCAL/images/cognito-unauth-controller.tar"
}
