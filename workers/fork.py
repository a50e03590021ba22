"""The fork engine: clone a running VM into a pooled QEMU.

The measured best path on these machines (QEMU-FACTS.md, "Clone"):

1. the parent's guest has asked to fork and waits for its reply;
2. migrate the parent's device state to the pooled QEMU over a socketpair,
   with x-ignore-shared: neither RAM nor the job's shared region travels in
   the stream.  The source stops when the migration completes;
3. copy the parent's RAM file into the child's, in place and sparse (only
   the extents the parent touched), while the parent is stopped;
4. make the copy the child: its pid, ppid and entropy in its boot page, its
   reply (0) in its control page; count its inherited ring ends in;
5. resume both.  The parent's reply (the child's pid) is written by the
   caller, which owns the process table.

Every step that can fail leaves the parent as it was: the caller kills the
half-made child and answers the parent with an error.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
import time

from . import abi
from .errors import VMError
from .vm import VM

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
# qemu.qmp logs a cancelled connection (a pool VM discarded at job end) as an
# error; every failure that matters reaches the job as an exception.
import logging
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
_libc = ctypes.CDLL(None, use_errno=True)


def punch(fd: int, offset: int, length: int) -> None:
    """Free the pages of [offset, offset+length) of a memfd: they read as zero."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fallocate(PUNCH_HOLE): {os.strerror(e)}")


def copy_ram(src: int, dst: int, size: int) -> int:
    """Make memfd (dst) equal to memfd (src), copying only src's data
    extents (SEEK_DATA/SEEK_HOLE) in place; (dst) stays mapped by its QEMU,
    so it is never truncated or replaced.  Returns the bytes copied."""
    punch(dst, 0, size)
    copied, off = 0, 0
    while off < size:
        try:
            data = os.lseek(src, off, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:       # no data past off
                break
            raise
        hole = min(os.lseek(src, data, os.SEEK_HOLE), size)
        pos = data
        while pos < hole:
            n = os.copy_file_range(src, dst, hole - pos, pos, pos)
            if n <= 0:
                raise OSError(errno.EIO, "copy_file_range copied nothing")
            pos += n
        copied += hole - data
        off = hole
    return copied


class QMPThread:
    """An asyncio loop in a thread of its own, for every QMP conversation of
    a job: pool VMs get ready there in the background while the supervisor
    (a poll loop) goes on; the supervisor waits only for a fork's steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qmp", daemon=True)
        self._thread.start()

    def call(self, coro, timeout: float = 30.0):
        """Run (coro) on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro):
        """Start (coro) on the loop; returns its concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _prepare(vm: VM) -> None:
    """Set the migration capabilities a fork needs, once per QEMU."""
    if vm.migration_ready:
        return
    qmp = await vm.qmp()
    await qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-ignore-shared", "state": True},
        {"capability": "events", "state": True}]})     # MIGRATION: clone() waits for it
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    vm.migration_ready = True


async def arm(vm: VM) -> None:
    """Make a pool VM ready to receive a fork: QMP connected, capabilities
    set, and listening for the migration on one end of a socketpair whose
    other end (vm.mig_sock) a fork gives to the parent."""
    await _prepare(vm)
    qmp = await vm.qmp()
    a, b = socket.socketpair()
    try:
        qmp.send_fd_scm(b.fileno())
        await qmp.execute("getfd", {"fdname": "fork"})
        await qmp.execute("migrate-incoming", {"uri": "fd:fork"})
    except BaseException:
        a.close()
        raise
    finally:
        b.close()
    vm.mig_sock = a


async def _migrated(events, timeout: float) -> None:
    """Wait for a MIGRATION event that says it completed."""
    async def completed() -> None:
        while True:
            status = (await events.get()).get("data", {}).get("status", "")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise VMError(f"fork: migration {status}")
    try:
        await asyncio.wait_for(completed(), timeout)
    except asyncio.TimeoutError:
        raise VMError(f"fork: migration not over after {timeout:g} s") from None


async def _wait_status(qmp, command: str, key: str, done: set[str], fail: set[str],
                       timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = await qmp.execute(command)
        status = r.get(key, "")
        if status in done:
            return status
        if status in fail:
            raise VMError(f"fork: migration {status}: {r.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise VMError(f"fork: migration still {status!r} after {timeout:g} s")
        await asyncio.sleep(0.0002)


async def _cont(qmp, timeout: float = 2.0) -> None:
    """`cont`, retried while QEMU says the migration is not finalized yet.
    On a destination still loading, `cont` makes it start when done."""
    from qemu.qmp import ExecuteError
    deadline = time.monotonic() + timeout
    while True:
        try:
            await qmp.execute("cont")
            return
        except ExecuteError as err:
            if "not finalized" not in str(err) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.0005)


def answer_child(mem, pid: int, ppid: int) -> None:
    """Make a cloned guest's memory the child's, before it runs: its pid,
    its parent, a seed of its own, and fork's answer, 0.  Nothing the
    parent had posted is the child's (it may be sent signals of its own as
    soon as the parent hears of it, while musl's fork still blocks them)."""
    abi.BOOT.put(mem, abi.BOOT_ADDR, pid=pid, ppid=ppid, seed=os.urandom(32), tsc_resume=0)
    seq = abi.CTL.get(mem, abi.CTL_ADDR, "req_seq")
    abi.CTL.put(mem, abi.CTL_ADDR, ret=0, val=(0, 0), sig_posted=0)
    abi.CTL.put(mem, abi.CTL_ADDR, rep_seq=seq)


