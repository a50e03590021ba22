"""Pipes between hosts: three workers in network namespaces (hostA 2 slots,
hostB 1, hostC 1) and jobs sent to hostA, so that pid 1 and one child run
there and each further child on another host.  Every program's output must
be the native run's."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import UNIFORK, assert_no_qemu_after, qemu_pids
from netns import Hosts

SLOTS = {"hostA": 2, "hostB": 1, "hostC": 1}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or
                                shutil.which("ip") is None,
                                reason="needs redis-server and iproute2 (make setup installs them)")

# Sends a job to one host's own queue, as plain Celery client code does, and
# prints its output; the job id goes to stderr.
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
    "image": sha, "name": os.path.basename(prog), "args": args, "timeout": 120}).get(timeout=300)
sys.stdout.buffer.write(base64.b64decode(res["stdout"]))
sys.stderr.buffer.write(base64.b64decode(res["stderr"]))
print("job", job, file=sys.stderr)
sys.exit(res["exit_status"])
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("xpipes")
    with Hosts(list(SLOTS)) as net:
        url = f"redis://{net.addr['hub']}:6379/0"
        net.start("hub", "redis-server", "--bind", net.addr["hub"], "--port", "6379",
                  "--save", "", "--appendonly", "no", "--dir", d, "--protected-mode", "no",
                  stdout=open(d / "redis.log", "wb"))
        deadline = time.monotonic() + 10
        while net.run("hub", "redis-cli", "-h", net.addr["hub"], "ping").stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        qemu_before, workers = qemu_pids(), []
        for host, slots in SLOTS.items():
            workers.append(net.start(
                host, UNIFORK, "worker", "--host-name", host, "--slots", slots,
                "--advertise", net.addr[host], "--redis", url,
                env={**os.environ, "UNIFORK_BRIDGE_TIMEOUT": "3"},
                stdout=open(d / f"{host}.out", "wb"), stderr=open(d / f"{host}.log", "wb")))
        deadline = time.monotonic() + 30
        while net.run("hub", UNIFORK, "hosts", "--redis", url).stdout.count(b" ago") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)                   # Celery consumers attach to the queues
        net.url, net.dir = url, d
        yield net
        for p in workers:
            p.terminate()
        for p in workers:
            p.wait(timeout=30)
        assert_no_qemu_after(qemu_before)


def on_hosta(net, prog, *args) -> subprocess.CompletedProcess:
    return net.run("hub", sys.executable, "-c", SEND, ROOT, net.url, "hostA", prog,
                   *map(str, args), timeout=300)


def hosts_of(net, got: subprocess.CompletedProcess) -> set[str]:
    job = got.stderr.decode().split("job ")[-1].split()[0]
    rows = net.run("hub", UNIFORK, "ps", job, "--redis", net.url).stdout.decode()
    return {line.split()[2] for line in rows.splitlines()[2:]}


@pytest.mark.parametrize("args", [("gather", 3, 20000), ("pipeline", 30000),
                                  ("records", 3, 300), ("epipe",)],
                         ids=["fan-out-gather", "three-stage-pipeline",
                              "writers-on-three-hosts-4096-byte-records", "epipe"])
def test_pipes_across_hosts_give_the_native_output(net, program, args):
    prog = program("xpipes", "musl")
    want = subprocess.run([prog, *map(str, args)], capture_output=True, timeout=60)
    got = on_hosta(net, prog, *args)
    assert got.returncode == want.returncode == 0, got.stderr.decode()
    assert got.stdout == want.stdout, got.stderr.decode()
    assert hosts_of(net, got) == set(SLOTS) or args[0] == "epipe"
