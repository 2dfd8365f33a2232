#!/usr/bin/env python3
"""Supply-chain policy for every crate in Cargo.lock (what `cargo deny check licenses
sources` would judge), from `cargo metadata` alone: no install, no network.

- source: crates.io's registry, or a path inside this repository (no git, no other registry);
- license: an SPDX expression the allow-list below satisfies (OR: one side; AND: both;
  `X WITH exception`: X), and never a crate without one.

RustSec advisories are not checked here: their database is a git repository on GitHub,
which the machines CI runs on do not reach (docs/security.md says so).
Exits non-zero, naming each crate that breaks the policy.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"

# Permissive licenses only (no copyleft reaches the image).
ALLOWED = {
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    "MIT-0",
    "OpenSSL",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "Zlib",
}


def tokens(expr: str) -> list[str]:
    return re.findall(r"\(|\)|[A-Za-z0-9.+\-]+", expr.replace("/", " OR "))


def satisfied(expr: str) -> bool:
    """Whether the SPDX expression is satisfied by ALLOWED (precedence: WITH, AND, OR)."""
    toks = tokens(expr)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def primary() -> bool:
        if peek() == "(":
            take()
            v = disjunction()
            if take() != ")":
                raise ValueError(expr)
            return v
        lic = take().removesuffix("+")
        if peek() == "WITH":
            take()
            take()
        return lic in ALLOWED

    def conjunction() -> bool:
        v = primary()
        while peek() == "AND":
            take()
            v = primary() and v
        return v

    def disjunction() -> bool:
        v = conjunction()
        while peek() == "OR":
            take()
            v = conjunction() or v
        return v

    result = disjunction()
    if pos != len(toks):
        raise ValueError(expr)
    return result


def check_parser() -> None:
    """The expression reader on cases whose answer is known, before it judges the crates."""
    for expr, want in [
        ("MIT OR Apache-2.0", True),
        ("MIT/Apache-2.0", True),
        ("Apache-2.0 WITH LLVM-exception", True),
        ("(MIT OR Apache-2.0) AND Unicode-3.0", True),
        ("ISC AND (Apache-2.0 OR ISC) AND OpenSSL", True),
        ("GPL-3.0-only", False),
        ("MIT AND GPL-2.0-only", False),
        ("GPL-2.0-only OR MIT", True),
        ("LGPL-2.1-or-later AND (MIT OR Apache-2.0)", False),
    ]:
        assert satisfied(expr) is want, (expr, want)


def main() -> int:
    check_parser()
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    problems = []
    for p in meta["packages"]:
        name = f"{p['name']} {p['version']}"
        source = p.get("source")
        if source is None:
            if not Path(p["manifest_path"]).resolve().is_relative_to(ROOT):
                problems.append(f"{name}: a path outside the repository ({p['manifest_path']})")
        elif source != CRATES_IO:
            problems.append(f"{name}: from {source} (only crates.io is allowed)")
        lic = p.get("license")
        if not lic:
            problems.append(f"{name}: no SPDX license expression")
            continue
        try:
            if not satisfied(lic):
                problems.append(f"{name}: license {lic!r} is not on the allow-list")
        except (ValueError, IndexError):
            problems.append(f"{name}: license {lic!r} is not a valid SPDX expression")
    for line in problems:
        print(f"supply chain: {line}", file=sys.stderr)
    print(f"supply chain: {len(meta['packages'])} crates, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
