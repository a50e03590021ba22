"""`unifork cluster status|drain|undrain|logs|restart` against a real sshd.

A KVM host is a network namespace with a real sshd (a key the test
generates) and Debian's supervisord running a real `unifork worker` against
a real Redis (with a password) in the hub, laid out as the hosts' contract
says, its paths in the test's directory through the inventory's variables.
A second host of the inventory is an address with nothing behind it.
`unifork cluster` runs in the hub, as an operator's machine would.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import UNIFORK
from netns import Hosts

SUBNET = "10.233.0"
NOBODY = f"{SUBNET}.99"         # in the subnet, nothing behind it
PASSWORD = "ops-" + os.urandom(6).hex()

pytestmark = pytest.mark.skipif(
    not all(shutil.which(p) for p in ("redis-server", "supervisord", "ssh-keygen"))
    or not os.path.exists("/usr/sbin/sshd"),
    reason="redis-server, supervisor or openssh-server is not installed (make setup does it)")


def _layout(tmp: Path, url: str, advertise: str) -> dict[str, Path]:
    """The contract's files of one KVM host, under (tmp)."""
    d = {k: tmp / k for k in ("prefix", "etc", "log", "run", "ssh")}
    for p in d.values():
        p.mkdir(mode=0o700)
    (d["prefix"] / "venv").symlink_to(Path(sys.executable).parent.parent)
    env = d["etc"] / "worker.env"
    env.write_text(f"UNIFORK_REDIS_URL={url}\nUNIFORK_SECRET={os.urandom(16).hex()}\n"
                   f"UNIFORK_HOST_NAME=kvm1\nUNIFORK_WORKER_SLOTS=2\n"
                   f"UNIFORK_WORKER_ADVERTISE={advertise}\nUNIFORK_LOG_LEVEL=info\n")
    env.chmod(0o600)
    worker = (f'set -a; . {env}; exec {d["prefix"]}/venv/bin/unifork worker --host-name '
              '"$UNIFORK_HOST_NAME" --slots "$UNIFORK_WORKER_SLOTS" '
              '--advertise "$UNIFORK_WORKER_ADVERTISE"')
    (d["etc"] / "supervisord.conf").write_text(textwrap.dedent(f"""\
        [unix_http_server]
        file={d['run']}/supervisor.sock
        chmod=0700
        [supervisord]
        logfile={d['log']}/supervisord.log
        pidfile={d['run']}/supervisord.pid
        childlogdir={d['log']}
        nodaemon=true
        user=root
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [supervisorctl]
        serverurl=unix://{d['run']}/supervisor.sock
        [program:unifork-worker]
        command=/bin/sh -c '{worker}'
        redirect_stderr=true
        stdout_logfile={d['log']}/worker.log
        stopwaitsecs=30
        startsecs=2
        autorestart=true
        """))
    return d


def _sshd_config(d: dict[str, Path], listen: str) -> Path:
    """A host key, the client's key pair, and sshd letting root in with that key only."""
    for key in ("host_key", "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d["ssh"] / key],
                       check=True)
    shutil.copy(d["ssh"] / "id_ed25519.pub", d["ssh"] / "authorized_keys")
    conf = d["ssh"] / "sshd_config"
    conf.write_text(textwrap.dedent(f"""\
        ListenAddress {listen}
        Port 22
        HostKey {d['ssh']}/host_key
        PidFile {d['run']}/sshd.pid
        PermitRootLogin prohibit-password
        PubkeyAuthentication yes
        AuthorizedKeysFile {d['ssh']}/authorized_keys
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        """))
    os.makedirs("/run/sshd", exist_ok=True)        # sshd's privilege separation directory
    return conf


def _inventory(path: Path, d: dict[str, Path], hosts: dict[str, str], broker: bool = True
               ) -> Path:
    kvm = "".join(f"        {name}: {{ansible_host: {addr}, unifork_advertise: {addr}}}\n"
                  for name, addr in hosts.items())
    brokers = (f"    broker:\n      hosts:\n        broker1: {{ansible_host: {SUBNET}.1, "
               f"unifork_cluster_address: {SUBNET}.1}}\n") if broker else ""
    path.write_text(
        "all:\n  vars:\n"
        '    unifork_redis_password: "{{ vault_unifork_redis_password }}"\n'
        f"    ansible_ssh_private_key_file: {d['ssh']}/id_ed25519\n"
        f"    unifork_prefix: {d['prefix']}\n    unifork_etc: {d['etc']}\n"
        f"    unifork_log_dir: {d['log']}\n    unifork_run_dir: {d['run']}\n"
        f"  children:\n{brokers}    kvm_hosts:\n      hosts:\n{kvm}")
    return path


