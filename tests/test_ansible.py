"""Deploying with Ansible (ansible/): the playbook is clean (syntax,
ansible-lint's production profile), refuses bad input before it changes
anything, and provisions this machine for real as a one-host cluster
(connection: local): Redis with its password, a worker under supervisord,
a job through it, and a second run that changes nothing.

Every path of the converge is in the test's directory and Redis listens on
127.0.0.1 on a port of 16400-16499; the rules are written and checked with
`nft -c` (unifork_nftables_load=false keeps them out of this machine's
ruleset) and then loaded into a network namespace of the test's own."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, native

ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
PASSWORD = "pw-test-0123456789abcdef"
SECRET = "secret-test-0123456789abcdef"
REDIS_PORTS = range(16400, 16500)
NETNS = "ufan-deploy"
FORK_PORTS, BRIDGE_PORTS, FILES_PORTS = (20100, 20355), (20400, 20655), (20700, 20955)


def playbook(inventory: Path, *extra: str, timeout: float = 600
             ) -> subprocess.CompletedProcess:
    """ansible-playbook site.yml with (inventory); its output as text."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                           str(ANSIBLE / "site.yml"), *extra], capture_output=True, text=True,
                          timeout=timeout, env=env)


def recap(run: subprocess.CompletedProcess) -> dict[str, int]:
    """The PLAY RECAP's counts (ok, changed, failed...) of the one host."""
    line = re.findall(r"^\S+\s+: (ok=.*)$", run.stdout, re.M)
    assert line, run.stdout[-3000:] + run.stderr[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line[-1])}


def failure(run: subprocess.CompletedProcess) -> str:
    """The message of the task that failed (its "msg")."""
    msgs = re.findall(r'^fatal: \[[^]]+\]: FAILED! => .*?"msg": "((?:[^"\\]|\\.)*)"',
                      run.stdout, re.M)
    assert msgs, run.stdout[-3000:]
    return msgs[0]


def free_redis_port() -> int:
    for port in REDIS_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port in 16400-16499")


def inventory(d: Path, port: int, **changes) -> Path:
    """A one-host cluster on this machine, every path under (d)."""
    host_vars = {"unifork_cluster_address": "127.0.0.1", "unifork_advertise": "127.0.0.1",
                 "unifork_slots": 2}
    all_vars = {
        "ansible_connection": "local",
        "unifork_redis_password": PASSWORD, "unifork_secret": SECRET,
        "unifork_prefix": str(d / "opt"), "unifork_etc": str(d / "etc"),
        "unifork_log_dir": str(d / "log"), "unifork_run_dir": str(d / "run"),
        "unifork_redis_dir": str(d / "redis"), "unifork_redis_user": "root",
        "unifork_redis_port": port, "unifork_source": str(ROOT),
        "unifork_controller_cache": str(d / "cache"), "unifork_nftables_load": False,
    }
    groups = {"broker": {"hosts": {"node1": dict(host_vars)}},
              "kvm_hosts": {"hosts": {"node1": dict(host_vars)}}}
    for key, value in changes.items():
        if key in ("broker", "kvm_hosts") and value is None:
            del groups[key]
        else:
            all_vars[key] = value
    path = d / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": all_vars, "children": groups}}))
    return path


