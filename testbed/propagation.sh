#!/usr/bin/env bash
# Measures the kubelet's Secret propagation delay on the test bed's node: the time from a
# Secret's write to its new bytes in a pod's mounted file, with the kubelet's default
# settings (syncFrequency 1m, Secret change detection by watch), over PODS pods x ROUNDS
# writes. Each pod (localhost/aws-client:dev) reads its file every 0.1 s and prints the
# time and the new value when it changes; each round writes every pod's Secret, waits for
# every pod to show it, then waits a random 0-10 s (so writes fall anywhere in the
# kubelet's sync cycle). Delay = first time the pod saw the value - time just before the
# write was sent (so it is an upper bound by the write's own few ms).
#
#   testbed/propagation.sh [PODS] [ROUNDS]     (make propagation; default 10 x 6)
#
# Prints every sample and then min / median / p90 / max and n; docs/usage.md quotes it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -f "$LOCAL/env" ]] || die "no test bed is running: make up"
# shellcheck disable=SC1091
source "$LOCAL/env"
[[ "${CUC_NODE:-on}" == on ]] || die "the test bed has no node, so no pod to measure in ($CUC_NODE_REASON)"
pods=${1:-10}
rounds=${2:-6}
ns="propagation-$(date +%s)"
work=$(mktemp -d)
bg=()
cleanup() {
  local p
  for p in "${bg[@]}"; do kill "$p" 2>/dev/null || true; done
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

kubectl create namespace "$ns" >/dev/null
for i in $(seq 1 "$pods"); do
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata: {name: s$i, namespace: $ns}
stringData: {v: r0}
---
apiVersion: v1
kind: Pod
metadata: {name: p$i, namespace: $ns}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: watch
    image: localhost/aws-client:dev
    imagePullPolicy: Never
    command: ["python3", "-u", "-c"]
    args:
    - |
      import time
      last = None
      while True:
          try:
              v = open("/s/v").read()
          except OSError:
              v = None
          if v != last:
              print("%.3f %s" % (time.time(), v), flush=True)
              last = v
          time.sleep(0.1)
    volumeMounts: [{name: s, mountPath: /s, readOnly: true}]
  volumes: [{name: s, secret: {secretName: s$i}}]
EOF
done | kubectl apply -f - >/dev/null
kubectl -n "$ns" wait --for=condition=Ready pod --all --timeout=180s >/dev/null
for i in $(seq 1 "$pods"); do
  kubectl -n "$ns" logs -f "p$i" >"$work/p$i.log" 2>/dev/null &
  bg+=($!)
done
: >"$work/writes"
for r in $(seq 1 "$rounds"); do
  for i in $(seq 1 "$pods"); do
    printf '%s %s r%s\n' "$i" "$(date +%s.%N)" "$r" >>"$work/writes"
    kubectl -n "$ns" patch secret "s$i" --type merge -p "{\"stringData\":{\"v\":\"r$r\"}}" >/dev/null
  done
  deadline=$(( $(date +%s) + 300 ))
  for i in $(seq 1 "$pods"); do
    until grep -q " r$r\$" "$work/p$i.log"; do
      (( $(date +%s) < deadline )) || die "pod p$i did not see round $r in 300 s"
      sleep 0.5
    done
  done
  log "round $r/$rounds: every pod saw it"
  sleep "$(( RANDOM % 11 ))"
done

python3 - "$work" "$pods" "$rounds" <<'EOF'
import sys, statistics
work, pods, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
writes = {}
for line in open(f"{work}/writes"):
    i, t, v = line.split()
    writes[(int(i), v)] = float(t)
delays = []
for i in range(1, pods + 1):
    for line in open(f"{work}/p{i}.log"):
        t, _, v = line.strip().partition(" ")
        if (i, v) in writes:
            delays.append(float(t) - writes[(i, v)])
delays.sort()
for d in delays:
    print(f"sample {d:.2f}")
q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))]
print(f"n={len(delays)} min={delays[0]:.1f}s median={statistics.median(delays):.1f}s "
      f"p90={q(0.9):.1f}s max={delays[-1]:.1f}s")
EOF
