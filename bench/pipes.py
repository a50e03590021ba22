#!/usr/bin/env python3
"""Pipe benchmark: two processes (under unifork, two VMs on one host) and a
pipe between them, beside native Linux pipes, in one run.

  throughput  64 KiB writes, 512 MiB, parent -> child       (MB/s)
  round trip  1-byte ping-pong over two pipes, mean         (us)
Each is run R times, alternating unifork and native; medians are printed.
Targets (issue 3): throughput >= 2x native; round trip <= 1x native.

    .venv/bin/python bench/pipes.py [-r 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")


def run(cmd: list[str]) -> float:
    return float(subprocess.run(cmd, capture_output=True, check=True, timeout=300).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5, help="repetitions (default 5)")
    reps = ap.parse_args().r
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "pipebench")
        subprocess.run(["musl-gcc", "-static", "-O2", "-o", exe,
                        os.path.join(ROOT, "bench", "pipebench.c")], check=True)
        res: dict[str, list[float]] = {k: [] for k in ("ut", "nt", "ur", "nr")}
        for _ in range(reps):
            res["ut"].append(run([UNIFORK, "run", exe, "tput", "512"]))
            res["nt"].append(run([exe, "tput", "512"]))
            res["ur"].append(run([UNIFORK, "run", exe, "pingpong", "20000"]))
            res["nr"].append(run([exe, "pingpong", "20000"]))
    m = {k: statistics.median(v) for k, v in res.items()}
    print(f"pipe benchmark, {reps} runs each, medians (all runs: {res})")
    print(f"{'':12} {'unifork':>10} {'native':>10} {'ratio':>8}")
    print(f"{'MB/s':12} {m['ut']:10.0f} {m['nt']:10.0f} {m['ut'] / m['nt']:8.2f}"
          "   (target >= 2)")
    print(f"{'round trip':12} {m['ur']:9.1f}u {m['nr']:9.1f}u {m['ur'] / m['nr']:8.2f}"
          "   (target <= 1)")


if __name__ == "__main__":
    main()
