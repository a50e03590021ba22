"""Three worker hosts, each in its own network namespace with its own
address, and Redis on the bridge between them: workers register with the
address they advertise, jobs land on whichever host has a free slot, and
forks that their parent's host has no slot for run on the others.

Every worker here sends each fork task twice (UNIFORK_TEST_DUPLICATE_FORKS),
as a broker that redelivers would: every test below also checks that one
fork makes one child."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, UNIFORK, assert_no_qemu_after, qemu_pids
from netns import JOB, Hosts

SLOTS = {"hostA": 2, "hostB": 2, "hostC": 3}
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or
                                shutil.which("ip") is None,
                                reason="needs redis-server and iproute2 (make setup installs them)")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("hosts")
    with Hosts(list(SLOTS)) as net:
        url = net.url = net.start_redis(d)
        qemu_before = qemu_pids()
        net.start_workers(UNIFORK, url, SLOTS, d, env={"UNIFORK_TEST_DUPLICATE_FORKS": "1"})
        yield net
        net.stop_workers()
        assert_no_qemu_after(qemu_before)


def cli(net, *args, timeout: float = 120):
    return net.run("hub", UNIFORK, *args, "--redis", net.url, timeout=timeout) \
        if args[0] in ("hosts", "ps", "logs", "cancel", "drain") else \
        net.run("hub", UNIFORK, args[0], "--redis", net.url, *args[1:], timeout=timeout)


def hosts(net) -> str:
    return cli(net, "hosts").stdout.decode()


def test_each_host_registers_with_its_own_address_and_slots(net):
    rows = {line.split()[0]: line.split() for line in hosts(net).splitlines()[1:]}
    for host, slots in SLOTS.items():
        assert rows[host][1] == net.addr[host]
        assert rows[host][3] == str(slots)        # all free


SUBMIT_MANY = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
os.environ["UNIFORK_REDIS_URL"] = sys.argv[2]
from broker import client
for _ in range(int(sys.argv[3])):
    print(client.submit(sys.argv[4], sys.argv[5:]).id)
"""


def test_jobs_land_on_whichever_host_has_a_free_slot(net, program):
    """7 jobs that each hold a slot for a while fill 2 + 2 + 3 slots (sent
    from one process: a `unifork submit` each took longer than they hold)."""
    ids = net.run("hub", sys.executable, "-c", SUBMIT_MANY, ROOT, net.url,
                  sum(SLOTS.values()), program("waiter", "musl"), "sleep", 2500,
                  timeout=120).stdout.decode().split()
    placed: dict[str, int] = {}
    for job_id in ids:
        wait_finished(net, job_id, 120)
        host = cli(net, "ps", job_id).stdout.decode().splitlines()[2].split()[2]
        placed[host] = placed.get(host, 0) + 1
        assert cli(net, "logs", job_id).stdout == b"ready\nslept\n"
    assert set(placed) == set(SLOTS), placed
    assert all(placed[h] <= SLOTS[h] for h in SLOTS), placed


def redis(net, *args) -> str:
    return net.run("hub", "redis-cli", "-h", net.addr["hub"], *args).stdout.decode()


def procs(net, job_id: str) -> dict[int, dict]:
    rows = cli(net, "ps", job_id).stdout.decode().splitlines()[2:]
    return {int(r.split()[0]): dict(zip(("ppid", "host", "state"), r.split()[1:4]),
                                    status=" ".join(r.split()[4:])) for r in rows}


def free_slots(net) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[3]) for line in hosts(net).splitlines()[1:]}


def duplicates(net) -> int:
    return int(redis(net, "hget", "unifork:stats:forks", "duplicate").strip() or 0)


def script(net, body: str, host: str, prog, *args) -> str:
    """Run netns.JOB + (body) for a job of (prog) meant for (host); the job's id."""
    got = net.run("hub", sys.executable, "-c", JOB + body + "\nprint(job)\n", ROOT, net.url,
                  host, prog, *args)
    assert got.returncode == 0, got.stderr.decode()
    return got.stdout.decode().split()[-1]