def worker_env(d: Path) -> dict[str, str]:
    lines = (d / "etc" / "worker.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


def deployed(d: Path, *args: str, url: str | None = None, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    """The deployed `unifork` with the environment of worker.env."""
    env = {**os.environ, **worker_env(d)}
    if url is not None:
        env["UNIFORK_REDIS_URL"] = url
    return subprocess.run([str(d / "opt" / "venv" / "bin" / "unifork"), *args],
                          capture_output=True, timeout=timeout, env=env)


def descendants(pid: int) -> set[int]:
    """The processes below (pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def stop_supervisord(d: Path) -> None:
    """Stop what the converge started: supervisord, with Redis and the
    worker; none of the worker's QEMUs may outlive it."""
    conf, pidfile = d / "etc" / "supervisord.conf", d / "run" / "supervisord.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    tree: set[int] = set()
    try:
        tree = descendants(pid)
    finally:
        subprocess.run(["supervisorctl", "-c", str(conf), "shutdown"], capture_output=True,
                       timeout=90)
        deadline = time.monotonic() + 90
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while tree & running() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = tree & running()
    for stray in left:                          # (what would not stop)
        os.kill(stray, signal.SIGKILL)
    assert left == set(), "Redis, the worker or its QEMUs outlived supervisord"


def running() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    """This machine provisioned once by site.yml: the directory, the Redis
    port, the first run and how long it took."""
    d = tmp_path_factory.mktemp("converge")
    port = free_redis_port()
    inv = inventory(d, port)
    started = time.monotonic()
    try:
        first = playbook(inv)
        took = time.monotonic() - started
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        wait_for_worker(d)
        yield {"dir": d, "port": port, "inventory": inv, "first": first, "took": took}
    finally:
        stop_supervisord(d)


def wait_for_worker(d: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = deployed(d, "hosts").stdout
        if b"node1" in out and b" ago" in out:
            time.sleep(2)           # its Celery worker takes its queues
            return
        time.sleep(0.5)
    raise AssertionError("the worker did not register: "
                         + (d / "log" / "worker.log").read_text()[-2000:])


# -- the playbook itself --------------------------------------------------------
def test_the_playbook_passes_ansible_playbooks_syntax_check():
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i",
                          str(ANSIBLE / "inventory.example.yml"), "--syntax-check",
                          str(ANSIBLE / "site.yml")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ansible_lint_with_the_production_profile_is_clean():
    run = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline",
                          "--nocolor"], cwd=ANSIBLE, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in run.stderr


def test_the_slots_follow_the_hosts_memory_and_cores_unless_set(tmp_path):
    (tmp_path / "show.yml").write_text(yaml.safe_dump([{
        "name": "Show the slots", "hosts": "all", "gather_subset": ["!all", "!min", "hardware"],
        "roles": [{"role": "unifork"}],
        "tasks": [{"name": "Show", "ansible.builtin.debug": {"msg": "SLOTS={{ unifork_worker_slots }}"}}],
    }]))
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"},
        "hosts": {"counted": {}, "given": {"unifork_slots": 5}}}}))
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                          str(tmp_path / "show.yml")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
                              "ANSIBLE_NOCOLOR": "1"})
    assert run.returncode == 0, run.stdout[-3000:]
    shown = dict(re.findall(r'ok: \[(\w+)\] => \{\s+"msg": "SLOTS=(\d+)"', run.stdout))
    mem_mib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) // 1024
    assert shown == {"counted": str(max(1, min(os.cpu_count() * 4, (mem_mib - 1024) // 256))),
                     "given": "5"}


# -- bad input: one line, a non-zero exit, nothing changed --------------------------
@pytest.mark.parametrize("change, says", [
    ({"broker": None}, "inventory: it needs exactly one host in group broker (it has 0)"),
    ({"kvm_hosts": None}, "and at least one in group kvm_hosts (it has 0)"),
    ({"unifork_kvm_device": "/dev/no-kvm-here"},
     "node1: /dev/no-kvm-here is missing: unifork needs KVM"),
    ({"unifork_redis_password": "short"},
     "unifork_redis_password and unifork_secret: each must be set"),
])
def test_bad_input_stops_the_playbook_with_one_line_before_any_change(tmp_path, change, says):
    run = playbook(inventory(tmp_path, free_redis_port(), **change), timeout=180)
    assert run.returncode != 0
    msg = failure(run)
    assert says in msg and "\\n" not in msg
    assert recap(run)["changed"] == 0
    assert not any((tmp_path / sub).exists() for sub in ("opt", "etc", "log", "run", "redis"))


# -- the converge ---------------------------------------------------------------------
@pytest.mark.converge
def test_a_converge_provisions_this_machine_as_a_one_host_cluster(converged):
    d = converged["dir"]
    assert recap(converged["first"])["failed"] == 0
    print(f"first converge: {converged['took']:.1f} s")
    hosts = deployed(d, "hosts").stdout.decode().splitlines()
    assert [line.split()[:4] for line in hosts[1:]] == [["node1", "127.0.0.1", "0", "2"]]
    deadline = time.monotonic() + 20         # RUNNING once up for supervisord's startsecs
    while True:
        got = subprocess.run(["supervisorctl", "-c", str(d / "etc" / "supervisord.conf"),
                              "status"], capture_output=True, text=True).stdout
        states = dict(line.split()[:2] for line in got.splitlines())
        if states == {"unifork-redis": "RUNNING", "unifork-worker": "RUNNING"} \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == {"unifork-redis": "RUNNING", "unifork-worker": "RUNNING"}, got


@pytest.mark.converge
def test_the_worker_env_follows_the_contract(converged):
    d, port = converged["dir"], converged["port"]
    assert (d / "etc" / "worker.env").stat().st_mode & 0o777 == 0o600
    assert worker_env(d) == {
        "UNIFORK_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
        "UNIFORK_SECRET": SECRET, "UNIFORK_HOST_NAME": "node1",
        "UNIFORK_WORKER_SLOTS": "2", "UNIFORK_WORKER_ADVERTISE": "127.0.0.1",
        "UNIFORK_FORK_PORTS": "%d-%d" % FORK_PORTS, "UNIFORK_BRIDGE_PORTS": "%d-%d" % BRIDGE_PORTS,
        "UNIFORK_FILES_PORTS": "%d-%d" % FILES_PORTS, "UNIFORK_LOG_LEVEL": "warning"}
    assert (d / "log" / "worker.log").exists()


@pytest.mark.converge
def test_a_job_submitted_through_the_converged_cluster_succeeds(converged):
    d = converged["dir"]
    primes = d / "opt" / "src" / "guest" / "build" / "examples" / "primes.musl"
    got = deployed(d, "submit", "--wait", str(primes), "200000", "2")
    assert got.returncode == 0, got.stderr
    assert got.stdout == native(primes, "200000", "2").stdout


@pytest.mark.converge
def test_redis_has_a_password_aof_and_listens_on_the_cluster_address_only(converged):
    d, port = converged["dir"], converged["port"]

    def cli(*args: str, password: str = PASSWORD) -> str:
        return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                              capture_output=True, text=True, timeout=10,
                              env={**os.environ, "REDISCLI_AUTH": password}).stdout
    assert cli("config", "get", "appendonly").split() == ["appendonly", "yes"]
    assert cli("config", "get", "bind").split() == ["bind", "127.0.0.1"]
    assert cli("ping", password="").startswith("NOAUTH")
    assert list((d / "redis").rglob("appendonly.aof*"))


@pytest.mark.converge
def test_a_second_converge_changes_nothing(converged):
    started = time.monotonic()
    second = playbook(converged["inventory"])
    print(f"second converge: {time.monotonic() - started:.1f} s")
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second)["changed"] == 0, [
        t for t in re.split(r"\n(?=TASK )", second.stdout) if "\nchanged:" in t]


@pytest.mark.converge
def test_a_wrong_redis_password_stops_the_playbook_before_any_change(converged):
    d = converged["dir"]
    env_before = (d / "etc" / "worker.env").stat()
    run = playbook(converged["inventory"], "-e", "unifork_redis_password=wrong-0123456789abcdef")
    assert run.returncode != 0
    assert failure(run) == (f"node1: the Redis at 127.0.0.1:{converged['port']} refuses "
                            "unifork_redis_password: give the one it runs with (or "
                            "unifork_redis_password_rotate=true to change it)")
    assert recap(run)["changed"] == 0
    assert (d / "etc" / "worker.env").stat().st_mtime_ns == env_before.st_mtime_ns
    assert deployed(d, "hosts").returncode == 0       # the cluster still runs as it was


@pytest.mark.converge
@pytest.mark.parametrize("password", ["wrong-0123456789abcdef", None])
@pytest.mark.parametrize("command", [["hosts"], ["worker", "--host-name", "intruder"]])
def test_a_client_or_worker_with_a_wrong_or_no_redis_password_gets_one_line_and_fails(
        converged, password, command):
    port = converged["port"]
    auth = f":{password}@" if password else ""
    got = deployed(converged["dir"], *command, url=f"redis://{auth}127.0.0.1:{port}/0",
                   timeout=60)
    assert got.returncode != 0
    err = got.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("unifork: ") and "password" in err, err
    assert "wrong-0123456789abcdef" not in err                  # never printed


@pytest.mark.converge
def test_a_new_redis_password_reaches_redis_and_the_worker_when_rotation_is_asked(converged):
    d, port = converged["dir"], converged["port"]
    new = "rotated-0123456789abcdef"
    run = playbook(converged["inventory"], "-e", f"unifork_redis_password={new}",
                   "-e", "unifork_redis_password_rotate=true")
    assert run.returncode == 0, run.stdout[-4000:]
    assert worker_env(d)["UNIFORK_REDIS_URL"] == f"redis://:{new}@127.0.0.1:{port}/0"
    old = deployed(d, "hosts", url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert old.returncode != 0                      # Redis was restarted with the new one
    wait_for_worker(d)                              # and the worker with its new worker.env
    primes = d / "opt" / "src" / "guest" / "build" / "examples" / "primes.musl"
    got = deployed(d, "submit", "--wait", str(primes), "20000", "2")
    assert got.returncode == 0, got.stderr


@pytest.mark.converge
def test_the_systemd_units_for_hosts_with_systemd_pass_systemd_analyze_verify(converged,
                                                                               tmp_path):
    roles = ANSIBLE / "roles"
    units = {"unifork-redis.service": roles / "broker" / "templates",
             "unifork-worker.service": roles / "kvm_host" / "templates",
             "unifork-nftables.service": roles / "kvm_host" / "templates"}
    (tmp_path / "render.yml").write_text(yaml.safe_dump([{
        "name": "Render the units", "hosts": "kvm_hosts",
        "gather_subset": ["!all", "!min", "hardware", "network"],
        "roles": [{"role": "unifork"}],
        "tasks": [{"name": f"Render {unit}", "ansible.builtin.template": {
            "src": str(where / f"{unit}.j2"), "dest": str(tmp_path / unit), "mode": "0644"}}
            for unit, where in units.items()]}]))
    run = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(converged["inventory"]),
                          "-e", "ansible_python_interpreter=/usr/bin/python3",
                          str(tmp_path / "render.yml")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "ANSIBLE_ROLES_PATH": str(roles),
                                           "ANSIBLE_NOCOLOR": "1"})
    assert run.returncode == 0, run.stdout[-3000:]
    got = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in units)],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stderr == "", got.stderr


