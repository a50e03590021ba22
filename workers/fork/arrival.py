"""The VM a fork from another host arrives in.

A worker that takes a fork across hosts (broker/cluster/receiving.py) needs
a VM for the child before it claims the fork's ticket: an Arrival, a VM
that boots with no program and parks, in a shared region of its own, and
a socket listening for the parent's stream.  Each worker process keeps one
booted ahead of time (spare()); receive() reads the parent's RAM into it
(wire.py) and leaves a child that only waits to be let go (clone.py).
"""
from __future__ import annotations

import random
import select
import socket
import time

from workers import abi, config
from workers.errors import TransferError
from workers.fork import clone, wire
from workers.vm.machine import VM, kernel_id
from workers.vm.rings import SharedRegion

ACCEPT_TIMEOUT = 15.0


class Arrival:
    """A child VM of (mem_mib) to be made here for a fork from elsewhere."""

    def __init__(self, mem_mib: int) -> None:
        self.mem_mib = mem_mib
        self.shm = SharedRegion()
        self.vm: VM | None = VM(mem_mib, self.shm, fast_bell=True)   # as its parent's
        self.listener: socket.socket | None = None
        self.nonce = b""
        self.adopted = False        # a subtree's Job owns the VM (and its slot) now
        try:
            self.vm.load_vessel()
            self.vm.start()
        except BaseException:
            self.close()
            raise

    def usable(self, mem_mib: int) -> bool:
        return self.mem_mib == mem_mib and self.vm.poll() is None and not self.vm.check_stderr()

    def listen(self, address: str, nonce: bytes) -> None:
        """Listen for the parent's stream, sealed under keys from (nonce)."""
        for port in _ports():
            try:
                self.listener = socket.create_server((address, port), backlog=1)
                break
            except OSError:
                continue
        else:
            raise OSError("no free TCP port in UNIFORK_FORK_PORTS=%d-%d" % config.get().fork_ports)
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
            self._parked(30)
            # Where the parked kernel does not run, the parent's RAM goes
            # straight in (clone.py); what was there is not the child's.
            clone.punch(self.vm.ram_fd, abi.USER_BASE, self.vm.layout.ram_size - abi.USER_BASE)
            with memoryview(self.vm.mem) as ram:
                got = wire.receive_fork(conn, secret, self.nonce, ram, abi.USER_BASE)
            why = self._refusal(got.header, pid)
            if why:                     # the whole stream came: the parent waits for our word
                wire.send_reply(conn, secret, self.nonce, {"error": why})
                raise TransferError(why)
            clone.fill_received(self.vm, got)
            return got.header, conn, began
        except BaseException:
            conn.close()
            raise

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

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.vm is not None:
            self.vm.close()
        self.shm.close()


_spare: Arrival | None = None


def arrival(mem_mib: int, address: str, nonce: bytes) -> Arrival:
    """A child VM for a fork, listening for its stream (sealed under keys
    from (nonce)): this process's spare if it fits, else a new one."""
    global _spare
    a, _spare = _spare, None
    if a is not None and not a.usable(mem_mib):
        a.close()
        a = None
    a = a or Arrival(mem_mib)
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
    if _spare is None and a.usable(a.mem_mib):
        _spare = a
    else:
        a.close()


def spare(mem_mib: int = 128) -> None:
    """Have a VM of (mem_mib) ready for the next fork onto this host; it
    holds no slot (a slot is a VM that runs a process)."""
    global _spare
    if _spare is None:
        try:
            _spare = Arrival(mem_mib)
        except Exception:       # noqa: BLE001 - no spare: the next fork starts one
            _spare = None


def _ports() -> list[int]:
    """Ports for an incoming fork, in the order to try: any free port, or
    those of UNIFORK_FORK_PORTS=LO-HI (`unifork worker --fork-ports`), for
    a firewall, shuffled."""
    if config.get().fork_ports is None:
        return [0]
    lo, hi = config.get().fork_ports
    ports = list(range(lo, hi + 1))
    random.shuffle(ports)
    return ports
