#!/usr/bin/env python3
"""The project's test runner (`make test`): builds every test binary once, then runs the
unit tests binary by binary and the integration tests side by side, one process per test,
scheduled by testbed/tests.toml (which tests run alone, which share a group, which go
first). In-repo, standard library only: nothing to compile on a new machine (cargo-nextest
cost a cold CI ten minutes of its two cores before any test ran).

  runner.py build [CARGO-ARGS...]   cargo test --no-run; remembers the binaries it built
  runner.py unit                    the lib, bin and tests.toml's unit_binaries, whole
  runner.py integration [--no-node] every other test, one process each
  runner.py count-node              how many tests need the node
  runner.py slowest [N]             the N slowest tests of the last integration run

Each test's output goes to target/cuc-tests/logs/ and is printed when it fails; results
in target/cuc-tests/results.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "cuc-tests"
BINARIES = OUT / "binaries.json"
RESULTS = OUT / "results.json"
CONFIG = ROOT / "testbed" / "tests.toml"


def say(msg: str) -> None:
    print(f"[tests {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the plan (pure)
@dataclasses.dataclass(frozen=True)
class Job:
    binary: str
    test: str
    priority: int = 0
    alone: bool = False
    groups: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.binary} {self.test}"


def classify(binary: str, test: str, rules: list[dict]) -> Job:
    """The job for one test: the highest priority and every group of the rules it matches."""
    priority, alone, groups = 0, False, []
    for rule in rules:
        if "binary" in rule and not re.search(rule["binary"], binary):
            continue
        if "test" in rule and not re.search(rule["test"], test):
            continue
        priority = max(priority, rule.get("priority", 0))
        alone = alone or rule.get("alone", False)
        groups += [g for g in rule.get("groups", []) if g not in groups]
    return Job(binary, test, priority, alone, tuple(groups))


def order(jobs: list[Job]) -> list[Job]:
    """The queue: highest priority first, then by name (a stable order from run to run)."""
    return sorted(jobs, key=lambda j: (-j.priority, j.binary, j.test))


def next_startable(pending: list[Job], running: list[Job], threads: int, limits: dict[str, int]) -> Job | None:
    """The first job in the queue that may start now, or None.

    A job that runs alone starts when nothing runs, and nothing behind it starts while it
    waits (else it would wait forever behind a stream of short tests). A job whose group
    is full is passed over; the next one may start instead.
    """
    if len(running) >= threads or any(j.alone for j in running):
        return None
    for job in pending:
        if job.alone:
            return job if not running else None
        full = any(sum(g in r.groups for r in running) >= limits.get(g, threads) for g in job.groups)
        if not full:
            return job
    return None


# ---------------------------------------------------------------- cargo and libtest
def build(cargo_args: list[str]) -> None:
    """cargo test --no-run; the test executables it reports are remembered."""
    cmd = ["cargo", "test", "--no-run", "--message-format", "json-render-diagnostics", *cargo_args]
    say("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    found = []
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            print(line, end="", file=sys.stderr)
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            if msg.get("profile", {}).get("test"):
                found.append(
                    {
                        "name": msg["target"]["name"],
                        "kind": msg["target"]["kind"][0],
                        "executable": msg["executable"],
                        "dir": str(Path(msg["manifest_path"]).parent),
                    }
                )
    if proc.wait() != 0:
        sys.exit(f"cargo test --no-run failed (exit {proc.returncode})")
    OUT.mkdir(parents=True, exist_ok=True)
    BINARIES.write_text(json.dumps(found, indent=1))
    say(f"{len(found)} test binaries built")


def binaries() -> list[dict]:
    if not BINARIES.exists():
        sys.exit(f"{BINARIES} is missing: run `testbed/runner.py build` first")
    return json.loads(BINARIES.read_text())


def listed(binary: dict, ignored: bool = False) -> list[str]:
    cmd = [binary["executable"], "--list", "--format", "terse"] + (["--ignored"] if ignored else [])
    out = subprocess.run(cmd, cwd=binary["dir"], capture_output=True, text=True, check=True).stdout
    return [line[: -len(": test")] for line in out.splitlines() if line.endswith(": test")]


def tests_of(binary: dict) -> list[str]:
    ignored = set(listed(binary, ignored=True))
    return [t for t in listed(binary) if t not in ignored]


def split(config: dict) -> tuple[list[dict], list[dict]]:
    """The unit binaries (lib, bin, unit_binaries) and the integration ones."""
    unit, integration = [], []
    for b in binaries():
        is_unit = b["kind"] != "test" or b["name"] in config.get("unit_binaries", [])
        (unit if is_unit else integration).append(b)
    return unit, integration


# ---------------------------------------------------------------- running
RUNNING: dict[str, subprocess.Popen] = {}


def stop_all(*_args) -> None:
    for proc in list(RUNNING.values()):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sys.exit(143)


def log_path(job: Job) -> Path:
    return OUT / "logs" / job.binary / (re.sub(r"[^A-Za-z0-9_.-]", "_", job.test) + ".log")


EXTRA = "extra"


def run_one(job: Job, binary: dict, timeout: int, done: queue.Queue) -> None:
    """Runs one test (or an extra check: `binary` holds its command) in its own process
    group; reports (job, outcome, seconds)."""
    path = log_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if job.binary == EXTRA:
        cmd, cwd = binary["command"], ROOT
    else:
        cmd = [binary["executable"], "--exact", job.test, "--nocapture", "--test-threads", "1"]
        cwd = binary["dir"]
    with path.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        RUNNING[job.name] = proc
        try:
            rc = proc.wait(timeout=timeout)
            outcome = "pass" if rc == 0 else f"fail (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            outcome = f"fail (killed after {timeout} s)"
        finally:
            RUNNING.pop(job.name, None)
    # Everything a test's children started goes with it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if job.binary != EXTRA and outcome == "pass" and "\nrunning 1 test\n" not in "\n" + path.read_text():
        outcome = "fail (the binary did not run exactly this test)"
    done.put((job, outcome, time.monotonic() - start))


def integration(no_node: bool) -> int:
    config = tomllib.loads(CONFIG.read_text())
    _, bins = split(config)
    node = re.compile(config["node_binaries"])
    by_name = {b["name"]: b for b in bins}
    extras = {e["name"]: e for e in config.get("extra", [])}
    jobs = []
    for b in bins:
        if no_node and node.search(b["name"]):
            continue
        jobs += [classify(b["name"], t, config.get("rule", [])) for t in tests_of(b)]
    jobs += [Job(EXTRA, e["name"], e.get("priority", 0)) for e in extras.values()]
    pending = order(jobs)
    threads, limits = config["threads"], config.get("groups", {})
    timeout, slow = config["timeout_seconds"], config["slow_seconds"]
    say(f"{len(pending)} tests in {len(bins)} binaries, {threads} at a time")
    done: queue.Queue = queue.Queue()
    running: dict[Job, float] = {}
    results = []
    while pending or running:
        while (job := next_startable(pending, list(running), threads, limits)) is not None:
            pending.remove(job)
            running[job] = time.monotonic()
            what = extras[job.test] if job.binary == EXTRA else by_name[job.binary]
            threading.Thread(target=run_one, args=(job, what, timeout, done), daemon=True).start()
        try:
            job, outcome, secs = done.get(timeout=slow)
        except queue.Empty:
            for job, since in running.items():
                say(f"SLOW [{time.monotonic() - since:6.0f}s] {job.name}")
            continue
        del running[job]
        results.append({"binary": job.binary, "test": job.test, "seconds": secs, "outcome": outcome})
        if outcome == "pass":
            say(f"PASS [{secs:6.1f}s] {job.name}")
        else:
            print(log_path(job).read_text(), file=sys.stderr)
            say(f"FAIL [{secs:6.1f}s] {job.name}: {outcome} (output above; {log_path(job)})")
    RESULTS.write_text(json.dumps(results, indent=1))
    failed = [r for r in results if r["outcome"] != "pass"]
    say(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    for r in failed:
        say(f"  failed: {r['binary']} {r['test']}: {r['outcome']}")
    return 1 if failed else 0


def unit() -> int:
    config = tomllib.loads(CONFIG.read_text())
    bins, _ = split(config)
    failed = []
    for b in bins:
        say(f"{b['kind']} {b['name']}")
        if subprocess.run([b["executable"]], cwd=b["dir"], stdin=subprocess.DEVNULL).returncode:
            failed.append(f"{b['kind']} {b['name']}")
    if failed:
        say("failed: " + ", ".join(failed))
    return 1 if failed else 0


def count_node() -> int:
    config = tomllib.loads(CONFIG.read_text())
    _, bins = split(config)
    node = re.compile(config["node_binaries"])
    print(sum(len(tests_of(b)) for b in bins if node.search(b["name"])))
    return 0


def slowest(n: int) -> int:
    if RESULTS.exists():
        results = json.loads(RESULTS.read_text())
        for r in sorted(results, key=lambda r: -r["seconds"])[:n]:
            print(f"  {r['seconds']:6.0f}  {r['binary']} {r['test']}")
    return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    cmd = argv[0] if argv else ""
    if cmd == "build":
        build(argv[1:])
        return 0
    if cmd == "unit":
        return unit()
    if cmd == "integration":
        return integration("--no-node" in argv[1:])
    if cmd == "count-node":
        return count_node()
    if cmd == "slowest":
        return slowest(int(argv[1]) if len(argv) > 1 else 10)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
