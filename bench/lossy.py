#!/usr/bin/env python3
"""Cross-host pipe throughput on a lossy link, against Linux's TCP on the
same link, in one run.

Two workers (hostA and hostB, one slot each) in network namespaces; hostB
loses P % of the UDP datagrams and TCP segments it receives (nftables
`numgen random` drop rules, as tests/test_xpipes.py's lossy variant).

  pipe  bench/pipebench.c tput: the parent (hostA) writes M MiB in 64 KiB
        writes to its child (hostB) over the bridge; MB/s
  TCP   one TCP connection hostA -> hostB for 3 s (Linux: SACK, CUBIC,
        its own retransmission timers); MB/s received

    .venv/bin/python bench/lossy.py [-r 3] [--loss 1 10]
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
PORT = 7421
MIB = {1: 64, 10: 16}           # pipe bytes per loss rate: a few seconds each

TCP_SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
c, _ = s.accept(); n = 0; t0 = time.monotonic(); buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k: break
    n += k
print(n / (time.monotonic() - t0) / 1e6)
"""
TCP_SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3]); block = b"x" * 65536
while time.monotonic() < end:
    c.sendall(block)
c.close()
"""


def set_loss(net, host: str, percent: int) -> None:
    """hostB loses (percent) % of what UDP and TCP bring it."""
    def nft(*rule: str, check: bool = True) -> None:
        net.run(host, "nft", *rule, check=check)
    nft("delete", "table", "inet", "uflossbench", check=False)
    if not percent:
        return
    nft("add", "table", "inet", "uflossbench")
    nft("add", "chain", "inet", "uflossbench", "input",
        "{", "type", "filter", "hook", "input", "priority", "0", ";", "}")
    for proto in ("udp", "tcp"):
        nft("add", "rule", "inet", "uflossbench", "input", "meta", "l4proto", proto,
            "numgen", "random", "mod", "100", "<", str(percent), "drop")


def tcp_throughput(net, secs: float = 3.0) -> float:
    sink = subprocess.Popen(net.cmd("hostB", sys.executable, "-c", TCP_SINK, PORT),
                            stdout=subprocess.PIPE)
    time.sleep(0.3)
    net.run("hostA", sys.executable, "-c", TCP_SOURCE, net.addr["hostB"], PORT, secs,
            check=True, timeout=60)
    return float(sink.communicate(timeout=60)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--loss", type=int, nargs="+", default=[1, 10], help="percent lost")
    opts = ap.parse_args()
    res: dict[int, dict[str, list[float]]] = {p: {"pipe": [], "tcp": []} for p in opts.loss}
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "pipebench")
        subprocess.run(["musl-gcc", "-static", "-O2", "-o", exe,
                        os.path.join(ROOT, "bench", "pipebench.c")], check=True)
        with cluster(HOSTS, tmp) as (net, url):
            try:
                for _ in range(opts.r):
                    for p in opts.loss:
                        set_loss(net, "hostB", p)
                        res[p]["pipe"].append(float(run_on(net, url, "hostA", exe, "tput",
                                                           MIB.get(p, 16))))
                        res[p]["tcp"].append(tcp_throughput(net))
                        set_loss(net, "hostB", 0)
            except SystemExit:
                sys.stderr.write(worker_logs(HOSTS, tmp))
                raise
    print(f"pipe throughput on a lossy link, {opts.r} runs each, medians (all runs: {res})")
    print(f"{'loss':>6} {'pipe MB/s':>10} {'TCP MB/s':>10} {'ratio':>8}")
    for p in opts.loss:
        pipe, tcp = statistics.median(res[p]["pipe"]), statistics.median(res[p]["tcp"])
        print(f"{p:5d}% {pipe:10.1f} {tcp:10.1f} {pipe / tcp:8.2f}")


if __name__ == "__main__":
    main()
