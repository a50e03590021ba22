"""Several hosts on this machine: network namespaces joined by a bridge.

    with Hosts(["hostA", "hostB"]) as net:
        net.run("hostA", "ip", "addr")          # a command inside hostA
        net.addr["hostA"]                        # its address on the bridge

The bridge lives in a namespace of its own ("hub"), which also holds
Redis in the cluster tests; nothing touches the machine's own network.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

SUBNET = "10.231.0"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    def __init__(self, names: list[str]) -> None:
        tag = f"uf{os.getpid() % 100000}"
        self.ns = {"hub": f"{tag}hub", **{n: f"{tag}{n}" for n in names}}
        self.addr = {"hub": f"{SUBNET}.1"}
        for i, n in enumerate(names):
            self.addr[n] = f"{SUBNET}.{i + 2}"
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

    def drop_udp(self, host: str, percent: int) -> None:
        """Lose (percent) % of the UDP datagrams (IP fragments) (host) receives."""
        ns = self.ns[host]
        for rule in ("add table inet uflossy",
                     "add chain inet uflossy input { type filter hook input priority 0 ; }",
                     f"add rule inet uflossy input meta l4proto udp numgen random mod 100 "
                     f"< {percent} counter drop"):
            subprocess.run(["ip", "netns", "exec", ns, "nft", *rule.split()], check=True,
                           capture_output=True)

    def kill_host(self, host: str) -> None:
        """Kill every process in (host)'s namespace, as a power cut would."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

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
