#!/usr/bin/env python3
"""Shell benchmark: Debian's bash-static running a loop of command
substitutions, `x=$(echo $i)` (a fork, a pipe, an exit and a wait each),
under `unifork run` and natively, in one run.

Each of the two is timed with the loop of 200 iterations and with none
(bash starting and ending), interleaved, R times; an iteration costs the
difference of the medians over 200.  Target (issue 15): <= 5 ms an
iteration under unifork.

    .venv/bin/python bench/shell.py [-r 5] [-i 200]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")
BASH = shutil.which("bash-static") or "/bin/bash-static"
LOOP = 'for ((i=0;i<{n};i++)); do x=$(echo $i); done; echo "$x"'


def timed(cmd: list[str], want: bytes) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    t = time.perf_counter() - t0
    if p.returncode != 0 or p.stdout != want:
        raise SystemExit(f"{cmd[:3]}: status {p.returncode}, output {p.stdout[:80]!r}, "
                         f"stderr {p.stderr[-400:].decode(errors='replace')}")
    return t * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5, help="runs of each (default 5)")
    ap.add_argument("-i", type=int, default=200, help="iterations of the loop (default 200)")
    args = ap.parse_args()
    if not os.access(BASH, os.X_OK):
        raise SystemExit(f"{BASH} is missing: make setup installs Debian's bash-static")
    n = args.i
    cases = {
        ("unifork", n): ([UNIFORK, "run", BASH, "-c", LOOP.format(n=n)], f"{n - 1}\n"),
        ("unifork", 0): ([UNIFORK, "run", BASH, "-c", LOOP.format(n=0)], "\n"),
        ("native", n): ([BASH, "-c", LOOP.format(n=n)], f"{n - 1}\n"),
        ("native", 0): ([BASH, "-c", LOOP.format(n=0)], "\n"),
    }
    times: dict = {k: [] for k in cases}
    for _ in range(args.r):
        for k, (cmd, want) in cases.items():
            times[k].append(timed(cmd, want.encode()))
    print(f"shell benchmark: {BASH} -c '{LOOP.format(n=n)}', {args.r} runs each")
    per = {}
    for who in ("unifork", "native"):
        full, empty = statistics.median(times[who, n]), statistics.median(times[who, 0])
        per[who] = (full - empty) / n
        print(f"  {who:8} {full:9.1f} ms with the loop, {empty:7.1f} ms without: "
              f"{per[who]:7.3f} ms an iteration")
    print(f"  ratio    {per['unifork'] / per['native']:.1f}x")
    print(f"target: <= 5 ms an iteration under unifork: "
          f"{'met' if per['unifork'] <= 5 else 'NOT met'} ({per['unifork']:.2f} ms)")


if __name__ == "__main__":
    main()
