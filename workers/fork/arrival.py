"""The VM a fork from another host arrives in.

A worker that takes a fork across hosts (broker/cluster/receiving.py) needs
a VM for the child before it claims the fork's ticket: an Arrival, a VM
that boots with no program and parks, in a shared region of its own, and
a socket listening for the parent's stream.  Each worker process keeps one
booted ahead of time (spare()); receive() reads the parent's RAM into it
(wire.py) and leaves a child that only waits to be let go (clone.py).

When the subtree a fork made here is over, the VM its first process ended
in, parked, is kept for that job's next fork onto this host (keep()), with
its region scrubbed, for KEEP_FOR seconds: a job that forks onto this host
again boots no QEMU for it.  A kept VM is only ever its job's (vessel(),
give_back()); the spare belongs to no job until a fork takes it.
"""
from __future__ import annotations

import select
import socket
import threading
import time

from workers import abi, config
from workers.errors import TransferError
from workers.fork import clone, wire
from workers.ports import bind_in
from workers.vm.machine import VM, kernel_id
from workers.vm.rings import SharedRegion

ACCEPT_TIMEOUT = 15.0
KEEP_FOR = 3.0          # seconds a job's VM is kept here, parked, for its next fork


class Arrival:
    """A child VM of (mem_mib) to be made here for a fork from elsewhere."""

    def __init__(self, mem_mib: int, vm: VM | None = None,
                 shm: SharedRegion | None = None) -> None:
        """A new VM, booting; or (vm), parked, in its region (shm) (keep())."""
        self.mem_mib = mem_mib
        self.shm = shm or SharedRegion()
        self.listener: socket.socket | None = None
        self.nonce = b""
        self.received: wire.Received | None = None
        self.refused: str | None = None     # why take() said no to the parent's host
        self.bridge = None                  # the pipe bridge of its region, made ahead
        self.adopted = False        # a subtree's Job owns the VM (and its slot) now
        self.job = ""               # kept for this job's forks only (keep())
        self.parked_vm: VM | None = None    # its subtree's VM to keep, once over
        self.vm: VM | None = vm
        if vm is not None:
            return
        try:
            self.vm = VM(mem_mib, self.shm, fast_bell=True)   # as its parent's
            self.vm.load_vessel()
            self.vm.start()
        except BaseException:
            self.close()
            raise

    def usable(self, mem_mib: int) -> bool:
        return self.mem_mib == mem_mib and self.vm.poll() is None and not self.vm.check_stderr()

    def listen(self, address: str, nonce: bytes) -> None:
        """Listen for the parent's stream, sealed under keys from (nonce)."""
        self.listener = bind_in(config.get().fork_ports, "UNIFORK_FORK_PORTS",
                                lambda port: socket.create_server((address, port), backlog=1))
        self.listener.settimeout(ACCEPT_TIMEOUT)
        self.nonce = nonce

    def where(self, host: str, address: str) -> dict:
        """Where the parent's host is to send the stream (placement.place)."""
        return {"host": host, "address": address, "port": self.listener.getsockname()[1]}

    def receive(self, secret: bytes, pid: int) -> tuple[dict, socket.socket, float]:
        """Take the parent's stream into the parked VM: the child is ready
        to be let go.  Returns the header, the connection, and when the stream
        began to arrive (monotonic): the header's clock reading was taken
        just before it was sent, so the child's clock runs on from then."""
        conn, _ = self.listener.accept()
        self.listener.close()
        try:
            conn.settimeout(30)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not select.select([conn], [], [], 30)[0]:
                raise TransferError("the parent's host sent no fork stream")
            began = time.monotonic()
            self.take(wire.open_fork(conn, secret, self.nonce), conn, secret, pid)
            return self.received.header, conn, began
        except BaseException:
            conn.close()
            raise

    def take(self, got: wire.Received, conn: socket.socket, secret: bytes, pid: int) -> None:
        """Read the RAM of (got), whose header has opened, into the parked
        VM, and make it the child (pid) (it waits to be let go); refused,
        the parent's host is told why."""
        self._parked(30)
        # Where the parked kernel does not run, the parent's RAM goes
        # straight in (clone.py); what was there is not the child's.
        clone.punch(self.vm.ram_fd, abi.USER_BASE, self.vm.layout.ram_size - abi.USER_BASE)
        with memoryview(self.vm.mem) as ram:
            wire.receive_ram(got, ram, abi.USER_BASE)
        why = self._refusal(got.header, pid)
        if why:                     # the whole stream came: the parent waits for our word
            self.refused = why
            wire.send_reply(conn, secret, self.nonce, {"error": why})
            raise TransferError(why)
        clone.fill_received(self.vm, got)
        self.received = got

    def _parked(self, timeout: float) -> None:
        """Wait for the VM to have booted and parked."""
        deadline = time.monotonic() + timeout
        while not self.vm.parked:
            if self.vm.poll() is not None or time.monotonic() > deadline:
                raise TransferError(
                    f"this host's VM for the child did not boot: {self.vm.qemu_stderr()}")
            select.select([self.vm.bell, self.vm.pidfd], [], [], 0.05)
        self.vm.take_doorbells()

    def _refusal(self, header: dict, pid: int) -> str | None:
        """Why a whole fork stream cannot become this child, if it cannot."""
        if header.get("pid") != pid or header.get("ram_size") != self.vm.layout.ram_size:
            return "the fork stream is for another child"
        if header.get("kernel") != kernel_id():
            return "the parent's host and this one run different guest kernels (make setup)"
        if bool(header.get("fast_bell")) != (self.vm.fast is not None):
            return ("the parent's VM and this host's differ in the fast doorbell device "
                    "(KVM on one host and not the other, or UNIFORK_FAST_BELL set differently)")
        if header.get("shm_base", self.vm.layout.shm_base) != self.vm.layout.shm_base:
            return ("the parent's host and this one run different VM drivers "
                    "(UNIFORK_DRIVER, --driver): their VMs map the job's memory elsewhere")
        return None

    def make_bridge(self, address: str) -> None:
        """Make the bridge of the child's region ahead (take_bridge)."""
        from workers.pipes.bridge import open_bridge
        self.bridge = open_bridge(self.shm, None, "", address, None)

    def take_bridge(self, secret: bytes, job_id: str, say):
        """The bridge made ahead, now (job_id)'s and the caller's, or None."""
        bridge, self.bridge = self.bridge, None
        return bridge.for_job(secret, job_id, say) if bridge is not None else None

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
        if self.listener is not None:
            self.listener.close()
        if self.vm is not None:
            self.vm.close()
        if self.parked_vm is not None:
            self.parked_vm.close()
        if self.shm is not None:
            self.shm.close()