# -- the firewall ---------------------------------------------------------------------
@pytest.fixture
def netns():
    """A namespace of the test's own, 10.234.0.2, reached from here at 10.234.0.1."""
    def ip(*args: str, check: bool = True) -> None:
        subprocess.run(["ip", *args], check=check, capture_output=True)
    ip("netns", "del", NETNS, check=False)
    ip("link", "del", "ufan-dep0", check=False)
    ip("netns", "add", NETNS)
    try:
        ip("link", "add", "ufan-dep0", "type", "veth", "peer", "name", "ufan-dep1")
        ip("link", "set", "ufan-dep1", "netns", NETNS)
        ip("addr", "add", "10.234.0.1/30", "dev", "ufan-dep0")
        ip("link", "set", "ufan-dep0", "up")
        for args in (("addr", "add", "10.234.0.2/30", "dev", "ufan-dep1"),
                     ("link", "set", "ufan-dep1", "up"), ("link", "set", "lo", "up")):
            ip("netns", "exec", NETNS, "ip", *args)
        yield NETNS
    finally:
        ip("link", "del", "ufan-dep0", check=False)
        ip("netns", "del", NETNS, check=False)


LISTEN_AND_CONNECT = r"""
import socket, sys
port, src = int(sys.argv[1]), sys.argv[2]
c = socket.socket()
c.settimeout(1.5)
if src != "-":
    c.bind((src, 0))
try:
    c.connect(("10.234.0.2", port))
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("dropped")
"""


