"""Several hosts on this machine: network namespaces joined by a bridge.

    with Hosts(["hostA", "hostB"]) as net:
        net.run("hostA", "ip", "addr")          # a command inside hostA
        net.addr["hostA"]                        # its address on the bridge
        url = net.start_redis(tmp)               # Redis on the hub's address
        net.start_workers(unifork, url, {"hostA": 2, "hostB": 1}, tmp)
        net.send_job(url, "hostA", prog, "arg")  # a job on hostA's own queue

The bridge lives in a namespace of its own ("hub"), which also holds
Redis in the cluster tests; nothing touches the machine's own network.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SUBNET = "10.231.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A script's start (run as `python -c JOB+BODY ROOT URL HOST PROG ARGS...`):
# PROG stored in Redis and a job made for it, as plain Celery client code
# does; BODY sends it (kwargs are the task's).
JOB = r"""
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
kwargs = {"image": sha, "name": os.path.basename(prog), "args": args}
"""

# Sends the job, our stdin its stdin, to HOST's own queue; prints its stdout
# (its stderr and "job ID" on stderr), exits with its status.
SEND = JOB + r"""
kwargs["stdin"] = base64.b64encode(sys.stdin.buffer.read()).decode()
res = app.send_task(RUN_JOB, task_id=job, queue=host_queue(host), kwargs=kwargs).get(timeout=600)
sys.stdout.buffer.write(base64.b64decode(res["stdout"]))
sys.stderr.buffer.write(base64.b64decode(res["stderr"]))
print("job", job, file=sys.stderr)
sys.exit(res["exit_status"])
"""

# Exits 0 if the worker named on the command line answers a ping: its
# Celery consumers (which start after the task queues' own) are attached.
ANSWERS = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
os.environ["UNIFORK_REDIS_URL"] = sys.argv[2]
from broker.app import app
sys.exit(0 if app.control.ping([f"unifork@{sys.argv[3]}"], timeout=1.0) else 1)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    def __init__(self, names: list[str], prefix: str = "uf", subnet: str = SUBNET) -> None:
        """(names) and the hub in namespaces named (prefix)PID(name), on
        (subnet).0/24: the hub .1, (names) .2 on."""
        tag = f"{prefix}{os.getpid() % 100000}"
        self.ns = {"hub": f"{tag}hub", **{n: f"{tag}{n}" for n in names}}
        self.addr = {"hub": f"{subnet}.1"}
        for i, n in enumerate(names):
            self.addr[n] = f"{subnet}.{i + 2}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Hosts":
        hub = self.ns["hub"]
        ip("netns", "add", hub)
        ip("-n", hub, "link", "set", "lo", "up")
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "addr", "add", f"{self.addr['hub']}/24", "dev", "br0")
        ip("-n", hub, "link", "set", "br0", "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            if name == "hub":
                continue
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", hub, "link", "set", f"v{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def cmd(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *map(str, argv)]

    def run(self, host: str, *argv, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(host, *argv), capture_output=True, **kw)

    def start(self, host: str, *argv, **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.cmd(host, *argv), **kw)
        self.procs.append(p)
        return p

    # -- a cluster on these hosts ------------------------------------------
    def start_redis(self, tmp, password: str = "") -> str:
        """Redis on the hub's address (with (password), if given); its URL."""
        auth = ["--requirepass", password] if password else []
        self.start("hub", "redis-server", "--bind", self.addr["hub"], "--port", "6379",
                   "--save", "", "--appendonly", "no", "--dir", tmp, "--protected-mode", "no",
                   *auth, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        cli = ["redis-cli", "-h", self.addr["hub"], *(["--no-auth-warning", "-a", password]
                                                      if password else [])]
        while self.run("hub", *cli, "ping").stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        return f"redis://{':' + password + '@' if password else ''}{self.addr['hub']}:6379/0"

    def start_workers(self, unifork, url: str, slots: dict[str, int], tmp, args=(),
                      env: dict | None = None) -> list[subprocess.Popen]:
        """`unifork worker` on each host of (slots), registered and consuming;
        their logs in (tmp)/HOST.log.  They are in self.workers."""
        self._worker_setup = (unifork, url, slots, tmp, args, env)
        self.workers = [self._worker(host, "wb") for host in slots]
        deadline = time.monotonic() + 30
        while self.run("hub", unifork, "hosts", "--redis", url).stdout.count(b" ago") < len(slots):
            assert time.monotonic() < deadline, "the workers did not register"
            time.sleep(0.2)
        time.sleep(2)                   # Celery consumers attach to the queues
        return self.workers

    def _worker(self, host: str, log_mode: str) -> subprocess.Popen:
        unifork, url, slots, tmp, args, env = self._worker_setup
        return self.start(host, unifork, "worker", "--host-name", host, "--slots", slots[host],
                          "--advertise", self.addr[host], "--redis", url, *args,
                          env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(tmp, f"{host}.log"), log_mode))

    def restart_worker(self, host: str) -> None:
        """Start (host)'s worker again, as start_workers did, and again, as a
        service manager would, until it holds its name (a killed worker's
        heartbeat lasts up to 5 s) and consumes."""
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the restarted worker did not come back"
            p = self._worker(host, "ab")
            while p.poll() is None:         # (it exits: "a worker named ... is alive")
                if self.run("hub", sys.executable, "-c", ANSWERS, ROOT, self._worker_setup[1],
                            host, timeout=30).returncode == 0:
                    self.workers.append(p)
                    return

    def stop_workers(self) -> None:
        """Stop every worker (as a service manager does: SIGTERM) and wait."""
        for p in self.workers:
            p.terminate()
        for p in self.workers:
            p.wait(timeout=30)

    def send_job(self, url: str, host: str, prog, *args, timeout: float = 600,
                 stdin: bytes = b"") -> subprocess.CompletedProcess:
        """Run (prog) as a job sent to (host)'s own queue (SEND), (stdin) its stdin."""
        return self.run("hub", sys.executable, "-c", SEND, ROOT, url, host, prog,
                        *map(str, args), timeout=timeout, input=stdin)

    def drop_udp(self, host: str, percent: int) -> None:
        """Lose (percent) % of the UDP datagrams (IP fragments) (host) receives."""
        ns = self.ns[host]
        for rule in ("add table inet uflossy",
                     "add chain inet uflossy input { type filter hook input priority 0 ; }",
                     f"add rule inet uflossy input meta l4proto udp numgen random mod 100 "
                     f"< {percent} counter drop"):
            subprocess.run(["ip", "netns", "exec", ns, "nft", *rule.split()], check=True,
                           capture_output=True)

    def pids(self, host: str) -> list[int]:
        """The processes in (host)'s namespace."""
        return [int(p) for p in subprocess.run(["ip", "netns", "pids", self.ns[host]],
                                               capture_output=True, text=True).stdout.split()]

    def _signal_host(self, host: str, sig: int) -> None:
        for pid in self.pids(host):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill_host(self, host: str) -> None:
        """Kill every process in (host)'s namespace, as a power cut would."""
        self._signal_host(host, signal.SIGKILL)

    def pause_host(self, host: str, pause: bool = True) -> None:
        """Stop (SIGSTOP) every process in (host)'s namespace, as a stalled
        machine would be; or (pause False) let them go on."""
        self._signal_host(host, signal.SIGSTOP if pause else signal.SIGCONT)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name, ns in self.ns.items():
            self.kill_host(name)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
