#!/usr/bin/env python3
"""The benchmark: what the controller costs the cluster and the AWS account.

Runs on the local test bed with the proxy enforcing AWS's default Cognito quotas
(GetId 25/s, GetCredentialsForIdentity 200/s, account-wide), against the shipped binary
(the image profile). Writes are counted from the API server's own audit log, by the
controller's user agent. Prints one summary line per figure; with --markdown FILE also
writes the table.

    testbed/bench.py --n 1000 [--markdown docs/benchmarks.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
UA = "cognito-unauth-controller/"


def env_file() -> dict[str, str]:
    out = {}
    for line in (LOCAL / "env").read_text().splitlines():
        if line.startswith("export "):
            k, v = line[len("export ") :].split("=", 1)
            out[k] = v.strip('"')
    return out


ENV = env_file()
PROXY = ENV["AWS_ENDPOINT_URL_COGNITO_IDENTITY"] + "/_proxy"
CHILD_ENV = dict(os.environ)
CHILD_ENV.update({k: v for k, v in ENV.items() if k != "PATH"})
CHILD_ENV["PATH"] = f"{ENV['TESTBED_BIN']}:{ENV['TESTBED_VENV']}/bin:{os.environ['PATH']}"


def proxy(method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        PROXY + path, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def kubectl(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=CHILD_ENV, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"kubectl {args[:3]}: {r.stderr}")
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calls(pool: str) -> dict[str, int]:
    return proxy("GET", "/calls")["pools"].get(pool, {})


def throttled() -> int:
    return sum(o.get("TooManyRequestsException", 0) for o in proxy("GET", "/calls")["outcomes"].values())


class Audit:
    """Counts the controller's writes from the API server's audit log."""

    def __init__(self) -> None:
        self.path = LOCAL / "run" / "audit.log"

    def mark(self) -> tuple[int, int]:
        st = self.path.stat()
        return (st.st_ino, st.st_size)

    def _since(self, mark: tuple[int, int]):
        """The log's lines after `mark`. The API server rotates its audit log (by size): a
        rotation between mark and now would make an offset count nothing, so it fails loudly."""
        ino, size = mark
        st = self.path.stat()
        if st.st_ino != ino or st.st_size < size:
            raise SystemExit(
                "the audit log was rotated during a measured phase: raise --audit-log-maxsize in testbed/up.sh"
            )
        with open(self.path, "rb") as f:
            f.seek(size)
            yield from f

    def writes(self, since: tuple[int, int]) -> dict[str, int]:
        return self.requests(since, ("create", "update", "patch", "delete"))

    def requests(self, since: tuple[int, int], verbs: tuple[str, ...]) -> dict[str, int]:
        """The controller's requests with one of `verbs`, by resource[/subresource]."""
        out: dict[str, int] = {}
        for line in self._since(since):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not (e.get("userAgent") or "").startswith(UA):
                continue
            if e.get("verb") not in verbs:
                continue
            ref = e.get("objectRef", {})
            key = ref.get("resource", "?") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            out[key] = out.get(key, 0) + 1
        return out


