"""Redis and unifork workers in network namespaces, for the cluster benchmarks
(the same set-up as tests/test_hosts.py; tests/netns.py makes the hosts).

    with cluster({"hostA": 1, "hostB": 1}, tmp) as (net, url):
        net.run("hub", ...)
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIFORK = os.path.join(os.path.dirname(sys.executable), "unifork")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from netns import Hosts  # noqa: E402


@contextlib.contextmanager
def cluster(slots: dict[str, int], tmp: str, env: dict | None = None):
    with Hosts(list(slots)) as net:
        url = f"redis://{net.addr['hub']}:6379/0"
        net.start("hub", "redis-server", "--bind", net.addr["hub"], "--port", "6379",
                  "--save", "", "--appendonly", "no", "--dir", tmp,
                  "--protected-mode", "no", stdout=subprocess.DEVNULL)
        while net.run("hub", "redis-cli", "-h", net.addr["hub"], "ping").stdout != b"PONG\n":
            time.sleep(0.05)
        for host, n in slots.items():
            net.start(host, UNIFORK, "worker", "--host-name", host, "--slots", n,
                      "--advertise", net.addr[host], "--redis", url,
                      env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                      stderr=open(f"{tmp}/{host}.log", "wb"))
        while net.run("hub", UNIFORK, "hosts", "--redis", url).stdout.count(b" ago") < len(slots):
            time.sleep(0.2)
        time.sleep(2)                       # Celery consumers attach to the queues
        yield net, url


def worker_logs(slots, tmp: str) -> str:
    return "".join(f"--- {h}\n" + open(f"{tmp}/{h}.log").read()[-3000:] for h in slots)


# Sends a job to one host's own queue, as plain Celery client code does;
# prints its stdout and exits with its status.
SEND = r"""
import base64, os, sys, uuid
sys.path.insert(0, sys.argv[1])
os.environ["UNIFORK_REDIS_URL"] = sys.argv[2]
from broker import state
from broker.app import RUN_JOB, app, host_queue
url, host, prog, *args = sys.argv[2:]
r = state.connect(url)
sha = state.put_image(r, open(prog, "rb").read())
job = str(uuid.uuid4())
state.new_job(r, job, prog, args)
res = app.send_task(RUN_JOB, task_id=job, queue=host_queue(host), kwargs={
    "image": sha, "name": os.path.basename(prog), "args": args}).get(timeout=600)
sys.stdout.buffer.write(base64.b64decode(res["stdout"]))
sys.stderr.buffer.write(base64.b64decode(res["stderr"]))
sys.exit(res["exit_status"])
"""


def run_on(net, url: str, host: str, prog: str, *args) -> str:
    """Run (prog) as a job on (host); its stdout."""
    got = net.run("hub", sys.executable, "-c", SEND, ROOT, url, host, prog, *map(str, args),
                  timeout=900)
    if got.returncode != 0:
        raise SystemExit(f"{prog} {args} failed: {got.stderr.decode()}")
    return got.stdout.decode()
