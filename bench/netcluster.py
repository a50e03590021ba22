"""Redis and unifork workers in network namespaces, for the cluster benchmarks
(the same set-up as tests/test_hosts.py; tests/netns.py makes the hosts).

    with cluster({"hostA": 1, "hostB": 1}, tmp) as (net, url):
        net.run("hub", ...)
"""
from __future__ import annotations

import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from netns import Hosts  # noqa: E402


@contextlib.contextmanager
def cluster(slots: dict[str, int], tmp: str, env: dict | None = None):
    with Hosts(list(slots)) as net:
        url = net.start_redis(tmp)
        net.start_workers(UNIFORK, url, slots, tmp, env=env)
        yield net, url


def worker_logs(slots, tmp: str) -> str:
    return "".join(f"--- {h}\n" + open(f"{tmp}/{h}.log").read()[-3000:] for h in slots)


def run_on(net, url: str, host: str, prog: str, *args) -> str:
    """Run (prog) as a job on (host); its stdout."""
    got = net.send_job(url, host, prog, *args, timeout=900)
    if got.returncode != 0:
        raise SystemExit(f"{prog} {args} failed: {got.stderr.decode()}")
    return got.stdout.decode()