async def clone(parent: VM, child: VM, pid: int, ppid: int,
                timeout: float = 10.0) -> int:
    """Make (child), a pooled VM, a copy of the stopped-by-us (parent).

    On return both are stopped: the child is ready to run with (pid, ppid)
    and fork's reply 0; the caller writes the parent's reply and calls
    resume().  Returns the bytes of RAM copied.

    :raise VMError: the clone failed; the parent is resumed, unchanged.
    """
    if child.mig_sock is None:
        await arm(child)
    await _prepare(parent)
    pq = await parent.qmp()
    # Each QMP round trip costs ~0.7 ms here: the end of the migration
    # comes as an event, not polled.
    with pq.listener("MIGRATION") as events:
        try:
            await _migrate(pq, child.mig_sock.fileno())
        finally:
            child.mig_sock.close()
            child.mig_sock = None
        try:
            await _migrated(events, timeout)
        except BaseException:
            await _cont(pq)
            raise
    try:
        # The child may still be loading the device state: the RAM copy does
        # not touch it (x-ignore-shared), and with -S it stays paused after.
        copied = copy_ram(parent.ram_fd, child.ram_fd, parent.layout.ram_size)
        answer_child(child.mem, pid, ppid)
    except BaseException:
        await _cont(pq)
        raise
    return copied


async def fork(parent: VM, child: VM, pid: int, ppid: int, cloned, asked: float,
               parent_tsc: int) -> Exception | None:
    """clone(), then cloned() (the caller's bookkeeping, with both copies
    stopped), then resume().  Raises what clone() raises (nothing changed);
    returns what resume() raised, if it did (a VM died meanwhile)."""
    await clone(parent, child, pid, ppid)
    try:
        cloned()
    except BaseException:
        await _cont(await parent.qmp())     # as clone() leaves it when it fails
        raise
    try:
        await resume(parent, child, asked, parent_tsc)
    except Exception as err:        # noqa: BLE001 - the caller says it, or its reaping does
        return err
    return None


async def resume(parent: VM, child: VM, asked: float, parent_tsc: int) -> None:
    """Let both copies run, and tell the child what its parent's clocks
    read (it read (parent_tsc) as it asked to fork; the host saw the
    request at (asked), monotonic).  When they follow the host's TSC, so
    will the child's (the same hypervisor): the host tells it before it
    runs, as of a TSC it can compare with, and it does not wait."""
    offset = clock_offset(parent)
    await _run_told([child, parent], offset is not None,
                    lambda: resume_clock(child, parent_tsc, asked, offset))