def _wait(what: str, check, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    with Hosts(["kvm1"], prefix="ufops", subnet=SUBNET) as net:
        url = net.start_redis(tmp, password=PASSWORD)
        d = _layout(tmp, url, net.addr["kvm1"])
        sshd = net.start("kvm1", "/usr/sbin/sshd", "-D", "-e",
                         "-f", _sshd_config(d, net.addr["kvm1"]),
                         stderr=open(tmp / "sshd.log", "wb"))
        sv = net.start("kvm1", "supervisord", "-c", d["etc"] / "supervisord.conf",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        site = {"net": net, "url": url, "dir": d, "tmp": tmp,
                "all": _inventory(tmp / "inventory.yml", d,
                                  {"kvm1": net.addr["kvm1"], "kvm2": NOBODY}),
                "one": _inventory(tmp / "one.yml", d, {"kvm1": net.addr["kvm1"]})}
        try:
            _wait("sshd did not listen", lambda: net.run("kvm1", "ss", "-Hltn",
                                                         "sport = :22").stdout, 10)
            _wait("the worker did not register", lambda: alive(site), 60)
            time.sleep(2)               # its Celery consumers attach to the queues
            yield site
        finally:
            for p in (sv, sshd):        # supervisord stops the worker (SIGTERM), and waits
                p.terminate()
                p.wait(timeout=40)


def hosts(site) -> str:
    return site["net"].run("hub", UNIFORK, "hosts", "--redis", site["url"]).stdout.decode()


def alive(site) -> bool:
    return any(line.split()[0] == "kvm1" and line.endswith(" ago")
               for line in hosts(site).splitlines()[1:])


def ops(site, *args, inventory: str = "all", timeout: float = 120
        ) -> subprocess.CompletedProcess:
    """`unifork cluster ARGS -i INVENTORY`, run in the hub."""
    return site["net"].run("hub", UNIFORK, "cluster", *args, "-i", site[inventory],
                           "--connect-timeout", "3", timeout=timeout, text=True)


def supervisorctl(site, *args) -> str:
    return subprocess.run(["supervisorctl", "-c", site["dir"]["etc"] / "supervisord.conf",
                           *args], capture_output=True, text=True).stdout.strip()


def rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["HOST", "SSH", "WORKER", "SLOTS", "USED", "FREE", "LOAD",
                                "VERSION"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_status_shows_each_host_side_by_side_and_one_that_does_not_answer_in_its_row(site):
    start = time.monotonic()
    got = ops(site, "status")
    took = time.monotonic() - start
    table = rows(got.stdout)
    version = subprocess.run([UNIFORK, "--version"], capture_output=True, text=True).stdout
    kvm1 = table["kvm1"]
    assert kvm1[1:6] == ["root@10.233.0.2", "running", "2", "0", "2"]
    assert all(float(x) >= 0 for x in kvm1[6:9])              # /proc/loadavg's three
    assert "unifork " + " ".join(kvm1[9:]) == version.strip()
    assert table["kvm2"][1:3] == [f"root@{NOBODY}", "unreachable"]
    assert got.returncode == 1, "not every host is fine"
    assert got.stderr.startswith(f"unifork: kvm2 (root@{NOBODY}): ")
    assert len(got.stderr.splitlines()) == 1
    assert took < 3 + 10, "the host that does not answer waited past its connect timeout"


def test_status_exits_0_when_every_host_is_fine(site):
    got = ops(site, "status", inventory="one")
    assert got.returncode == 0 and got.stderr == ""
    assert rows(got.stdout)["kvm1"][2] == "running"


def test_drain_makes_the_host_take_no_new_job_until_undrain(site, example):
    got = ops(site, "drain", "kvm1")
    assert got.returncode == 0, got.stderr
    assert "draining" in hosts(site)
    assert rows(ops(site, "status", inventory="one").stdout)["kvm1"][-1] == "draining"
    time.sleep(1.5)                     # (the consumers' cancel is a broadcast)
    net, url = site["net"], site["url"]
    job = net.run("hub", UNIFORK, "submit", "--redis", url, example("hello", "musl"),
                  text=True).stdout.strip()
    ps = lambda: net.run("hub", UNIFORK, "ps", "--redis", url, job, text=True).stdout  # noqa
    time.sleep(5)
    assert ps().startswith(f"job {job}: queued"), "the drained host took a new job"
    got = ops(site, "undrain", "kvm1")
    assert got.returncode == 0, got.stderr
    assert "draining" not in hosts(site)
    _wait("the undrained host did not take the job", lambda: "finished" in ps(), 60)
    assert ps().splitlines()[2].split()[2] == "kvm1"


def test_logs_shows_the_last_lines_of_the_worker_log(site):
    log = site["dir"]["log"] / "worker.log"
    got = ops(site, "logs", "kvm1", "-n", "3")
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == log.read_text().splitlines()[-3:]
    assert len(got.stdout.splitlines()) == 3


def test_logs_follow_streams_new_lines_until_interrupted(site):
    log = site["dir"]["log"] / "worker.log"
    net = site["net"]
    follow = net.start("hub", UNIFORK, "cluster", "logs", "kvm1", "-n", "0", "--follow",
                       "-i", site["all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker, seen = f"a line written at {time.time()}", b""
    deadline = time.monotonic() + 20
    while marker.encode() not in seen:
        assert time.monotonic() < deadline, f"--follow did not show a new line: {seen!r}"
        with open(log, "a") as f:       # (again, until the remote tail has started)
            f.write(marker + "\n")
        if select.select([follow.stdout], [], [], 0.5)[0]:
            seen += os.read(follow.stdout.fileno(), 65536)
    assert b"\r" not in seen
    follow.send_signal(signal.SIGINT)
    assert follow.wait(timeout=15) in (0, 130), follow.stderr.read()
    _wait("the host's tail -F outlived --follow", lambda: not any(
        b"tail" in c and str(log).encode() in c for c in _cmdlines(net.pids("kvm1"))), 10)


def _cmdlines(pids: list[int]) -> list[bytes]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return out


def test_restart_starts_a_new_worker_and_waits_until_it_is_back_in_hosts(site):
    before = supervisorctl(site, "pid", "unifork-worker")
    got = ops(site, "restart", "kvm1")
    assert got.returncode == 0, got.stderr
    assert "kvm1: back in `unifork hosts` after" in got.stdout
    after = supervisorctl(site, "pid", "unifork-worker")
    assert after.isdigit() and before.isdigit() and after != before
    assert alive(site)


def test_a_stopped_worker_shows_in_status_and_restart_brings_it_back(site):
    supervisorctl(site, "stop", "unifork-worker")
    got = ops(site, "status", inventory="one")
    assert got.returncode == 1
    assert rows(got.stdout)["kvm1"][2] == "stopped"
    assert got.stderr == "unifork: kvm1 (root@10.233.0.2): the worker (unifork-worker) is " \
                         "stopped\n"
    got = ops(site, "restart", "kvm1")
    assert got.returncode == 0, got.stderr
    assert alive(site)
    assert ops(site, "status", inventory="one").returncode == 0


def test_a_host_that_does_not_answer_is_one_line_naming_it(site):
    start = time.monotonic()
    got = ops(site, "drain", "kvm2")
    assert got.returncode == 1
    assert got.stderr.startswith(f"unifork: kvm2 (root@{NOBODY}): ")
    assert len(got.stderr.splitlines()) == 1
    assert time.monotonic() - start < 3 + 5


def test_a_refused_connection_or_login_is_one_line_per_host(site, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "other"],
                   check=True)
    d, addr = site["dir"], site["net"].addr["kvm1"]
    inv = tmp_path / "refused.yml"
    inv.write_text(
        f"all:\n  vars:\n    unifork_prefix: {d['prefix']}\n    unifork_etc: {d['etc']}\n"
        f"  children:\n    broker:\n      hosts:\n        broker1:\n"
        f"    kvm_hosts:\n      hosts:\n"
        f"        noport: {{ansible_host: {addr}, ansible_port: 2222}}\n"
        f"        nokey: {{ansible_host: {addr}, ansible_ssh_private_key_file: "
        f"{tmp_path / 'other'}}}\n")
    got = site["net"].run("hub", UNIFORK, "cluster", "status", "-i", inv, timeout=60, text=True)
    assert got.returncode == 1
    table = rows(got.stdout)
    assert table["noport"][2] == table["nokey"][2] == "unreachable"
    errors = sorted(got.stderr.splitlines())
    assert errors[0].startswith(f"unifork: nokey (root@{addr}): SSH refused the login as root")
    assert errors[1].startswith(f"unifork: noport (root@{addr}:2222): cannot connect over SSH")
    assert len(errors) == 2
