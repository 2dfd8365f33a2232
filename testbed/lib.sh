# shellcheck shell=bash
# Shared helpers for the local test bed. Sourced by up.sh, down.sh, build.sh.
#
# Layout:
#   $ROOT/.local/venv        Python venv with moto, boto3, awscli (pinned)
#   $ROOT/.local/run/        pids, logs, certificates, etcd data of a running test bed
#   $ROOT/.local/kubeconfig  admin kubeconfig (client certificate)
#   $ROOT/.local/env         export lines for people and tests
#   $CACHE/                  Go-built cluster binaries, keyed by the pin (outside git)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
RUN="$LOCAL/run"
VENV="$LOCAL/venv"
CACHE="${CUC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cognito-unauth-controller}"

# The node (testbed/node.sh) lives in a network namespace of its own, joined to the host
# by one veth pair. What is machine-global (the namespace, the host-side veth, the host's
# nft table, the cgroup root, the addresses) is named after a short hash of $ROOT, so the
# test beds of two work trees never collide; up.sh refuses to start when another bed (or
# anything else) already holds this bed's addresses or its service range (set
# CUC_BED_INDEX=2..251 to move both).
BED_ID=$(printf '%s' "$ROOT" | sha256sum | cut -c1-6)
BED_INDEX=${CUC_BED_INDEX:-$(( 16#$BED_ID % 250 + 2 ))}
# shellcheck disable=SC2034  # none read here: the scripts that source lib.sh read them
{
NODE_NETNS="cuc-$BED_ID"            # /run/netns/cuc-<id>: kubelet, containerd, kube-proxy, the bridge
HOST_VETH="cuc-$BED_ID"             # host side of the link; "host0" in the node's namespace
NFT_TABLE="cuc_$BED_ID"             # the host's guard (inet family)
CGROUP_ROOT="/cuc-$BED_ID"          # the kubelet's cgroupRoot, in every v1 hierarchy
BED_NET="10.234.$BED_INDEX"         # this bed's /24: nothing outside it is ever routed to
POD_CIDR="$BED_NET.0/25"            # pods; the bridge (cni0) is $BED_NET.1
BRIDGE_IP="$BED_NET.1"
LINK_CIDR="$BED_NET.128/30"
HOST_IP="$BED_NET.129"              # the API server and the Cognito proxy, as pods see them
NODE_IP="$BED_NET.130"              # the node's InternalIP
# The Services' range, per bed like its /24 and beside it (10.235/16, never 10.234/16): a
# fixed one (Kubernetes' default 10.96.0.0/12, say) would shadow a cluster this machine
# belongs to, since the host routes it to the node. Only kube-proxy's rules in the node's
# namespace answer it.
SERVICE_NET="10.235.$BED_INDEX"
SERVICE_CIDR="$SERVICE_NET.0/24"
KUBERNETES_SERVICE_IP="$SERVICE_NET.1"   # the kubernetes Service: the range's first address
NODE_NAME="testbed-node"
DEMO_LIFETIME_SECONDS=300          # the demo pool's credentials, set by `make run` (run.sh)
NODE_DIR="$RUN/node"                # containerd's root and state, the kubelet's root, configs
PAUSE_IMAGE="registry.k8s.io/pause:3.10.2"   # containerd 2.3's default sandbox image name
}

log() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

# need CMD HOW: fail with an exact instruction when a tool is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  die "'$1' is missing. $2"
}

check_prereqs() {
  need go "Install Go 1.26 or newer (https://go.dev/doc/install); the cluster binaries are built from the Go module proxy."
  check_python
  need openssl "Install it: apt-get update && apt-get install -y openssl"
  need curl "Install it: apt-get update && apt-get install -y curl"
}

# What the venv (ensure_venv) is made with: python3 and its venv module.
check_python() {
  need python3 "Install Python 3.10+ with venv: apt-get install -y python3 python3-venv"
  python3 -c 'import venv, ensurepip' 2>/dev/null \
    || die "Python's venv module is missing. Install it: apt-get update && apt-get install -y python3-venv"
}

# A free TCP port on 127.0.0.1 (the kernel picks it; the window for a race is tiny).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_until SECONDS WHAT CMD...: poll CMD until it succeeds, or fail after SECONDS.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(date +%s%N) / 1000000 + secs * 1000 ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s%N) / 1000000 > deadline )); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

# ---------------------------------------------------------------- Python venv
# venv_requirements FILE: pip install -r FILE into $VENV (made first if need be), unless
# the venv is there and FILE's sha256 is the one stamped when it was last installed
# ($VENV/.<FILE's name less .txt>.sha256).
venv_requirements() {
  local req=$1 stamp want
  stamp="$VENV/.$(basename "$req" .txt).sha256"
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing Python packages into $VENV ($(sed -nE 's/^([A-Za-z0-9_.-]+).*/\1/p' "$req" | paste -sd, - | sed 's/,/, /g'))"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
}

# moto, boto3 and the aws CLI (testbed/cognito/requirements.txt).
ensure_venv() {
  venv_requirements "$ROOT/testbed/cognito/requirements.txt"
}

# ensure_venv, plus pytest and ruff (testbed/cognito/requirements-dev.txt) in the same venv.
ensure_dev_venv() {
  ensure_venv
  venv_requirements "$ROOT/testbed/cognito/requirements-dev.txt"
}

# ------------------------------------------------------- Go-built cluster binaries
# The cache key covers the pin (go.mod/go.sum/sources), the Go version and the link flags.
go_key() {
  local dir=$1
  { go version; go_ldflags "$dir"; go_tags "$dir"; cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go; } | sha256sum | cut -c1-16
}

# Build tags of the module in DIR (its build.tags file, if any).
go_tags() {
  if [[ -f "$1/build.tags" ]]; then tr -s ' \n' ' ' < "$1/build.tags" | sed 's/ $//'; fi
}

# Link flags: strip symbols, and stamp the Kubernetes version (module builds report
# v0.0.0-master otherwise, which kubectl and helm refuse to parse).
go_ldflags() {
  local dir=$1 v
  v=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$dir/go.mod")
  if [[ -n "$v" ]]; then
    local major=${v#v}; major=${major%%.*}
    local minor=${v#v*.}; minor=${minor%%.*}
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
        "$pkg" "$v" "$pkg" "$major" "$pkg" "$minor" "$pkg"
    done
  fi
  v=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$dir/go.mod")
  if [[ -n "$v" ]]; then
    # As helm's Makefile does: its version, and the Kubernetes version it assumes offline.
    local cg minor
    cg=$(awk '$1 == "k8s.io/client-go" {print $2}' "$dir/go.mod")
    minor=${cg#v0.}; minor=${minor%%.*}
    printf -- '-X helm.sh/helm/v3/internal/version.version=%s ' "$v"
    printf -- '-X helm.sh/helm/v3/pkg/%s.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/%s.k8sVersionMinor=%s ' \
      lint/rules lint/rules "$minor" chartutil chartutil "$minor"
  fi
  printf -- '-s -w'
}

k8s_bin_dir() { echo "$CACHE/k8s-$(go_key "$ROOT/testbed/k8s")"; }
etcd_bin_dir() { echo "$CACHE/etcd-$(go_key "$ROOT/testbed/etcd")"; }
helm_bin_dir() { echo "$CACHE/helm-$(go_key "$ROOT/testbed/helm")"; }
containerd_bin_dir() { echo "$CACHE/containerd-$(go_key "$ROOT/testbed/containerd")"; }
runc_bin_dir() { echo "$CACHE/runc-$(go_key "$ROOT/testbed/runc")"; }
kubeconform_bin_dir() { echo "$CACHE/kubeconform-$(go_key "$ROOT/testbed/kubeconform")"; }
helm_docs_bin_dir() { echo "$CACHE/helm-docs-$(go_key "$ROOT/testbed/helm-docs")"; }
helm_values_schema_bin_dir() { echo "$CACHE/helm-values-schema-json-$(go_key "$ROOT/testbed/helm-values-schema-json")"; }

# cache_lock PATH: holds PATH.lock (an open descriptor, in FD_LOCK) until the calling
# shell exits or cache_unlock: two clones' make test building the same tool at the same
# time on one machine take turns, and the second finds the first's result (each would
# otherwise delete the other's half-built .partial directory).
cache_lock() {
  mkdir -p "$(dirname "$1")"
  exec {FD_LOCK}>"$1.lock"
  flock "$FD_LOCK"
}
cache_unlock() { exec {FD_LOCK}>&-; }

# bed_lock: holds .local/bed.lock (an open descriptor, in FD_BED) until the calling script
# exits. up.sh, down.sh and the fault matrix's restart scripts take it: a test starting
# while node_faults has the kubelet stopped (or apiserver_restart the API server) waits
# for the part to come back, instead of finding a bed with a part missing and replacing
# the whole bed under every test that runs beside it (CI saw seven tests fail at once so).
# A script run by one that holds it (CUC_BED_LOCKED) does not take it again. The bed's
# processes never inherit it (start closes it).
bed_lock() {
  [[ -z "${CUC_BED_LOCKED:-}" ]] || return 0
  mkdir -p "$LOCAL"
  exec {FD_BED}>"$LOCAL/bed.lock"
  flock -w 900 "$FD_BED" || die "another script held $LOCAL/bed.lock for 15 minutes (up.sh, down.sh or a restart-*.sh of this tree)"
  export CUC_BED_LOCKED=1
}

# build_go DIR OUT PKG...: build PKGs of the Go module in DIR into OUT, once per key.
build_go() {
  local dir=$1 out=$2; shift 2
  if [[ -f "$out/.complete" ]]; then
    touch "$out/.used"
    return 0
  fi
  cache_lock "$out"
  if [[ -f "$out/.complete" ]]; then
    cache_unlock
    touch "$out/.used"
    return 0
  fi
  log "building $* from the Go module proxy into $out (first time only; several minutes)"
  local start; start=$(date +%s)
  rm -rf "$out.partial"
  mkdir -p "$out.partial"
  (cd "$dir" && go build -buildvcs=false -trimpath -tags "$(go_tags "$dir")" \
    -ldflags "$(go_ldflags "$dir")" -o "$out.partial/" "$@") \
    || die "go build of $* failed (module $dir)"
  rm -rf "$out"
  mv "$out.partial" "$out" || die "could not move $out.partial to $out"
  touch "$out/.used"
  # Builds for an older pin are dead weight; but another work tree of this project (a
  # branch on another pin) may still use one: drop those unused for a week.
  local sibling
  for sibling in "${out%-*}"-*; do
    [[ "$sibling" != "$out" && -d "$sibling" && ! "$sibling" == *.partial ]] || continue
    if [[ -z "$(find "$sibling/.used" "$sibling/.complete" -maxdepth 0 -mtime -7 2>/dev/null)" ]]; then
      rm -rf "$sibling"
    fi
  done
  echo "$(( $(date +%s) - start ))" > "$out/.complete"
  cache_unlock
  log "built in $(cat "$out/.complete")s"
}

ensure_cluster_binaries() {
  build_go "$ROOT/testbed/etcd" "$(etcd_bin_dir)" .
  build_go "$ROOT/testbed/k8s" "$(k8s_bin_dir)" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy
}

# The node's container runtime: containerd 2.x and runc, from the Go module proxy.
# runc needs cgo and libseccomp (Debian's libseccomp-dev, found with pkg-config).
ensure_runtime_binaries() {
  ensure_debs libseccomp-dev pkg-config
  build_go "$ROOT/testbed/containerd" "$(containerd_bin_dir)" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
  CGO_ENABLED=1 build_go "$ROOT/testbed/runc" "$(runc_bin_dir)" github.com/opencontainers/runc
}

# ensure_debs PKG...: install the Debian packages that are missing (once per machine).
ensure_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  (( ${#missing[@]} )) || return 0
  command -v apt-get >/dev/null 2>&1 \
    || die "missing Debian packages: ${missing[*]}; install them with your distribution's tools"
  log "installing Debian packages: ${missing[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
      install -y -q --no-install-recommends "${missing[@]}"; } >"${TMPDIR:-/tmp}/cuc-apt.log" 2>&1 \
    || { tail -20 "${TMPDIR:-/tmp}/cuc-apt.log" >&2
         die "could not install them: apt-get update && apt-get install -y ${missing[*]}"; }
}

ensure_helm() {
  build_go "$ROOT/testbed/helm" "$(helm_bin_dir)" helm.sh/helm/v3/cmd/helm
}

# The chart's static checks (testbed/chart-check.sh): kubeconform validates rendered
# manifests, helm-docs writes the chart's README from values.yaml, helm-values-schema-json
# its values.schema.json (chart_values_schema).
ensure_chart_tools() {
  build_go "$ROOT/testbed/kubeconform" "$(kubeconform_bin_dir)" github.com/yannh/kubeconform/cmd/kubeconform
  build_go "$ROOT/testbed/helm-docs" "$(helm_docs_bin_dir)" github.com/norwoodj/helm-docs/cmd/helm-docs
  build_go "$ROOT/testbed/helm-values-schema-json" "$(helm_values_schema_bin_dir)" github.com/losisin/helm-values-schema-json/v2
}

# chart_values_schema OUT: the chart's values.schema.json as helm-values-schema-json makes
# it from values.yaml, written to OUT (an absolute path, or - for stdout): the types of
# the defaults, the `# @schema` annotations, the helm-docs `# --` comments as descriptions;
# draft 7 (what Helm before 3.18 validates), the top level closed to unknown keys. `make
# chart-docs` writes it, testbed/chart-check.sh fails when the committed one differs.
chart_values_schema() {
  (cd "$ROOT/charts/cognito-unauth-controller" \
    && "$(helm_values_schema_bin_dir)/helm-values-schema-json" --values values.yaml --output "$1" \
      --draft 7 --indent 2 --use-helm-docs --schema-root.additional-properties=false)
}

# ----------------------------------------------------------------- processes
# A pid file holds the pid, the process's start time (field 22 of /proc/PID/stat, clock
# ticks after boot) and the boot's id: a pid file that outlived its process (a crash, a
# reboot) names whatever has that pid now, which is never signalled.
proc_start() { # PID: its start time
  local stat f
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -r -a f <<<"${stat##*) }"   # the fields after the command name, from field 3 on
  echo "${f[19]}"
}
boot_id() { cat /proc/sys/kernel/random/boot_id; }

# start NAME CMD...: run CMD in its own session (process group), log to $RUN/NAME.log.
start() {
  local name=$1; shift
  if [[ -n "${FD_BED:-}" ]]; then
    setsid "$@" > "$RUN/$name.log" 2>&1 < /dev/null {FD_BED}>&- &
  else
    setsid "$@" > "$RUN/$name.log" 2>&1 < /dev/null &
  fi
  local pid=$!
  # The start time is the fork's: the same before and after setsid execs CMD. (A process
  # already gone leaves none, and its pid file then never matches.)
  printf '%s\n%s\n%s\n' "$pid" "$(proc_start "$pid" || true)" "$(boot_id)" > "$RUN/$name.pid"
}

# same_process PID START BOOT: PID is still the process that pid file recorded. A pid file
# written before start times were (a bed started by an older lib.sh) has none: its
# process must then name this tree, its cache or its node state on its command line.
same_process() {
  local pid=$1 start=$2 boot=$3
  [[ "$pid" =~ ^[0-9]+$ && -e "/proc/$pid" ]] || return 1
  if [[ -n "$start" ]]; then
    [[ "$boot" == "$(boot_id)" && "$(proc_start "$pid")" == "$start" ]]
  else
    { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null \
      | grep -qF -e "$ROOT/" -e "$CACHE/" -e "/run/cuc-$BED_ID/"
  fi
}

# read_pidfile NAME: sets pid, start and boot from $RUN/NAME.pid (false without one).
read_pidfile() {
  pid="" start="" boot=""
  [[ -f "$RUN/$1.pid" ]] || return 1
  { read -r pid; read -r start; read -r boot; } < "$RUN/$1.pid" || true
}

# stop NAME: TERM the process group, wait up to 10 s, then KILL it; only when the pid
# file still names the process we started.
stop() {
  local name=$1 pid start boot
  read_pidfile "$name" || return 0
  if same_process "$pid" "$start" "$boot"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      same_process "$pid" "$start" "$boot" || break
      sleep 0.1
    done
    # The group's stragglers too. Once the leader is gone its pid cannot be reused while
    # any process of its group remains, so a pid that runs again is someone else's.
    if same_process "$pid" "$start" "$boot" || [[ ! -e "/proc/$pid" ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  elif [[ "$pid" =~ ^[0-9]+$ && -e "/proc/$pid" ]]; then
    log "$name: not signalled: its pid file names pid $pid, now another process (ours is gone: a crash, a reboot)"
  else
    log "$name: was not running (a stale pid file)"
  fi
  rm -f "$RUN/$name.pid"
}

# buildah with this tree's own storage (vfs: no daemon, no overlay mounts) and its own
# network config dir: by default every buildah command creates /etc/cni/net.d.
buildah_local() {
  mkdir -p "$LOCAL/buildah"
  [[ -f "$LOCAL/buildah/containers.conf" ]] \
    || printf '[network]\nnetwork_config_dir = "%s"\n' "$LOCAL/buildah/cni" > "$LOCAL/buildah/containers.conf"
  CONTAINERS_CONF="$LOCAL/buildah/containers.conf" buildah --storage-driver vfs \
    --root "$LOCAL/buildah/root" --runroot "$LOCAL/buildah/run" "$@"
}

# Mount points and their file system types, from /proc/self/mountinfo.
mounts() { awk '{for (i = 7; i <= NF; i++) if ($i == "-") {print $5, $(i + 1); break}}' /proc/self/mountinfo; }

alive() { local pid start boot; read_pidfile "$1" && same_process "$pid" "$start" "$boot"; }

# write_kubeconfig FILE SERVER CA USER CERT KEY
write_kubeconfig() {
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: $2
    certificate-authority: $3
users:
- name: $4
  user:
    client-certificate: $5
    client-key: $6
contexts:
- name: testbed
  context: {cluster: testbed, user: $4, namespace: default}
current-context: testbed
KC
}

# ------------------------------------------------------- tools from crates.io, cached
# cargo_tool NAME VERSION [NICE [INSTALL-ARGS...]]: `cargo install` NAME at VERSION into
# the cache (once per machine, shared by every clone), at niceness NICE (default 0), with
# INSTALL-ARGS (features); prints its bin directory. Tools are built at opt-level 1: they
# run for seconds, and a cold machine builds them while it waits.
cargo_tool() {
  local name=$1 version=$2 nice=${3:-0} dir="$CACHE/tools/$1-$2"
  shift $(( $# < 3 ? $# : 3 ))
  if [[ ! -x "$dir/bin/$name" ]]; then
    cache_lock "$dir"
    if [[ ! -x "$dir/bin/$name" ]]; then
      log "installing $name $version from crates.io into $dir (first time only)"
      rm -rf "$dir.partial"
      CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        nice -n "$nice" cargo install --locked --quiet "$name" --version "$version" --root "$dir.partial" "$@" >&2 \
        || die "could not install $name: cargo install --locked $name --version $version"
      { rm -rf "$dir" && mv "$dir.partial" "$dir"; } || die "could not move $dir.partial to $dir"
    fi
    cache_unlock
  fi
  echo "$dir/bin"
}

# promtool, built from the Go module proxy (the chart's alerts).
promtool_dir() { echo "$CACHE/promtool-$(go_key "$ROOT/testbed/promtool")"; }
ensure_promtool() {
  build_go "$ROOT/testbed/promtool" "$(promtool_dir)" github.com/prometheus/prometheus/cmd/promtool
}