_spare: Arrival | None = None
_lock = threading.Lock()    # a fork task's thread and the offer's (offers.py)


_kept: dict[str, tuple[float, Arrival]] = {}    # by job: its VM parked here, and since when


def keep(job_id: str, vm: VM, shm: SharedRegion, mem_mib: int, address: str) -> None:
    """Keep (vm), parked as its process ended here, for the next fork of
    (job_id) onto this host, for KEEP_FOR seconds, with (shm), the region
    it maps, made as new.  Both are keep()'s now: closed if the job has a
    VM kept here already."""
    a = Arrival(mem_mib, vm, shm)
    with _lock:
        if job_id in _kept:
            a.close()
            return
    shm.renew()
    a.job = job_id
    if address:
        try:
            a.make_bridge(address)
        except OSError:
            pass
    with _lock:
        if job_id not in _kept:
            _kept[job_id], a = (time.monotonic(), a), None
    if a is not None:           # another thread kept one meanwhile
        a.close()


def kept_job() -> str:
    """The job whose VM this process keeps now, or ""."""
    with _lock:
        return next(iter(_kept), "")


def expire() -> None:
    """Let kept VMs go after KEEP_FOR seconds, and those that died."""
    now = time.monotonic()
    with _lock:
        gone = [j for j, (since, a) in _kept.items()
                if now - since > KEEP_FOR or a.vm.poll() is not None]
        dropped = [_kept.pop(j)[1] for j in gone]
    for a in dropped:
        a.close()


def vessel(mem_mib: int, job_id: str = "") -> Arrival:
    """A child VM for a fork: the VM kept here for (job_id) if it fits, else
    this process's spare if it fits, else a new one."""
    global _spare
    with _lock:
        _, kept = _kept.pop(job_id, (0.0, None))
    if kept is not None:
        if kept.usable(mem_mib) and kept.vm.parked:
            return kept
        kept.close()
    with _lock:
        a, _spare = _spare, None
    if a is not None and not a.usable(mem_mib):
        a.close()
        a = None
    return a or Arrival(mem_mib)


def arrival(mem_mib: int, address: str, nonce: bytes, job_id: str = "") -> Arrival:
    """A child VM for a fork, listening for its stream (sealed under keys
    from (nonce)): vessel(mem_mib, job_id)."""
    a = vessel(mem_mib, job_id)
    try:
        a.listen(address, nonce)
    except BaseException:
        a.close()
        raise
    return a


def give_back(a: Arrival) -> None:
    """(a) was not needed after all: the next fork's, if it can be."""
    global _spare
    a.listener.close()
    a.listener = None
    with _lock:
        if a.job:                   # a job's own VM: never another job's
            if a.job not in _kept and a.usable(a.mem_mib):
                _kept[a.job], a = (time.monotonic(), a), None
        elif _spare is None and a.usable(a.mem_mib):
            _spare, a = a, None
    if a is not None:
        a.close()


def spare(mem_mib: int = 128, address: str = "") -> None:
    """Have a VM of (mem_mib) ready for the next fork onto this host, and
    with (address), its pipe bridge on it; it holds no slot (a slot is a VM
    that runs a process)."""
    global _spare
    with _lock:
        if _spare is not None:
            return
    try:
        a = Arrival(mem_mib)
    except Exception:           # noqa: BLE001 - no spare: the next fork starts one
        return
    if address:
        try:
            a.make_bridge(address)
        except OSError:         # no UDP port free: the fork makes it, if it can
            pass
    with _lock:
        if _spare is None:
            _spare, a = a, None
    if a is not None:
        a.close()