def wait_finished(net, job_id: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while b"finished" not in (ps := cli(net, "ps", job_id).stdout):
        assert time.monotonic() < deadline, ps.decode()
        time.sleep(0.2)


def running(net, job_id: str, n: int) -> dict[int, dict]:
    """The job's processes once (n) of them run (pid 1 first, if n is 1)."""
    deadline = time.monotonic() + 60
    while True:
        ps = procs(net, job_id)
        up = [p for p in ps.values() if p["state"] == "running"]
        if (n == 1 and ps.get(1, {}).get("state") == "running") or (n > 1 and len(up) >= n):
            return ps
        assert time.monotonic() < deadline, (ps, cli(net, "logs", job_id))
        time.sleep(0.1)


def spread_running(net, program, sleep_ms: int) -> tuple[str, dict[int, dict]]:
    """A job of pid 1 and 3 children that sleep (sleep_ms), once all 4 run."""
    job_id = cli(net, "submit", program("spread", "musl"), 3, sleep_ms).stdout.decode().strip()
    return job_id, running(net, job_id, 4)


def pid1_running(net, program) -> tuple[str, str]:
    """A job of pid 1 and a child that sleeps 3 s, once pid 1 runs: its id
    and pid 1's host."""
    job_id = cli(net, "submit", program("spread", "musl"), 1, 3000).stdout.decode().strip()
    return job_id, running(net, job_id, 1)[1]["host"]


def lose_and_wait(net, job_id: str, host: str) -> None:
    """(host) dies; once the job is over its worker comes back, for the
    next tests."""
    net.kill_host(host)
    try:
        wait_finished(net, job_id, within=60)
    finally:
        net.restart_worker(host)


def test_children_run_on_every_host_and_their_statuses_and_output_come_back(net, program):
    """6 children that hold their VM for 2 s: more than any host has slots,
    so with pid 1 they fill 7 slots on all three hosts."""
    dup_before = duplicates(net)
    got = cli(net, "submit", "--wait", program("spread", "musl"), 6, 2000)
    out = got.stdout.decode()
    assert got.returncode == 0, got.stderr.decode()
    for i in range(6):
        assert f"child {i} exited {10 + i}" in out, out       # through the parent's wait()
        assert f"child {i}: pid " in out, out                 # each child's own output
    assert "6 forked" in out
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    ps = procs(net, job_id)
    assert len(ps) == 7 and sorted(ps) == list(range(1, 8)), ps
    assert {p["host"] for p in ps.values()} == set(SLOTS), ps
    for pid, p in ps.items():
        assert p["state"] == "exited" and (pid == 1 or p["ppid"] == "1"), ps
    remote = sum(p["host"] != ps[1]["host"] for p in ps.values())
    assert duplicates(net) - dup_before >= remote          # each sent twice, one child
    deadline = time.monotonic() + 10
    while free_slots(net) != SLOTS:                          # every slot came back
        assert time.monotonic() < deadline, free_slots(net)
        time.sleep(0.2)


def placed_by(net, job_id: str) -> list[str]:
    """How each of the job's forks onto another host went: "offer" or "task"."""
    events = redis(net, "lrange", f"unifork:job:{job_id}:events", 0, -1).splitlines()
    return [e["by"] for e in map(json.loads, events) if e.get("state") == "placed"]


def offers(net, host: str) -> list[dict]:
    return [json.loads(e) for e in
            redis(net, "lrange", f"unifork:host:{host}:offers", 0, -1).splitlines() if e]


def offered_within(net, host: str, within: float = 15) -> list[dict]:
    """The host's offers to any job, once there are some: a process that
    keeps a job's VM (arrival.keep) offers itself to that job only until
    the VM goes, seconds after the job's last child there ended."""
    deadline = time.monotonic() + within
    while not (got := offers(net, host)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def slots_come_back(net, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while free_slots(net) != SLOTS:
        assert time.monotonic() < deadline, free_slots(net)
        time.sleep(0.2)


def test_forks_onto_other_hosts_go_straight_to_an_idle_worker_process(net, program):
    """Each worker process that runs no task offers itself; a fork takes an
    offer of the host it is placed on and skips the Celery hop."""
    for host in SLOTS:
        assert offered_within(net, host), f"{host} has no idle worker process on offer"
    got = cli(net, "submit", "--wait", program("spread", "musl"), 3, 300)
    assert got.returncode == 0 and "3 forked" in got.stdout.decode(), got.stderr.decode()
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    assert "offer" in placed_by(net, job_id)
    slots_come_back(net)


def placed(net, job_id: str) -> list[dict]:
    events = redis(net, "lrange", f"unifork:job:{job_id}:events", 0, -1).splitlines()
    return [e for e in map(json.loads, events) if e.get("state") == "placed"]


def test_a_jobs_forks_onto_a_host_fill_the_vm_it_kept_there(net, program):
    """hostA's two slots held (pid 1 and a child that waits), 12 children
    forked one after another run elsewhere; once one has ended on a host,
    its VM stays there, parked, for the job's next fork (no QEMU boots for
    it), offered to that job first."""
    got = net.send_job(net.url, "hostA", program("forkloop", "musl"), 12, 12, "side",
                       stdin=b"g")
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == b"12\nside child exited 7\n"
    job_id = re.search(r"^job (\S+)$", got.stderr.decode(), re.M).group(1)
    forks = placed(net, job_id)
    assert len(forks) == 12 and all(f["host"] != "hostA" for f in forks), forks
    assert sum(f["kept"] for f in forks) >= 3, forks
    slots_come_back(net)


def test_a_fork_whose_offer_is_stale_goes_by_its_task(net, program):
    """An offer nobody listens to any more (its process went away) is given
    back, its slot with it, and the fork is sent as a task instead."""
    for host in SLOTS:
        redis(net, "lpush", f"unifork:host:{host}:offers",
              json.dumps({"address": net.addr[host], "port": 9, "id": "gone"}))
    got = cli(net, "submit", "--wait", program("spread", "musl"), 3, 300)
    out = got.stdout.decode()
    assert got.returncode == 0 and "3 forked" in out, got.stderr.decode()
    assert all(f"child {i} exited {10 + i}" in out for i in range(3)), out
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    assert "task" in placed_by(net, job_id)
    slots_come_back(net)
    for host in SLOTS:
        redis(net, "lrem", f"unifork:host:{host}:offers", 0,
              json.dumps({"address": net.addr[host], "port": 9, "id": "gone"}))


TAKE_AN_OFFER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from broker import placement, state
r = state.connect(sys.argv[2])
host, offer = placement.open_ticket(r, "never-connected", "no-job", 2, "nobody", offers=True)
print(host, json.dumps(offer))
"""


def test_an_offer_taken_by_a_host_that_never_connects_is_given_back(net):
    """A parent's host that dies between taking an offer and connecting
    leaves a claimed ticket and a slot in use: the offer's process gives
    both back after STALE_AFTER (10 s) and offers itself again."""
    for h in SLOTS:                     # (not only to the last job, whose VM it keeps)
        assert offered_within(net, h), f"{h} has no idle worker process on offer"
    got = net.run("hub", sys.executable, "-c", TAKE_AN_OFFER, ROOT, net.url)
    host, offer = got.stdout.decode().split(" ", 1)
    offer = json.loads(offer)
    assert offer is not None, got.stderr.decode()
    assert free_slots(net)[host] == SLOTS[host] - 1
    slots_come_back(net, within=20)
    assert redis(net, "hget", "unifork:fork:never-connected", "state").strip() == "waiting"
    deadline = time.monotonic() + 5                                     # on offer again
    while offer["port"] not in [o["port"] for o in offers(net, host)]:
        assert time.monotonic() < deadline, offers(net, host)
        time.sleep(0.2)


def test_bytes_that_are_not_a_fork_stream_sent_to_an_offer_harm_nothing(net, program):
    """Garbage, a short hello and a stream sealed with another secret: one
    line each in the worker's log, no traceback; forks still take offers."""
    log_dir = net._worker_setup[3]
    for junk in (b"x" * 4096, os.urandom(16) + b"\0" * 64, b"short"):
        for host in SLOTS:
            o = offered_within(net, host)[0]
            net.run("hub", sys.executable, "-c", SEND_BYTES, o["address"], o["port"], junk.hex())
    time.sleep(6)                           # the short hello's HELLO_TIMEOUT
    got = cli(net, "submit", "--wait", program("spread", "musl"), 3, 300)
    assert got.returncode == 0 and "3 forked" in got.stdout.decode(), got.stderr.decode()
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    assert "offer" in placed_by(net, job_id)
    for host in SLOTS:
        log = open(os.path.join(log_dir, f"{host}.log")).read()
        assert "offer of worker process" in log, log
        assert "Traceback" not in log, log
    slots_come_back(net)


SEND_BYTES = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(bytes.fromhex(sys.argv[3]))
    s.shutdown(socket.SHUT_WR) if len(sys.argv[3]) > 20 else None
    s.settimeout(8)
    try:
        s.recv(100)
    except OSError:
        pass
"""


def test_children_on_other_hosts_use_the_jobs_files_as_if_they_were_home(net, program, tmp_path):
    """The tree is pid 1's host's: children placed on the other two read
    through a descriptor they share with the rest (one offset), append to
    one log, make files of their own and run execve, all in it."""
    exe = program("spreadfiles", "musl")
    want = subprocess.run([exe, "6", "2000"], capture_output=True, cwd=tmp_path, timeout=60)
    got = cli(net, "submit", "--wait", exe, 6, 2000)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode() == want.stdout.decode(), got.stderr.decode()
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    ps = procs(net, job_id)
    assert len({p["host"] for p in ps.values()}) == 3, ps     # some ran elsewhere



@pytest.mark.skipif(shutil.which("busybox") is None or shutil.which("bash-static") is None,
                    reason="needs busybox-static and bash-static (make setup installs them)")
def test_a_script_over_uploaded_inputs_runs_across_the_cluster_as_natively(net, tmp_path):
    """bash-static and BusyBox as the tree's /bin, sent with --input; the
    pipelines' processes spill over to the other hosts; the files the
    script leaves come back with --output."""
    import test_files as tf
    def build(root):
        tf.make_tree(root, shell=tf.BASH)
        tf._inputs(root)
        return root
    nat, uni, back = build(tmp_path / "native"), build(tmp_path / "tree"), tmp_path / "back"
    tf.native_devices(nat)
    want = subprocess.run(["/bin/sh", "-c", tf.SCRIPT], capture_output=True, env={"PATH": "/bin"},
                          preexec_fn=lambda: (os.chroot(nat), os.chdir("/")), timeout=120)
    got = cli(net, "submit", "--wait", "--input", f"{uni}:/", "--workdir", "/work",
              "--env", "PATH=/bin", "--output", "work/out/**", "--out", str(back),
              "/bin/sh", "-c", tf.SCRIPT, timeout=300)
    assert got.stdout.decode() == want.stdout.decode(), (got.returncode, got.stderr.decode())
    assert got.returncode == want.returncode == 0
    def files(root):
        return {k: v for k, v in tf.snapshot(root, ("out/in.tar.gz",)).items()
                if k.startswith("out/") and v[0] == "file"}
    assert files(back / "work") == files(nat / "work") != {}
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    assert len({p["host"] for p in procs(net, job_id).values()}) > 1

def test_a_full_cluster_makes_fork_fail_with_eagain_after_the_fork_wait(net, program):
    got = cli(net, "submit", "--wait", "--fork-wait", "1", program("spread", "musl"),
              9, 4000)
    out = got.stdout.decode()
    assert "fork 6: Resource temporarily unavailable" in out, out + got.stderr.decode()
    assert "6 forked" in out and got.returncode == 0
    assert all(f"child {i} exited {10 + i}" in out for i in range(6)), out
    assert b"no host had a free slot for 1 s" in got.stderr


def test_kill_wait_getppid_and_orphans_work_across_hosts(net, program):
    """remote.c: after two children fill its host (at most 3 slots), each
    of its forks goes to another host."""
    got = cli(net, "submit", "--wait", program("remote", "musl"))
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode() == (
        "victim alive: 1\n"
        "victim killed by 15\n"
        "after reaping: ESRCH\n"
        "child sees parent right\n"
        "child exited 3\n"
        "middle exited 5\n"
        "orphan's parent is now 1\n"          # pid 1 adopted it...
        "adopted orphan exited 7\n"            # ...and its wait() reaps it
        "then: ECHILD\n")
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    ps = procs(net, job_id)
    home = ps[1]["host"]
    (victim,) = [p for p in ps.values() if p["status"] == "signal 15"]
    assert victim["host"] != home, ps
    (orphan,) = [p for p in ps.values() if p["status"] == "exit 7"]    # made away from pid 1
    assert orphan["ppid"] == "1", ps


def test_drain_stops_placement_of_forks_on_that_host(net, program):
    """Runs last but one: hostC takes no new process after the drain."""
    assert cli(net, "drain", "hostC").returncode == 0
    time.sleep(1.5)
    got = cli(net, "submit", "--wait", "--fork-wait", "1", program("spread", "musl"), 5, 1500)
    out = got.stdout.decode()
    assert "3 forked" in out, out           # hostA and hostB: 4 slots, pid 1 and 3 children
    job_id = redis(net, "zrevrange", "unifork:jobs", 0, 0).strip()
    ps = procs(net, job_id)
    assert len(ps) == 4 and all(p["host"] in ("hostA", "hostB") for p in ps.values()), ps


def test_a_job_delivered_twice_runs_once(net, program):
    """Two deliveries of one job at once, to two hosts (a client that
    sends twice; the broker's redelivery of a job that outlives its
    visibility timeout): one pid 1 runs, the other delivery is dropped."""
    job_id = script(net, """
for host in ("hostA", "hostB"):
    app.send_task(RUN_JOB, task_id=job, queue=host_queue(host), kwargs=kwargs)""",
                    "hostA", program("spread", "musl"), 1, 1500)
    wait_finished(net, job_id)
    time.sleep(2)                           # the other delivery, had it run
    out = cli(net, "logs", job_id).stdout
    assert out.count(b"1 forked") == 1, out


def test_a_job_whose_host_was_lost_runs_again_when_delivered_again(net, program):
    job_id = script(net, """
# it ran on a worker that died: the broker hands it out again
state.set_job(r, job, status="running", host="hostGone", incarnation="0123")
state.append_output(r, job, "out", b"what the lost run printed\\n")
app.send_task(RUN_JOB, task_id=job, queue=host_queue(host), kwargs=kwargs).get(timeout=120)""",
                    "hostA", program("spread", "musl"), 1, 10)
    out = cli(net, "logs", job_id)
    assert out.stdout.count(b"1 forked") == 1, out
    assert out.stdout.startswith(b"what the lost run printed\n")    # nothing is lost
    assert (b"the job's host hostGone was lost: the job runs again from the start on hostA"
            in out.stderr), out
    assert procs(net, job_id)[1]["host"] == "hostA"


def test_when_pid_1s_host_dies_the_processes_on_other_hosts_are_stopped(net, program):
    """No "end" comes from a host that died: the subtrees elsewhere see
    its heartbeat lapse, kill their VMs and give back their slots."""
    job_id, ps = spread_running(net, program, 60000)
    home = ps[1]["host"]
    away = {pid: p["host"] for pid, p in ps.items() if p["host"] != home}
    assert away, ps
    net.kill_host(home)
    cli(net, "cancel", job_id)              # (else it runs again: next test)
    deadline = time.monotonic() + 30       # the children sleep for 60 s
    while any(procs(net, job_id)[pid]["state"] != "killed" for pid in away):
        assert time.monotonic() < deadline, procs(net, job_id)
        time.sleep(0.2)
    for host in set(away.values()):
        while free_slots(net)[host] != SLOTS[host]:
            assert time.monotonic() < deadline, hosts(net)
            time.sleep(0.2)
    net.restart_worker(home)                # for the next tests
    out = cli(net, "logs", job_id)
    # Said by the subtrees as they stop, or, when the workers' rescue of
    # lost jobs (which sees the same lapsed heartbeat) got there first and
    # closed the cancelled job's run, by the rescue: either says the host.
    assert (f"pid 1's host {home} was lost".encode() in out.stderr
            or f"the job's host {home} was lost after the job was cancelled".encode()
            in out.stderr), out
    deadline = time.monotonic() + 30
    while b"cancelled" not in (ps := cli(net, "ps", job_id).stdout):     # not "running"
        assert time.monotonic() < deadline, ps.decode()
        time.sleep(0.2)


def test_a_job_whose_host_dies_is_sent_again_at_once_and_runs_elsewhere(net, program):
    """The broker would hand the job out again only after an hour (its
    visibility timeout): a live worker sees the host lapse and sends it."""
    job_id, home = pid1_running(net, program)
    lose_and_wait(net, job_id, home)
    out = cli(net, "logs", job_id)
    assert f"the job's host {home} was lost: the job runs again from the start on".encode() \
        in out.stderr, out
    assert procs(net, job_id)[1]["host"] != home
    assert out.stdout.endswith(b"child 0 exited 10\n1 forked\n"), out   # the second run's


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox-static "
                    "(make setup installs it)")
def test_a_job_sent_again_after_its_host_died_starts_from_its_inputs(net, tmp_path):
    data = tmp_path / "data"
    data.write_text("from the inputs\n")
    job_id = cli(net, "submit", "--input", f"{shutil.which('busybox')}:/bin/busybox",
                 "--input", f"{data}:/in/data", "/bin/busybox", "sh", "-c",
                 "busybox sleep 3; busybox cat /in/data; echo changed > /in/data"
                 ).stdout.decode().strip()
    lose_and_wait(net, job_id, running(net, job_id, 1)[1]["host"])
    out = cli(net, "logs", job_id)
    assert b"the job runs again from the start on" in out.stderr, out
    assert out.stdout == b"from the inputs\n", out

def test_a_host_that_stalls_and_comes_back_after_its_job_ran_again_adds_nothing(net, program):
    """A worker stalled past its heartbeat's lifetime is taken for lost, and
    its job runs again elsewhere; when it comes back, its own run of the job
    stops and writes nothing: output, status and process table are the
    second run's alone, and the first run's VMs are gone."""
    job_id, home = pid1_running(net, program)
    net.pause_host(home)
    try:
        wait_finished(net, job_id, within=60)
    finally:
        net.pause_host(home, False)
    time.sleep(6)       # what the first run had left (its child's 3 s sleep), and more
    out = cli(net, "logs", job_id)
    assert out.stdout.count(b"1 forked\n") == 1, out
    assert out.stdout.endswith(b"child 0 exited 10\n1 forked\n"), out
    ps = procs(net, job_id)
    assert ps[1]["host"] != home and "finished" in cli(net, "ps", job_id).stdout.decode(), ps
    deadline = time.monotonic() + 20
    while vms_but_spares_on(net, home):     # the first run's pid 1, its idle VMs
        assert time.monotonic() < deadline, "the first run's VMs are still there"
        time.sleep(0.2)


def vms_but_spares_on(net, host: str) -> list[int]:
    """QEMUs on (host) but the one VM each worker process keeps parked for
    the next fork onto it (workers/fork/arrival.py)."""
    by_parent: dict[int, list[int]] = {}
    for pid in net.pids(host):
        try:
            if not open(f"/proc/{pid}/comm").read().startswith("qemu-system"):
                continue
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        by_parent.setdefault(ppid, []).append(pid)
    return [pid for pids in by_parent.values() for pid in sorted(pids)[1:]]


def test_a_host_lost_while_its_processes_hold_files_leaves_the_tree_to_the_others(net, program):
    """hostC drained: pid 1 and a child at home, two children on the other
    host, all holding the job's files; the other host dies.  The child at
    home goes on with the files, the parent sees the two killed, and the
    job ends as it does without files."""
    job_id = cli(net, "submit", program("spreadfiles", "musl"), 3, 6000).stdout.decode().strip()
    ps = running(net, job_id, 4)
    home = ps[1]["host"]
    dead = "hostB" if home == "hostA" else "hostA"
    here = sum(p["host"] == home for pid, p in ps.items() if pid != 1)
    assert sum(p["host"] == dead for p in ps.values()) == 3 - here, ps
    lose_and_wait(net, job_id, dead)
    out = cli(net, "logs", job_id).stdout.decode()
    assert f"{here} children ran execve and exited well" in out, out
    assert out.count("a child read line") == here, out
    assert out.count("ran execve") - 1 == here, out

@pytest.mark.parametrize("fate", ["restarts", "dies"])
def test_children_on_a_host_that_dies_are_reported_killed_to_their_parent(net, program, fate):
    """Runs last (hostC drained): pid 1 and children on hostA and hostB;
    every process of the other host is killed, as if it lost power.  Its
    worker may come back at once under the same name (a service manager's
    restart): its heartbeat then never lapses long enough to be seen, but
    the children died with the old worker all the same."""
    job_id, ps = spread_running(net, program, 10000)
    home = ps[1]["host"]
    dead = "hostB" if home == "hostA" else "hostA"
    lost = sorted(pid for pid, p in ps.items() if p["host"] == dead)
    assert lost, ps
    net.kill_host(dead)
    if fate == "restarts":
        net.restart_worker(dead)
    wait_finished(net, job_id)
    out = cli(net, "logs", job_id)
    for pid in lost:
        assert f"child {pid - 2} killed by 9".encode() in out.stdout, out
        assert f"(pid {pid}): host {dead} was lost: reported as killed".encode() in out.stderr
    assert b"3 forked" in out.stdout