class Controller:
    def __init__(self, binary: Path, ns: str, log: Path) -> None:
        self.port = free_port()
        env = dict(
            CHILD_ENV, WATCH_NAMESPACES=ns, METRICS_ADDRESS=f"127.0.0.1:{self.port}", LOG_LEVEL="warn", CONCURRENCY="16"
        )
        self.log = log
        self.proc = subprocess.Popen([str(binary)], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def metric(self, series: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith(series):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_reconciled(self, n: int, timeout: float) -> float:
        """Seconds until this process has reconciled at least n times."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.metric("cognito_unauth_controller_reconciliations_total") >= n:
                return time.monotonic() - start
            time.sleep(0.2)
        raise SystemExit(f"fewer than {n} reconciles after {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick

    def rss_mib(self) -> tuple[float, float]:
        st = {
            line.split(":")[0]: line.split(":")[1].strip()
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
            if ":" in line
        }
        return int(st["VmRSS"].split()[0]) / 1024, int(st["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def ready_count(ns: str) -> tuple[int, int]:
    items = json.loads(kubectl("-n", ns, "get", "cuc", "-o", "json"))["items"]
    ready = 0
    for o in items:
        for c in (o.get("status") or {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                ready += 1
    return ready, len(items)


def wait_all_ready(ns: str, n: int, timeout: float, start: float | None = None) -> float:
    """Seconds from `start` (default: now) until n resources are Ready."""
    start = time.monotonic() if start is None else start
    while time.monotonic() - start < timeout:
        r, _ = ready_count(ns)
        if r >= n:
            return time.monotonic() - start
        time.sleep(0.5)
    raise SystemExit(f"only {ready_count(ns)[0]}/{n} Ready after {timeout:.0f}s")


def manifests(ns: str, n: int, pool: str, prefix: str = "cred", start: int = 0) -> str:
    docs = [
        "apiVersion: cognito.kubecred.io/v1alpha1\nkind: CognitoUnauthCredential\n"
        f"metadata:\n  name: {prefix}-{i:05d}\n  namespace: {ns}\nspec:\n  identityPoolId: {pool}\n"
        for i in range(start, start + n)
    ]
    return "---\n".join(docs)


def verdict(ok: bool, applies: bool) -> str:
    """' (met)' or ' (missed)' where the target applies at this scale, else nothing."""
    if not applies:
        return " (target applies at full scale)"
    return " (met)" if ok else " (missed)"


def no_throttle_condition(ns: str) -> None:
    """No throttling error may surface in any resource's condition."""
    items = json.loads(kubectl("-n", ns, "get", "cuc", "-o", "json"))["items"]
    bad = [
        o["metadata"]["name"]
        for o in items
        for c in (o.get("status") or {}).get("conditions", [])
        if c.get("reason") == "Throttled"
    ]
    if bad:
        raise SystemExit(f"throttling surfaced in {len(bad)} conditions, e.g. {bad[:3]}")


def wait_idle(ctl: Controller, pool: str, quiet: float = 5.0, timeout: float = 300) -> None:
    """Until the controller has used no CPU and made no Cognito call for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = (ctl.cpu_seconds(), sum(calls(pool).values()))
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = (ctl.cpu_seconds(), sum(calls(pool).values()))
        if now[1] != last[1] or now[0] - last[0] > 0.02:
            since = time.monotonic()
        last = now
        if time.monotonic() - since >= quiet:
            return
    raise SystemExit("the controller did not go idle")


def create_unrelated_secrets(ns: str, n: int, kib: int) -> None:
    """n Secrets of `kib` KiB each, without our label, in batches over a few kubectl processes."""
    import base64

    blob = base64.b64encode(os.urandom(kib * 1024)).decode()
    batch = 100
    procs: list[subprocess.Popen] = []
    for start in range(0, n, batch):
        items = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"unrelated-{i:05d}", "namespace": ns, "labels": {"app": "unrelated"}},
                "data": {"blob": blob},
            }
            for i in range(start, min(n, start + batch))
        ]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        p = subprocess.Popen(
            ["kubectl", "create", "-f", "-", "-o", "name"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=CHILD_ENV,
            text=True,
        )
        assert p.stdin is not None
        p.stdin.write(doc)
        p.stdin.close()
        procs.append(p)
        if len(procs) >= 3:
            done = procs.pop(0)
            if done.wait(timeout=600) != 0:
                raise SystemExit(f"creating unrelated Secrets failed: {done.stderr.read() if done.stderr else ''}")
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise SystemExit(f"creating unrelated Secrets failed: {p.stderr.read() if p.stderr else ''}")


def rotation_times(ns: str) -> dict[str, str]:
    items = json.loads(kubectl("-n", ns, "get", "cuc", "-o", "json"))["items"]
    return {o["metadata"]["name"]: (o.get("status") or {}).get("lastRotationTime", "") for o in items}


def cli_baseline(pool: str, n: int, ns: str) -> dict:
    """The manual way: get-id, get-credentials-for-identity, kubectl apply, per resource."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    aws = [f"{ENV['TESTBED_VENV']}/bin/aws", "--no-sign-request", "cognito-identity"]
    for i in range(n):
        out = subprocess.run(
            aws + ["get-id", "--identity-pool-id", pool, "--query", "IdentityId", "--output", "text"],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            check=True,
        )
        ident = out.stdout.strip()
        out = subprocess.run(
            aws + ["get-credentials-for-identity", "--identity-id", ident, "--output", "json"],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            check=True,
        )
        c = json.loads(out.stdout)["Credentials"]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"manual-{i:05d}", "namespace": ns},
            "stringData": {
                "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": c["SecretKey"],
                "AWS_SESSION_TOKEN": c["SessionToken"],
            },
        }
        subprocess.run(
            ["kubectl", "apply", "-f", "-"],
            input=json.dumps(secret),
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            check=True,
        )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"n": n, "wall": wall, "cpu_per_credential": cpu / n, "identities": n}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--baseline-n", type=int, default=25, help="resources for the CLI loop")
    ap.add_argument("--rotation-n", type=int, default=20)
    ap.add_argument("--steady-seconds", type=int, default=60)
    ap.add_argument(
        "--scale-to",
        type=int,
        default=5000,
        help="then grow to this many resources for memory and rotation CPU (0: skip)",
    )
    ap.add_argument(
        "--unrelated-secrets", type=int, default=10000, help="unrelated Secrets for the memory check (0: skip)"
    )
    ap.add_argument("--unrelated-kib", type=int, default=100, help="size of each unrelated Secret")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--check", action="store_true", help="fail when a target is missed")
    ap.add_argument("--binary", default=str(ROOT / "target/x86_64-unknown-linux-musl/image/cognito-unauth-controller"))
    args = ap.parse_args()
    n = args.n
    binary = Path(args.binary)
    tmp = Path(tempfile.mkdtemp(prefix="cuc-bench-"))
    audit = Audit()
    rows: list[tuple[str, str, str, str]] = []

    def row(figure: str, measured: str, target: str, ratio: str) -> None:
        rows.append((figure, measured, target, ratio))
        print(f"bench: {figure}: {measured} (target {target}; {ratio})", flush=True)

    # AWS's default quotas, account-wide, enforced by the proxy.
    proxy("DELETE", "/rules")
    proxy("POST", "/rules", {"operation": "GetId", "rate_per_second": 25})
    proxy("POST", "/rules", {"operation": "GetCredentialsForIdentity", "rate_per_second": 200})
    pool = proxy("POST", "/pools", {"region": ENV["AWS_REGION"], "guest": True, "name": "bench"})["IdentityPoolId"]
    proxy("POST", "/rules", {"pool": pool, "unique_credentials": True, "lifetime_seconds": 3600, "semantics": True})
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/cognitounauthcredentials.cognito.kubecred.io", "--timeout=60s")
    ns = f"bench-{os.getpid()}"
    kubectl("create", "namespace", ns)

    # 1. Cold start: N at once.
    ctl = Controller(binary, ns, tmp / "controller.log")
    time.sleep(1)
    cpu0, mark, thr0 = ctl.cpu_seconds(), audit.mark(), throttled()
    # The clock starts before the apply: what a user waits for is apply to all Ready.
    t0 = time.monotonic()
    kubectl("apply", "--server-side", "-f", "-", stdin=manifests(ns, n, pool))
    applied = time.monotonic() - t0
    took = wait_all_ready(ns, n, timeout=max(120, n / 25 * 3), start=t0)
    c = calls(pool)
    bound = n / 25
    thr = throttled() - thr0
    row(
        f"cold start, {n} resources",
        f"all Ready {took:.1f}s after the apply started (the apply itself took {applied:.1f}s); "
        f"{c.get('GetId', 0)} GetId, {c.get('GetCredentialsForIdentity', 0)} GetCredentialsForIdentity; "
        f"{thr} throttled",
        f"≤ {1.1 * bound:.1f}s (1.1 × N/25), no throttling",
        f"{took / bound:.2f} × N/25" + verdict(took <= 1.1 * bound and thr == 0, n >= 500),
    )
    cold_cpu = ctl.cpu_seconds() - cpu0
    cold_writes = audit.writes(mark)
    row(
        "cold start API writes",
        json.dumps(cold_writes, sort_keys=True),
        "≤ 4 per resource",
        f"{sum(cold_writes.values()) / n:.2f} per resource" + verdict(sum(cold_writes.values()) / n <= 4, True),
    )
    time.sleep(5)
    rss, peak = ctl.rss_mib()
    rss_at_n = rss
    row(
        f"memory at {n} resources",
        f"RSS {rss:.1f} MiB settled, {peak:.1f} MiB peak",
        "≤ 40 MiB at 5,000",
        f"{peak / 40:.2f} of 40 MiB",
    )
    no_throttle_condition(ns)
    row("CPU per credential (controller, cold start)", f"{cold_cpu / n * 1000:.2f} ms", "-", "-")

    # 2. Steady state: one-hour credentials, no rotation due.
    mark, c0 = audit.mark(), calls(pool)
    time.sleep(args.steady_seconds)
    c1 = calls(pool)
    steady_calls = sum(c1.values()) - sum(c0.values())
    steady_writes = sum(audit.writes(mark).values())
    row(
        f"steady state, {args.steady_seconds}s window",
        f"{steady_calls} Cognito calls, {steady_writes} API writes",
        "0 and 0",
        "met" if steady_calls == 0 and steady_writes == 0 else "missed",
    )

    # 3. Restart with N Ready.
    ctl.stop()
    mark, c0 = audit.mark(), calls(pool)
    ctl = Controller(binary, ns, tmp / "controller2.log")
    # Counted only once every resource was reconciled by the new process: a window that
    # closed before the resync would count zero for the wrong reason.
    resync = ctl.wait_reconciled(n, timeout=max(60, n / 10))
    wait_idle(ctl, pool)
    c1 = calls(pool)
    restart_calls = sum(c1.values()) - sum(c0.values())
    restart_writes = sum(audit.writes(mark).values())
    restart_gets = audit.requests(mark, ("get",)).get("secrets", 0)
    row(
        f"restart with {n} Ready",
        f"{restart_calls} Cognito calls, {restart_writes} API writes, {restart_gets} Secret GETs "
        f"(all {n} reconciled in {resync:.1f}s)",
        "0, 0 and 0 GETs after the initial LISTs",
        "met"
        if restart_calls == 0 and restart_writes == 0 and restart_gets == 0
        else ("missed" if restart_calls or restart_writes else "calls and writes met; GETs missed"),
    )

    # 3b. Grow to --scale-to: memory there, and the rotations below run at that scale.
    total = n
    if args.scale_to > n:
        total = args.scale_to
        ctl.stop()
        ctl = Controller(binary, ns, tmp / "controller-scale.log")
        time.sleep(1)
        kubectl("apply", "--server-side", "-f", "-", stdin=manifests(ns, total - n, pool, prefix="more", start=n))
        took = wait_all_ready(ns, total, timeout=(total - n) / 25 * 3)
        time.sleep(5)
        rss, peak = ctl.rss_mib()
        row(
            f"memory at {total} resources",
            f"RSS {rss:.1f} MiB settled, {peak:.1f} MiB peak (after growing from {n} in {took:.0f}s)",
            "≤ 40 MiB",
            f"{peak / 40:.2f} of 40 MiB" + verdict(peak <= 40, total >= 5000),
        )
        # Marginal: settled RSS per added resource (both settled, the second after a restart at N).
        per = (rss - rss_at_n) * 1024 * 1024 / (total - n)
        row(
            f"marginal memory per resource, {n} → {total}",
            f"{per / 1024:.2f} KiB",
            "≤ 4 KiB",
            f"{per / 4096:.2f} of 4 KiB" + verdict(per <= 4096, total - n >= 1000),
        )
        no_throttle_condition(ns)

    # 4. Rotation cost: short-lived credentials, one rotation of each resource.
    rpool = proxy("POST", "/pools", {"region": ENV["AWS_REGION"], "guest": True, "name": "bench-rotation"})[
        "IdentityPoolId"
    ]
    proxy("POST", "/rules", {"pool": rpool, "unique_credentials": True, "lifetime_seconds": 30, "semantics": True})
    m = args.rotation_n
    kubectl("apply", "--server-side", "-f", "-", stdin=manifests(ns, m, rpool, prefix="rot"))
    wait_all_ready(ns, total + m, timeout=120)
    first = {k: v for k, v in rotation_times(ns).items() if k.startswith("rot-")}
    mark, c0, cpu0 = audit.mark(), calls(rpool), ctl.cpu_seconds()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = {k: v for k, v in rotation_times(ns).items() if k.startswith("rot-")}
        if all(now[k] != first[k] for k in first):
            break
        time.sleep(0.5)
    else:
        raise SystemExit("not every resource rotated within 60s")
    time.sleep(2)
    c1 = calls(rpool)
    w = audit.writes(mark)
    per = {k: v / m for k, v in w.items()}
    gc = (c1.get("GetCredentialsForIdentity", 0) - c0.get("GetCredentialsForIdentity", 0)) / m
    gi = (c1.get("GetId", 0) - c0.get("GetId", 0)) / m
    cpu_rot = (ctl.cpu_seconds() - cpu0) / m
    row(
        "rotation cost, per rotation",
        f"{gc:.2f} GetCredentialsForIdentity, {gi:.2f} GetId, Secret writes {per.get('secrets', 0):.2f}, "
        f"status writes {per.get('cognitounauthcredentials/status', 0):.2f}, "
        f"event writes {per.get('events', 0):.2f}",
        "1, 0, 1, 1",
        "met"
        if (gc, gi, per.get("secrets", 0), per.get("cognitounauthcredentials/status", 0)) == (1, 0, 1, 1)
        else "missed",
    )
    row(f"CPU per rotation, {total} resources", f"{cpu_rot * 1000:.2f} ms", "-", "-")
    # The short-lived ones would go on rotating: remove them (their Secrets go by GC).
    kubectl("-n", ns, "delete", "cuc", *first.keys(), "--wait=true", "--timeout=120s")
    ctl.stop()

    # 4b. Unrelated Secrets: the same resources with many big Secrets that are not ours.
    if args.unrelated_secrets:
        ctl = Controller(binary, ns, tmp / "controller-before-secrets.log")
        wait_idle(ctl, pool)
        before_rss, before_peak = ctl.rss_mib()
        ctl.stop()
        t = time.monotonic()
        create_unrelated_secrets(ns, args.unrelated_secrets, args.unrelated_kib)
        made = time.monotonic() - t
        mark, c0 = audit.mark(), calls(pool)
        ctl = Controller(binary, ns, tmp / "controller-with-secrets.log")
        wait_idle(ctl, pool)
        rss, peak = ctl.rss_mib()
        extra_calls = sum(calls(pool).values()) - sum(c0.values())
        extra_writes = sum(audit.writes(mark).values())
        ctl.stop()
        row(
            f"memory with {args.unrelated_secrets} unrelated {args.unrelated_kib} KiB Secrets, {total} resources",
            f"RSS {rss:.1f} MiB settled, {peak:.1f} MiB peak, against {before_rss:.1f} / {before_peak:.1f} MiB "
            f"without them (restarted both times; Secrets created in {made:.0f}s); "
            f"{extra_calls} Cognito calls, {extra_writes} API writes",
            "≤ 5 MiB more",
            f"{peak - before_peak:+.1f} MiB peak"
            + verdict(
                peak - before_peak <= 5 and extra_calls == 0 and extra_writes == 0, args.unrelated_secrets >= 10000
            ),
        )

    # 5. Baseline: the manual CLI loop, same run.
    base = cli_baseline(pool, args.baseline_n, ns)
    ours = cold_cpu / n
    row(
        f"manual CLI loop, {base['n']} resources",
        f"{base['wall']:.1f}s wall, {base['cpu_per_credential'] * 1000:.0f} ms CPU per credential, "
        f"{base['identities']} identities (new ones every run)",
        "≥ 50× the controller's CPU per credential",
        f"{base['cpu_per_credential'] / ours:.0f}× the controller's {ours * 1000:.2f} ms"
        + verdict(base["cpu_per_credential"] / ours >= 50, True),
    )

    kubectl("delete", "namespace", ns, "--wait=false")
    if args.markdown:
        # Sections measured elsewhere (the webhook's admission latency, by
        # tests/node_webhook.rs) are kept as they are.
        kept = ""
        if os.path.exists(args.markdown):
            old = open(args.markdown).read()
            at = old.find("\n## ")
            kept = old[at:] if at >= 0 else ""
        with open(args.markdown, "w") as f:
            f.write("# Benchmarks\n\n")
            f.write(
                f"`make bench` (here: `testbed/bench.py --n {n} --scale-to {args.scale_to} "
                f"--unrelated-secrets {args.unrelated_secrets}`) on the local test bed, the proxy enforcing AWS's\n"
            )
            f.write("default Cognito quotas (GetId 25/s, GetCredentialsForIdentity 200/s, account-wide), against the\n")
            f.write("shipped binary (profile image). API writes are counted from the API server's audit log by the\n")
            f.write("controller's user agent. Cognito calls are counted by the proxy.\n\n")
            f.write(
                f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
                f"{platform.system()} {platform.release()}; the API server,\n"
            )
            f.write("etcd, moto, the proxy, the controller and the benchmark share it.\n\n")
            f.write("| figure | measured | target | ratio |\n| --- | --- | --- | --- |\n")
            for r in rows:
                f.write("| " + " | ".join(r) + " |\n")
            f.write("\nThe memory at 5,000 is measured after growing from N (the controller restarted at N, so the\n")
            f.write("cold start's events are not in it; they cost ~100 bytes each for six minutes). Where the memory\n")
            f.write("goes, and what changed to meet the target: [dev/memory-profile.md](dev/memory-profile.md).\n")
            f.write(kept)
    # Which targets this run checked: at a small N (make test) the full-scale targets are
    # reported but not judged; say which were.
    judged = [r[0] for r in rows if r[3] in ("met", "missed") or r[3].endswith(("(met)", "(missed)"))]
    print(f"bench: targets judged at this scale: {'; '.join(judged)}", file=sys.stderr)
    if args.check:
        missed = [r for r in rows if r[3] == "missed" or r[3].endswith("(missed)")]
        if missed:
            print(f"bench: missed {len(missed)} target(s)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
