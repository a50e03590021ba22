"""The one configuration: every UNIFORK_* knob, read and checked once.

Each knob is a variable of the environment (KNOBS, the table the README
shows); the command line sets a few of them for its own process
(`unifork worker --host-name --slots --advertise --fork-ports
--bridge-ports --files-ports --driver`, `--redis`)
through override(), which checks them the same way.  Everything else reads
get().  A bad value is a ConfigError that names the variable, the value
and what it takes.  Processes started after override() (Celery's pool, forked)
inherit it; nothing is passed on through os.environ.

This module imports nothing heavy: `unifork run` reads it before QEMU
starts.
"""
from __future__ import annotations

import os

from workers.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bool(s: str) -> bool:
    if s not in ("0", "1"):
        raise ValueError("0 or 1")
    return s == "1"


def _int(lo: int, hi: int):
    def parse(s: str) -> int:
        v = int(s)
        if not lo <= v <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return v
    parse.takes = f"a whole number from {lo} to {hi}"
    return parse


def _float(lo: float):
    def parse(s: str) -> float:
        v = float(s)
        if v < lo:
            raise ValueError(f"a number of seconds, at least {lo:g}")
        return v
    parse.takes = f"a number of seconds, at least {lo:g}"
    return parse


def _ports(s: str) -> tuple[int, int] | None:
    """LO-HI, or empty: any free port."""
    if not s:
        return None
    lo, sep, hi = s.partition("-")
    a, b = int(lo), int(hi if sep else lo)
    if not 1 <= a <= b <= 65535:
        raise ValueError("LO-HI, ports from 1 to 65535")
    return a, b


def _optional_int(lo: int, hi: int):
    """A whole number from (lo) to (hi), or empty: not set (None)."""
    whole = _int(lo, hi)

    def parse(s: str) -> int | None:
        return whole(s) if s else None
    parse.takes = f"a whole number from {lo} to {hi}, or nothing"
    return parse


def _choice(*options: str):
    def parse(s: str) -> str:
        if s not in options:
            raise ValueError(" or ".join(repr(o) for o in options))
        return s
    return parse


def _text(s: str) -> str:
    return s


