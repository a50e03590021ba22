#!/usr/bin/env python3
"""Cross-host pipe benchmark: a pipe between two hosts against raw UDP
between the same two network namespaces, in one run.

Two workers (hostA and hostB, one slot each) in network namespaces, Redis
on a bridge.  bench/pipebench.c runs as a job on hostA; its child can only
run on hostB, so its pipes go over the bridge (UDP).

  throughput  64 KiB writes, 256 MiB, parent (hostA) -> child (hostB), MB/s;
              against 64000-byte UDP datagrams blasted from hostA to hostB
              for 2 s (what arrives, MB/s)
  round trip  1-byte ping-pong over two pipes, mean us; against a 1-byte
              UDP echo between the namespaces
Each is run R times, alternating; medians.  Targets (issue 5): >= 0.5x raw
UDP throughput, <= 3x the raw round trip.

    .venv/bin/python bench/xpipe.py [-r 3] [--only tput|rtt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from netcluster import cluster, run_on, worker_logs  # noqa: E402

HOSTS = {"hostA": 1, "hostB": 1}
PORT = 7411


def raw_throughput(net, udp: str) -> float:
    sink = subprocess.Popen(net.cmd("hostB", udp, "sink", PORT), stdout=subprocess.PIPE)
    time.sleep(0.2)
    net.run("hostA", udp, "blast", net.addr["hostB"], PORT, 2, check=True)
    return float(sink.communicate(timeout=30)[0])


def raw_rtt(net, udp: str) -> float:
    echo = subprocess.Popen(net.cmd("hostB", udp, "echo", PORT + 1))
    time.sleep(0.2)
    try:
        return float(net.run("hostA", udp, "ping", net.addr["hostB"], PORT + 1, 20000,
                             check=True, timeout=60).stdout)
    finally:
        echo.kill()
        echo.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--only", choices=("tput", "rtt"), help="measure only this")
    opts = ap.parse_args()
    reps = opts.r
    res: dict[str, list[float]] = {k: [] for k in ("pt", "ut", "pr", "ur")}
    with tempfile.TemporaryDirectory() as tmp:
        exe, udp = os.path.join(tmp, "pipebench"), os.path.join(tmp, "udpbench")
        subprocess.run(["musl-gcc", "-static", "-O2", "-o", exe,
                        os.path.join(ROOT, "bench", "pipebench.c")], check=True)
        subprocess.run(["gcc", "-O2", "-o", udp, os.path.join(ROOT, "bench", "udpbench.c")],
                       check=True)
        with cluster(HOSTS, tmp) as (net, url):
            try:
                for _ in range(reps):
                    if opts.only != "rtt":
                        res["pt"].append(float(run_on(net, url, "hostA", exe, "tput", 256)))
                        res["ut"].append(raw_throughput(net, udp))
                    if opts.only != "tput":
                        res["pr"].append(float(run_on(net, url, "hostA", exe, "pingpong", 5000)))
                        res["ur"].append(raw_rtt(net, udp))
            except SystemExit:
                sys.stderr.write(worker_logs(HOSTS, tmp))
                raise
    m = {k: statistics.median(v) for k, v in res.items() if v}
    print(f"cross-host pipe benchmark, {reps} runs each, medians (all runs: {res})")
    print(f"{'':12} {'pipe':>10} {'raw UDP':>10} {'ratio':>8}")
    if "pt" in m:
        print(f"{'MB/s':12} {m['pt']:10.0f} {m['ut']:10.0f} {m['pt'] / m['ut']:8.2f}"
              "   (target >= 0.5)")
    if "pr" in m:
        print(f"{'round trip':12} {m['pr']:9.1f}u {m['ur']:9.1f}u {m['pr'] / m['ur']:8.2f}"
              "   (target <= 3)")


if __name__ == "__main__":
    main()
