"""Pipes between hosts: three workers in network namespaces (hostA 2 slots,
hostB 1, hostC 1) and jobs sent to hostA, so that pid 1 and one child run
there and each further child on another host.  Every program's output must
be the native run's, on a clean network, with 10 % of the UDP datagrams
dropped on every link (nftables), and through a relay that delays,
reorders, duplicates, forges and replays them (tests/relay.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import UNIFORK, assert_no_qemu_after, qemu_pids
from netns import ROOT, SEND, Hosts

SLOTS = {"hostA": 2, "hostB": 1, "hostC": 1}
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or
                                shutil.which("ip") is None,
                                reason="needs redis-server and iproute2 (make setup installs them)")

RELAY_PORT = 7399
NETWORKS = {
    "clean": {},
    "lossy": {},                # nftables drops 10 % of UDP on each host's input
    "bad": {"UNIFORK_TEST_BRIDGE_RELAY": f"10.231.0.1:{RELAY_PORT}"},
}


@pytest.fixture(scope="module", params=list(NETWORKS))
def net(request, tmp_path_factory):
    mode = request.param
    d = tmp_path_factory.mktemp(f"xpipes-{mode}")
    with Hosts(list(SLOTS)) as net:
        net.mode = mode
        if mode == "lossy":
            for host in SLOTS:
                net.drop_udp(host, 10)
        if mode == "bad":
            net.start("hub", sys.executable, os.path.join(ROOT, "tests", "relay.py"),
                      net.addr["hub"], RELAY_PORT, "delay=0.004", "dup=0.05", "forge=0.1",
                      "replay=0.1", "dup_every=7", "forge_every=11")
        url = net.start_redis(d)
        qemu_before = qemu_pids()
        net.start_workers(UNIFORK, url, SLOTS, d,
                          args=("--fork-ports", "41000-41009", "--bridge-ports", "42000-42009",
                                "--files-ports", "43000-43009"),
                          env={"UNIFORK_BRIDGE_TIMEOUT": "3", **NETWORKS[mode]})
        net.url = url
        yield net
        net.stop_workers()
        assert_no_qemu_after(qemu_before)


def on_hosta(net, prog, *args) -> subprocess.CompletedProcess:
    return net.send_job(net.url, "hostA", prog, *args, timeout=300)


def hosts_of(net, got: subprocess.CompletedProcess) -> set[str]:
    job = got.stderr.decode().split("job ")[-1].split()[0]
    rows = net.run("hub", UNIFORK, "ps", job, "--redis", net.url).stdout.decode()
    return {line.split()[2] for line in rows.splitlines()[2:]}


@pytest.mark.parametrize("args", [("gather", 3, 20000), ("pipeline", 30000),
                                  ("records", 3, 300), ("epipe",), ("nested", 20000),
                                  ("late", 60000), ("forked", 200)],
                         ids=["fan-out-gather", "three-stage-pipeline",
                              "writers-on-three-hosts-4096-byte-records", "epipe",
                              "a-pipe-made-away-from-pid-1",
                              "a-writer-done-before-its-reader-is-forked",
                              "forks-of-vms-that-set-the-fast-doorbell-up"])
def test_pipes_across_hosts_give_the_native_output(net, program, args):
    prog = program("xpipes", "musl")
    want = subprocess.run([prog, *map(str, args)], capture_output=True, timeout=60)
    got = on_hosta(net, prog, *args)
    assert got.returncode == want.returncode == 0, got.stderr.decode()
    assert got.stdout == want.stdout, (got.stdout.decode(), got.stderr.decode())
    assert b"stopped answering" not in got.stderr      # no pipe broke
    if args[0] in ("late", "forked"):           # another host or two
        assert len(hosts_of(net, got)) > 1
    else:
        assert hosts_of(net, got) == set(SLOTS) or args[0] == "epipe"
    if net.mode == "bad" and args[0] in ("gather", "records"):
        # the relay's forged and replayed datagrams were dropped, and counted
        counts = re.findall(rb"dropped (\d+) forged, (\d+) duplicate or replayed", got.stderr)
        assert sum(int(f) for f, _ in counts) > 0, got.stderr.decode()
        assert sum(int(d) for _, d in counts) > 0, got.stderr.decode()


def test_a_child_on_another_host_reads_the_jobs_stdin(net, program):
    """pid 1 keeps its stdin open and never reads it; its child, on another
    host, reads all of it (the stdin ring is bridged like a pipe)."""
    prog = program("xpipes", "musl")
    data = bytes(range(256)) * 1000 + b"the end\n"
    want = subprocess.run([prog, "stdin"], input=data, capture_output=True, timeout=60)
    got = net.send_job(net.url, "hostA", prog, "stdin", timeout=300, stdin=data)
    assert got.returncode == want.returncode == 0, got.stderr.decode()
    assert got.stdout == want.stdout, got.stderr.decode()
    assert len(hosts_of(net, got)) > 1


def test_a_child_on_another_host_has_its_parents_clock(net, program):
    """CLOCK_MONOTONIC is one clock for every process of a job: a child
    forked onto another host reads a time between one its parent read after
    the fork and sent it and the parent's when it comes back.  Across hosts
    the child's clock runs on from when its host saw the fork stream begin:
    behind by that latency (a datagram's and a thread's wake-up, well under
    a millisecond), which a busy machine can make longer than the pipe's;
    so a lag under 2 ms passes (it once lagged by the time the memory took
    to cross: 16-22 ms, seconds on a lossy link)."""
    prog = program("xpipes", "musl")
    got = on_hosta(net, prog, "clock")
    assert got.returncode == 0, got.stderr.decode()
    out = got.stdout.decode()
    lag = re.fullmatch(r"the child's clock is behind its parent's by (\d+) us\n", out)
    assert out == "the child's clock is its parent's\n" or lag and int(lag[1]) < 2000, out
    assert len(hosts_of(net, got)) > 1


SHELL = ("busybox seq 1 20000 | busybox sed s/1/x/ | busybox grep -c x; "
         "n=$(busybox seq 1 10 | busybox wc -l); echo \"ten: $n\"; "
         "busybox seq 1 3000 | busybox sort -rn | busybox head -3; "
         # three background jobs at once: with hostA's second slot, the only
         # children sure to be alive together (a pipeline's first stage may
         # be over before its last is forked), so hostC is sure to be used
         "busybox sleep 0.5 & busybox sleep 0.4 & busybox sleep 0.3 & wait; "
         "echo waited for background jobs")


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static is not installed "
                    "(make setup installs it)")
def test_a_busybox_shell_pipeline_across_hosts_gives_the_native_output(net):
    """A real program: Debian's static BusyBox shell, whose pipeline stages
    (re-executed applets) and background jobs land on three hosts (the
    jobs' SIGCHLD crosses hosts to the shell's handler)."""
    busybox = shutil.which("busybox")
    want = subprocess.run([busybox, "sh", "-c", SHELL], capture_output=True, timeout=60,
                          env={"PATH": "/bin:/usr/bin"})
    got = on_hosta(net, busybox, "sh", "-c", SHELL)
    assert got.returncode == want.returncode == 0, got.stderr.decode()
    assert got.stdout == want.stdout, got.stderr.decode()
    assert b"stopped answering" not in got.stderr
    job = got.stderr.decode().split("job ")[-1].split()[0]
    print(net.run("hub", UNIFORK, "ps", job, "--redis", net.url).stdout.decode())
    assert len(hosts_of(net, got)) == 3


@pytest.mark.parametrize("net", ["clean"], indirect=True)
@pytest.mark.parametrize("fate", ["restarts", "dies"])
def test_a_reader_sees_end_of_file_when_the_writers_host_dies(net, program, fate):
    """Runs last: it kills a host; which may come back at once (its worker
    restarted under the same name, on the same ports), with none of the
    pipe's state: the pipe breaks visibly all the same, nothing resumes."""
    prog = program("xpipes", "musl")
    job = subprocess.Popen(net.cmd("hub", sys.executable, "-c", SEND, ROOT, net.url, "hostA",
                                   prog, "lost"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    writer_host = None
    while writer_host is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
        jobs = net.run("hub", "redis-cli", "-h", net.addr["hub"], "zrevrange",
                       "unifork:jobs", 0, 0).stdout.decode().split()
        if jobs:
            rows = net.run("hub", UNIFORK, "ps", jobs[0], "--redis", net.url).stdout.decode()
            procs = {int(r.split()[0]): r.split()[2] for r in rows.splitlines()[2:]}
            writer_host = procs.get(3)
    time.sleep(0.5)                     # bytes are flowing
    net.kill_host(writer_host)
    t = time.monotonic()
    if fate == "restarts":
        net.restart_worker(writer_host)
    out, err = job.communicate(timeout=60)
    assert out == b"reader saw end of file: yes\nwriter killed by 9\n", err.decode()
    assert time.monotonic() - t < 15    # the bridge's 3 s, the heartbeat's 5 s
    assert f"host {writer_host} was lost".encode() in err
    assert b"stopped answering: they are closed" in err
    port = int(re.search(rb"its ends on [\d.]+:(\d+) stopped answering", err).group(1))
    assert 42000 <= port <= 42009           # --bridge-ports