# (variable, attribute, parse, default, what it is): the README's table.
KNOBS = (
    ("UNIFORK_REDIS_URL", "redis_url", _text, "redis://127.0.0.1:6379/0",
     "Redis: the broker, the result backend and the cluster's state (`--redis`)"),
    ("UNIFORK_KERNEL", "kernel", _text, os.path.join(ROOT, "guest", "build", "kernel.elf"),
     "the guest kernel"),
    ("UNIFORK_QEMU", "qemu", _text, "qemu-system-x86_64", "the QEMU to run"),
    ("UNIFORK_ACCEL", "accel", _choice("", "kvm", "tcg"), "",
     "`kvm` insists on KVM, `tcg` forces software emulation; empty: KVM if /dev/kvm works"),
    ("UNIFORK_DRIVER", "driver", _choice("qemu", "libvirt"), "qemu",
     "what runs the VMs: `qemu` (QEMU started directly, microvm) or `libvirt` (a "
     "transient libvirt domain each, pc; `--driver`)"),
    ("UNIFORK_LIBVIRT_URI", "libvirt_uri", _text, "qemu:///system",
     "the libvirtd the libvirt driver asks for domains"),
    ("UNIFORK_FAST_BELL", "fast_bell", _bool, "1",
     "0: VMs of jobs across hosts get no fast doorbell (COM2 only)"),
    ("UNIFORK_HOST_MAX_VMS", "host_max_vms", _int(1, 4096), "64",
     "`unifork run`: the most VMs (processes) one job runs at once"),
    ("UNIFORK_IDLE_VMS", "idle_vms", _int(1, 64), "4",
     "the most idle (parked) VMs a job keeps on a host"),
    ("UNIFORK_FORK_OFFERS", "fork_offers", _bool, "1",
     "0: forks onto other hosts always go by their Celery task (no idle worker "
     "process offers itself to them)"),
    ("UNIFORK_FORK_WAIT", "fork_wait", _float(0), "5",
     "seconds a fork waits for a VM, or a slot in the cluster, before EAGAIN"),
    ("UNIFORK_FILES_MAX_OPEN", "files_max_open", _int(16, 1 << 20), "4096",
     "the most files a job holds open at once in its tree; past it, EMFILE"),
    ("UNIFORK_FILES_MAX_WRITE", "files_max_write", _int(0, 1 << 62), "0",
     "bytes a job may write into its tree, all writes counted; past it, EDQUOT (0: no limit)"),
    ("UNIFORK_INPUT_MAX", "input_max", _int(0, 1 << 40), str(256 << 20),
     "bytes of files a cluster job takes in (`submit --input`) or gives back (its outputs)"),
    ("UNIFORK_TREE_KEEP", "tree_keep", _int(0, 1 << 31), "3600",
     "seconds a cluster job's tree stays fetchable after it ends (its files, up to "
     "UNIFORK_INPUT_MAX; 0: only its outputs)"),
    ("UNIFORK_HOST_NAME", "host_name", _text, "",
     "this worker's name in the cluster (`--host-name`; default the node name)"),
    ("UNIFORK_WORKER_SLOTS", "worker_slots", _optional_int(1, 4096), "",
     "`unifork worker`: the VMs this host runs at once (`--slots`)"),
    ("UNIFORK_WORKER_ADVERTISE", "worker_advertise", _text, "",
     "`unifork worker`: the address other hosts reach this one at (`--advertise`)"),
    ("UNIFORK_FORK_PORTS", "fork_ports", _ports, "",
     "LO-HI: TCP ports for forks arriving here, for a firewall (`--fork-ports`)"),
    ("UNIFORK_BRIDGE_PORTS", "bridge_ports", _ports, "",
     "LO-HI: UDP ports for pipes between hosts (`--bridge-ports`)"),
    ("UNIFORK_FILES_PORTS", "files_ports", _ports, "",
     "LO-HI: TCP ports of a job's file server, for its processes on other hosts "
     "(`--files-ports`)"),
    ("UNIFORK_BRIDGE_TIMEOUT", "bridge_timeout", _float(0.1), "5",
     "seconds of silence after which a peer of a pipe is gone"),
    ("UNIFORK_BRIDGE_NICE", "bridge_nice", _int(-20, 0), "-20",
     "the nice value of a supervisor that carries pipes to other hosts (0: as is)"),
    ("UNIFORK_BRIDGE_STATS", "bridge_stats", _bool, "0",
     "1: the pipe bridge prints its counts in the job's stderr as it ends"),
    ("UNIFORK_SECRET", "secret", _text, "",
     "the cluster's secret (fork streams' and pipes' keys); empty: one kept in Redis"),
    ("UNIFORK_LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error"),
     "warning", "the worker's Celery log level"),
    ("UNIFORK_TEST_DUPLICATE_FORKS", "test_duplicate_forks", _bool, "0",
     "tests only: every fork task is sent twice"),
    ("UNIFORK_TEST_BRIDGE_RELAY", "test_bridge_relay", _text, "",
     "tests only: IP:PORT of a relay every pipe datagram goes through"),
)
_BY_ATTR = {k[1]: k for k in KNOBS}


class Config:
    """The settings in force: one attribute per knob, and the worker's
    identity once it has registered (host_name, incarnation)."""

    __slots__ = (*_BY_ATTR, "incarnation")

    def __init__(self, values: dict) -> None:
        for attr, value in values.items():
            setattr(self, attr, value)

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{a}={getattr(self, a)!r}" for a in self.__slots__) + ")"


def _parse(var: str, parse, raw: str):
    try:
        return parse(raw.strip())
    except ValueError as err:
        takes = getattr(parse, "takes", str(err) or "another value")
        raise ConfigError(f"{var}={raw!r}: it takes {takes}") from None


def load(environ=os.environ) -> Config:
    """The settings the environment gives (the defaults where it gives none).

    :raise ConfigError: a value that does not parse, or is out of range.
    """
    values = {attr: _parse(var, parse, environ.get(var, default))
              for var, attr, parse, default, _ in KNOBS}
    values["incarnation"] = ""
    return Config(values)


_current: Config | None = None


def get() -> Config:
    """The settings in force (read from the environment the first time)."""
    global _current
    if _current is None:
        _current = load()
    return _current


def override(**values) -> Config:
    """Change settings for this process (the command line's options, the
    worker's identity), each checked as its variable would be; a value of
    None leaves the setting as it is."""
    global _current
    current = get()
    merged = {a: getattr(current, a) for a in Config.__slots__}
    for attr, raw in values.items():
        if raw is None:
            continue
        if attr == "incarnation":
            merged[attr] = str(raw)
            continue
        var, _, parse, _, _ = _BY_ATTR[attr]
        merged[attr] = _parse(var, parse, str(raw)) if isinstance(raw, str) else raw
    _current = Config(merged)
    return _current


def reload() -> Config:
    """Read the environment again (tests that change it)."""
    global _current
    _current = None
    return get()