@pytest.mark.converge
def test_the_firewall_rules_let_only_the_clusters_hosts_reach_the_fork_ports(converged, netns):
    rules = converged["dir"] / "etc" / "nftables.nft"
    assert subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(rules)], check=True)
    listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet",
                             "unifork"], capture_output=True, text=True).stdout
    assert "127.0.0.1" in listed and "20100-20355" in listed and "20400-20655" in listed
    assert "20700-20955" in listed

    def probe(port: int, inside: bool) -> str:
        cmd = [sys.executable, "-c", LISTEN_AND_CONNECT, str(port), "-"]
        if inside:                          # from the namespace itself: a cluster host
            cmd = ["ip", "netns", "exec", netns, *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    # 10.234.0.1 is not one of the cluster's hosts: its packets to a fork
    # port are dropped; to a port outside the ranges, the kernel refuses.
    assert probe(FORK_PORTS[0], inside=False) == "dropped"
    assert probe(FORK_PORTS[1], inside=False) == "dropped"
    assert probe(FILES_PORTS[0], inside=False) == "dropped"
    assert probe(FORK_PORTS[0] - 1, inside=False) == "refused"
    assert probe(FORK_PORTS[0], inside=True) == "refused"      # this host itself
    # Once 10.234.0.1 is a cluster host, its packets get through.
    subprocess.run(["ip", "netns", "exec", netns, "nft", "add", "element", "inet", "unifork",
                    "cluster4", "{ 10.234.0.1 }"], check=True)
    assert probe(FORK_PORTS[0], inside=False) == "refused"