def clock_offset(vm: VM) -> int | None:
    """What (vm)'s clocks read minus the host's TSC, if the host knows: a VM
    that booted with the host's TSC says so (0), a child's the host set."""
    if vm.clock_k is None and abi.CTL.get(vm.mem, abi.CTL_ADDR, "tsc_is_host"):
        vm.clock_k = 0
    return vm.clock_k


def resume_clock(child: VM, reading: int, at: float, offset: int | None = None) -> None:
    """Tell a child what its parent's clocks read, as of the host's TSC now
    (the child waits for this as it first runs, clock.c): the host's TSC
    plus their (offset), when known; else (reading) at (at) (monotonic) plus
    the time since.  From then on the host knows the child's offset."""
    from . import cpu
    tsc_khz = abi.BOOT.get(child.mem, abi.BOOT_ADDR, "tsc_khz")
    host_tsc = cpu.rdtsc()
    value = (host_tsc + offset if offset is not None
             else reading + int((time.monotonic() - at) * tsc_khz * 1000))
    abi.BOOT.put(child.mem, abi.BOOT_ADDR, host_tsc=host_tsc)
    abi.BOOT.put(child.mem, abi.BOOT_ADDR, tsc_resume=value)   # the child waits for it
    child.clock_k = value - host_tsc


# -- across hosts: the same steps, with the stream and the RAM on the wire ----

async def prepare(vm: VM) -> None:
    """Connect QMP and set the capabilities a fork needs, ahead of time."""
    await _prepare(vm)


async def _migrate(qmp, fd: int) -> None:
    """Start migrating into (fd): getfd and migrate in one round trip (QEMU
    runs a monitor's commands in order)."""
    qmp.send_fd_scm(fd)
    await asyncio.gather(qmp.execute("getfd", {"fdname": "fork"}),
                         qmp.execute("migrate", {"uri": "fd:fork"}))


async def _migrate_to(vm: VM, fd: int) -> None:
    await _prepare(vm)
    await _migrate(await vm.qmp(), fd)


async def _completed(vm: VM, timeout: float) -> None:
    await _wait_status(await vm.qmp(), "query-migrate", "status", {"completed"},
                       {"failed", "cancelled"}, timeout)


async def cont(vm: VM) -> None:
    await _cont(await vm.qmp())


def capture(qmp: QMPThread, vm: VM, timeout: float = 10.0) -> bytes:
    """Stop (vm) and return its device state as a migration stream (with
    x-ignore-shared it holds no RAM: tens of KiB).  On failure the VM runs on."""
    a, b = socket.socketpair()
    try:
        try:
            qmp.call(_migrate_to(vm, b.fileno()))
        finally:
            b.close()
        a.settimeout(timeout)
        chunks = []
        while chunk := a.recv(1 << 20):        # QEMU closes its end when done
            chunks.append(chunk)
        qmp.call(_completed(vm, timeout))
        return b"".join(chunks)
    except BaseException:
        qmp.call(cont(vm))
        raise
    finally:
        a.close()


def load_state(vm: VM, device_state: bytes) -> None:
    """Feed a captured device state to an armed pool VM (fork.arm)."""
    sock, vm.mig_sock = vm.mig_sock, None
    try:
        sock.sendall(device_state)
    finally:
        sock.close()


async def start_child(child: VM, reading: int, at: float, early: bool) -> None:
    """Let a child made on this host from a remote parent run: its parent's
    clocks read (reading) at (at) (monotonic, when its stream began).  If
    they followed its host's TSC, (early), the child is told before it runs
    (as in resume())."""
    await _run_told([child], early, lambda: resume_clock(child, reading, at), timeout=10.0)


async def _run_told(vms: list[VM], early: bool, tell, timeout: float = 2.0) -> None:
    """`cont` (vms), telling a forked child among them its clock with
    tell(): before it runs if (early) (its TSC is the host's: the adjustment
    is exact whenever it reads it), else once it runs (it waits for it)."""
    qmps = [await vm.qmp() for vm in vms]
    if early:
        tell()
    await asyncio.gather(*(_cont(q, timeout) for q in qmps))
    if not early:
        tell()
